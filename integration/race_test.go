package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	digest "github.com/opencontainers/go-digest"
)

// raceRounds is how many times each race below is run in each mode.
const raceRounds = 200

// variant returns a copy of m that differs only in an annotation, so it has
// its own digest and the same blobs.
func variant(t *testing.T, m Manifest, i int) Manifest {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(m.Raw, &doc); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	doc["annotations"] = map[string]string{"test.round": fmt.Sprint(i)}
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return Manifest{Raw: raw, MediaType: m.MediaType, Digest: digest.FromBytes(raw)}
}

// together sends the requests at the same moment, each on its own
// connection, and returns the statuses in order.
func together(t *testing.T, reqs ...func() int) []int {
	t.Helper()
	out := make([]int, len(reqs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, fn := range reqs {
		wg.Go(func() {
			<-start
			out[i] = fn()
		})
	}
	close(start)
	wg.Wait()
	return out
}

// send makes one request on a fresh connection and returns its status, or
// fails the test.
func send(t *testing.T, method, url string, m *Manifest) func() int {
	return func() int {
		req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
		if m != nil {
			req, err = http.NewRequestWithContext(t.Context(), method, url, bytesReader(m.Raw))
			req.Header.Set("Content-Type", m.MediaType)
		}
		if err != nil {
			t.Errorf("request: %v", err)
			return 0
		}
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%s %s: %v", method, url, err)
			return 0
		}
		drainBody(resp)
		return resp.StatusCode
	}
}

// served reports whether the registry behind taglock (asked directly in
// Separate mode) has path: a HEAD answered 200.
func (e *Env) served(t *testing.T, path string) bool {
	t.Helper()
	addr := e.Addr
	if e.Up != nil {
		addr = e.Up.Addr
	}
	resp, _ := do(t, http.MethodHead, "http://"+addr+path, nil, http.Header{"Accept": {
		"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}})
	return resp.StatusCode == http.StatusOK
}

// TestDeleteByDigestRacingTagPush ensures that a DELETE of a manifest by
// digest and a PUT of a new immutable tag with the same manifest, sent at
// the same moment, never both succeed in an order that leaves the tag bound
// in the ledger and gone from the registry. Whichever wins, a push answered
// 201 leaves its tag pullable.
func TestDeleteByDigestRacingTagPush(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		base := MustImage(t)
		MustPushByDigest(t, e.Addr, "team/race", base)
		man := MustManifest(t, base)
		var pushed, deleted, lost int
		for i := range raceRounds {
			v := variant(t, man, i)
			if resp, body := putManifest(t, e.Addr, "/v2/team/race/manifests/"+v.Digest.String(), v); resp.StatusCode != http.StatusCreated {
				t.Fatalf("round %d: push by digest: %d %s", i, resp.StatusCode, body)
			}
			tag := fmt.Sprintf("v%d", i)
			st := together(t,
				send(t, http.MethodDelete, e.URL("/v2/team/race/manifests/"+v.Digest.String()), nil),
				send(t, http.MethodPut, e.URL("/v2/team/race/manifests/"+tag), &v))
			del, put := st[0], st[1]
			if del == http.StatusAccepted {
				deleted++
			}
			if put != http.StatusCreated {
				continue
			}
			pushed++
			if !e.served(t, "/v2/team/race/manifests/"+tag) {
				lost++
				t.Errorf("round %d: the push got 201 and the delete %d, and %s is gone from the registry", i, del, tag)
			}
			if b, err := e.Ledger().Binding(t.Context(), "team/race", tag); err != nil || b.Deleted || b.Digest != v.Digest {
				t.Errorf("round %d: binding %+v, %v; want %s live", i, b, err, v.Digest)
			}
		}
		t.Logf("%d rounds: %d pushes answered 201, %d deletes answered 202, %d tags lost", raceRounds, pushed, deleted, lost)
		if pushed == 0 {
			t.Errorf("no push won a single round; the race was not exercised")
		}
	})
}

// TestBlobDeleteRacingTagPush ensures that a DELETE of a layer and a PUT of
// an immutable tag whose image uses that layer, sent at the same moment,
// never leave the tag bound while its layer is gone.
func TestBlobDeleteRacingTagPush(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		var pushed, deleted, lost int
		for i := range raceRounds {
			img, err := random.Image(64, 1)
			if err != nil {
				t.Fatal(err)
			}
			MustPushByDigest(t, e.Addr, "team/blobrace", img)
			man := MustManifest(t, img)
			layer := mustLayers(t, img)[0]
			tag := fmt.Sprintf("v%d", i)
			st := together(t,
				send(t, http.MethodDelete, e.URL("/v2/team/blobrace/blobs/"+layer.String()), nil),
				send(t, http.MethodPut, e.URL("/v2/team/blobrace/manifests/"+tag), &man))
			del, put := st[0], st[1]
			if del == http.StatusAccepted {
				deleted++
			}
			if put != http.StatusCreated {
				continue
			}
			pushed++
			if !e.served(t, "/v2/team/blobrace/blobs/"+layer.String()) {
				lost++
				t.Errorf("round %d: the push got 201 and the blob delete %d, and layer %s is gone", i, del, layer)
			}
		}
		t.Logf("%d rounds: %d pushes answered 201, %d blob deletes answered 202, %d layers lost", raceRounds, pushed, deleted, lost)
		if pushed == 0 {
			t.Errorf("no push won a single round; the race was not exercised")
		}
	})
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func drainBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}
