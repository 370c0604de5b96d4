//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/integration/internal/proc"
)

// slowLink is a proxy between taglock and its registry that holds the first
// manifest PUT of one path for a while before sending it on, whatever
// taglock does meanwhile: the request is already on its way, as it is when
// taglock dies with a write in flight.
type slowLink struct {
	Addr    string
	path    string
	delay   time.Duration
	arrived chan struct{} // closed when the held PUT arrives
	landed  chan struct{} // closed when the registry has handled it
	once    sync.Once
}

func startSlowLink(t *testing.T, registry, path string, delay time.Duration) *slowLink {
	t.Helper()
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	s := &slowLink{path: path, delay: delay, arrived: make(chan struct{}), landed: make(chan struct{})}
	var wg sync.WaitGroup
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held := false
		if r.Method == http.MethodPut && r.URL.Path == s.path {
			s.once.Do(func() { held = true })
		}
		if !held {
			rp.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		out, _ := http.NewRequestWithContext(context.Background(), r.Method, "http://"+registry+r.URL.RequestURI(), bytes.NewReader(body))
		out.Header = r.Header.Clone()
		close(s.arrived)
		wg.Go(func() {
			time.Sleep(s.delay)
			resp, err := http.DefaultClient.Do(out)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			close(s.landed)
		})
		<-r.Context().Done() // taglock is killed before the answer comes
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); wg.Wait() })
	s.Addr = ln.Addr().String()
	return s
}

// TestKilledWithPushInFlight is the crash case: taglock is SIGKILLed while
// a manifest PUT it forwarded is still on its way to the registry. After a
// restart, a push of other content to the tag is not accepted while the
// first may still land, and once it lands it is the binding: the ledger and
// the registry agree, and nothing stays pending.
func TestKilledWithPushInFlight(t *testing.T) {
	t.Parallel()
	reg := proc.StartRegistry(t, "error")
	link := startSlowLink(t, reg.Addr, "/v2/team/app/manifests/t1", 4*time.Second)
	data := t.TempDir()
	config := "upstream:\n  timeout: 20s\n"
	tl := startTaglock(t, serveOptions{upstream: "http://" + link.Addr, data: data, config: config})

	a, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	pushByDigest := func(addr string, img v1.Image) {
		d, _ := img.Digest()
		ref, err := name.ParseReference(addr+"/team/app@"+d.String(), name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
			t.Fatalf("push by digest: %v", err)
		}
	}
	pushByDigest(tl.Addr, a)
	pushByDigest(tl.Addr, b)
	rawA, _ := a.RawManifest()
	rawB, _ := b.RawManifest()
	dA, _ := a.Digest()
	mediaType, _ := a.MediaType()
	mt := string(mediaType)

	go func() {
		req, _ := http.NewRequest(http.MethodPut, "http://"+tl.Addr+"/v2/team/app/manifests/t1", bytes.NewReader(rawA))
		req.Header.Set("Content-Type", mt)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-link.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the push of A never reached the registry's link")
	}
	tl.Kill(t)

	tl = startTaglock(t, serveOptions{upstream: "http://" + link.Addr, data: data, config: config})
	put := func(raw []byte) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, "http://"+tl.Addr+"/v2/team/app/manifests/t1", bytes.NewReader(raw))
		req.Header.Set("Content-Type", mt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	select {
	case <-link.landed:
		t.Log("A landed before B was sent: B must be refused outright")
	default:
	}
	if st, body := put(rawB); st == http.StatusCreated {
		t.Fatalf("push of B after the restart got 201 while A may still land: %s", body)
	} else if st != http.StatusForbidden && st != http.StatusServiceUnavailable {
		t.Errorf("push of B after the restart: %d %s, want 403 or 503", st, body)
	} else if st == http.StatusServiceUnavailable && !strings.Contains(body, "still settling") {
		t.Errorf("503 for B does not say the earlier push is settling: %s", body)
	}
	select {
	case <-link.landed:
	case <-time.After(30 * time.Second):
		t.Fatal("A never landed")
	}
	// Once A has landed it becomes the binding and B is refused for good.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, body := put(rawB)
		if st == http.StatusForbidden {
			if !strings.Contains(body, dA.String()) {
				t.Errorf("refusal of B does not name A: %s", body)
			}
			break
		}
		if st != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("push of B after A landed: %d %s, want 403 naming A", st, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := resolve(t, reg.Addr, "team/app", "t1"); got != dA.String() {
		t.Errorf("the registry serves %s for t1, want A %s", got, dA)
	}
	resp, err := http.Get("http://" + tl.Addr + "/taglock/v1/bindings/team/app:t1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Binding struct {
			Digest string `json:"digest"`
		} `json:"binding"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || got.Binding.Digest != dA.String() {
		t.Errorf("ledger binding of t1 = %q (%v), want A %s", got.Binding.Digest, err, dA)
	}
}
