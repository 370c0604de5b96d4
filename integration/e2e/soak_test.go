//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/integration/internal/proc"
)

// soakDuration is how long TestSoak runs: TAGLOCK_SOAK (e.g. 10m) or a
// short default for CI.
func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("TAGLOCK_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("TAGLOCK_SOAK=%q: want a duration such as 10m", s)
		}
		return d
	}
	return 45 * time.Second
}

// sample is one reading of taglock's resources. RSS is split: anonymous
// memory (the Go heap and stacks) must stay flat; file-backed memory is the
// ledger's mmap, which grows with the history the ledger keeps.
type sample struct {
	at         time.Duration
	anonKiB    int
	fileKiB    int
	heapKiB    int
	goroutines int
	fds        int
}

func readSample(t *testing.T, pid int, addr string, at time.Duration) sample {
	t.Helper()
	s := sample{at: at}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	kib := func(v string) int {
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		return n
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			s.anonKiB = kib(v)
		}
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			s.fileKiB = kib(v)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read fds: %v", err)
	}
	s.fds = len(fds)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			s.goroutines, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			s.heapKiB = int(f / 1024)
		}
	}
	return s
}

// TestSoak runs 64 clients against the built binary in front of a separate
// registry: conflicting and identical pushes, pulls, tag lists, deletes,
// and scheduled retention runs, for TAGLOCK_SOAK (45 s by default). Over the
// run taglock's memory (anonymous RSS and the Go heap), goroutines and file
// descriptors stay flat, no request
// gets a 5xx, and at the end the ledger equals the registry.
func TestSoak(t *testing.T) {
	t.Parallel()
	dur := soakDuration(t)
	reg := proc.StartRegistry(t, "error")
	data := t.TempDir()
	config := `upstream:
  timeout: 10s
immutability:
  rules:
    - repositories: ["soak/scratch"]
      mode: mutable
retention:
  schedule: 5s
  policies:
    - repositories: ["soak/scratch"]
      keep: [{most_recent: 20}]
      untagged: delete
      untagged_grace: 1s
`
	tl := startTaglock(t, serveOptions{upstream: "http://" + reg.Addr, data: data, config: config})

	// A pool of images, blobs on the registry, for every client to use.
	type image struct {
		raw    []byte
		digest string
		layer  string
	}
	var pool []image
	mediaType := ""
	for range 48 {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		for _, repo := range []string{"soak/release", "soak/scratch"} {
			ref, _ := name.ParseReference(tl.Addr+"/"+repo+"@"+d.String(), name.Insecure)
			if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
				t.Fatal(err)
			}
		}
		raw, _ := img.RawManifest()
		mt, _ := img.MediaType()
		ls, _ := img.Layers()
		ld, _ := ls[0].Digest()
		mediaType = string(mt)
		pool = append(pool, image{raw: raw, digest: d.String(), layer: ld.String()})
	}

	var (
		requests, fivexx, refused atomic.Int64
		mu                        sync.Mutex
		bound                     = map[string]string{} // soak/release tag -> the digest a client was told it took
		firstBad                  string
	)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	do := func(method, path string, body []byte) (int, []byte) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequest(method, "http://"+tl.Addr+path, rd)
		if body != nil {
			req.Header.Set("Content-Type", mediaType)
		}
		req.Header.Set("Accept", manifestAccept)
		resp, err := client.Do(req)
		requests.Add(1)
		if err != nil {
			mu.Lock()
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s %s: %v", method, path, err)
			}
			mu.Unlock()
			fivexx.Add(1)
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			fivexx.Add(1)
			mu.Lock()
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, b)
			}
			mu.Unlock()
		}
		return resp.StatusCode, b
	}

	ctx, cancel := context.WithTimeout(t.Context(), dur)
	defer cancel()
	var wg sync.WaitGroup
	for c := range 64 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil {
				img := pool[rng.IntN(len(pool))]
				switch op := rng.IntN(10); {
				case op < 3: // release tags: conflicting and identical pushes
					tag := fmt.Sprintf("r%d", rng.IntN(24))
					st, _ := do(http.MethodPut, "/v2/soak/release/manifests/"+tag, img.raw)
					switch st {
					case http.StatusCreated:
						mu.Lock()
						if d, ok := bound[tag]; ok && d != img.digest {
							t.Errorf("immutable soak/release:%s accepted %s after %s", tag, img.digest, d)
						}
						bound[tag] = img.digest
						mu.Unlock()
					case http.StatusForbidden:
						refused.Add(1)
					}
				case op < 5: // scratch tags move freely
					do(http.MethodPut, fmt.Sprintf("/v2/soak/scratch/manifests/s%d", rng.IntN(60)), img.raw)
				case op < 7: // pulls
					do(http.MethodGet, fmt.Sprintf("/v2/soak/release/manifests/r%d", rng.IntN(24)), nil)
					do(http.MethodGet, "/v2/soak/scratch/blobs/"+img.layer, nil)
				case op < 8: // tag lists
					do(http.MethodGet, "/v2/soak/release/tags/list", nil)
					do(http.MethodGet, "/v2/soak/scratch/tags/list?n=10", nil)
				case op < 9: // deletes of scratch tags, allowed
					do(http.MethodDelete, fmt.Sprintf("/v2/soak/scratch/manifests/s%d", rng.IntN(60)), nil)
				default: // deletes of release content, refused while bound
					do(http.MethodDelete, "/v2/soak/release/manifests/"+img.digest, nil)
					do(http.MethodDelete, "/v2/soak/release/blobs/"+img.layer, nil)
				}
			}
		})
	}

	var samples []sample
	start := time.Now()
	tick := time.NewTicker(max(dur/20, 2*time.Second))
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-tick.C:
			samples = append(samples, readSample(t, tl.Pid, tl.Addr, time.Since(start)))
		}
	}
	tick.Stop()
	wg.Wait()
	t.Logf("%d requests over %s by 64 clients: %d refused, %d answered 5xx", requests.Load(), dur, refused.Load(), fivexx.Load())
	for _, s := range samples {
		t.Logf("  t=%-6s rss anon=%6d KiB file=%6d KiB heap in use=%6d KiB goroutines=%4d fds=%4d",
			s.at.Round(time.Second), s.anonKiB, s.fileKiB, s.heapKiB, s.goroutines, s.fds)
	}
	if n := fivexx.Load(); n > 0 {
		t.Errorf("%d requests got a 5xx or no answer; the first: %s", n, firstBad)
	}
	flat(t, samples)

	// The ledger equals the registry, once every outcome is settled.
	var d ledgerDump
	deadline := time.Now().Add(60 * time.Second)
	for {
		d = exportLedgerRepos(t, data, "soak/release", "soak/scratch")
		if d.reservations == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if d.reservations != 0 {
		t.Errorf("%d reservations still pending at the end", d.reservations)
	}
	for _, repo := range []string{"soak/release", "soak/scratch"} {
		tags := registryTags(t, reg.Addr, repo)
		for _, tag := range tags {
			got, err := lookup(t, reg.Addr, repo, tag)
			if err != nil {
				continue // deleted meanwhile
			}
			if b := d.bindings[repo+":"+tag]; b != got {
				t.Errorf("%s:%s: the registry has %s, the ledger binds %q", repo, tag, got, b)
			}
		}
		for key, digest := range d.bindings {
			r, tag, _ := strings.Cut(key, ":")
			if r != repo {
				continue
			}
			if got, err := lookup(t, reg.Addr, repo, tag); err != nil || got != digest {
				t.Errorf("%s: the ledger binds %s, the registry has %q (%v)", key, digest, got, err)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for tag, digest := range bound {
		if b := d.bindings["soak/release:"+tag]; b != digest {
			t.Errorf("soak/release:%s: a client was told %s, the ledger binds %q", tag, digest, b)
		}
	}
}

// flat fails the test when taglock's resources grew over the run: the last
// third of the samples against the first third after the first sample.
func flat(t *testing.T, samples []sample) {
	t.Helper()
	if len(samples) < 6 {
		t.Fatalf("only %d samples; the run was too short to judge", len(samples))
	}
	third := (len(samples) - 1) / 3
	early, late := samples[1:1+third], samples[len(samples)-third:]
	avg := func(ss []sample, f func(sample) int) float64 {
		var n float64
		for _, s := range ss {
			n += float64(f(s))
		}
		return n / float64(len(ss))
	}
	for _, c := range []struct {
		what  string
		f     func(sample) int
		slack float64 // allowed growth, relative
		abs   float64 // and absolute
	}{
		{"anonymous RSS (KiB)", func(s sample) int { return s.anonKiB }, 0.25, 8 << 10},
		{"heap in use (KiB)", func(s sample) int { return s.heapKiB }, 0.25, 8 << 10},
		{"goroutines", func(s sample) int { return s.goroutines }, 0.25, 40},
		{"file descriptors", func(s sample) int { return s.fds }, 0.25, 40},
	} {
		e, l := avg(early, c.f), avg(late, c.f)
		if l > e*(1+c.slack)+c.abs {
			t.Errorf("%s grew from %.0f to %.0f over the run", c.what, e, l)
		}
	}
}

// exportLedgerRepos is exportLedger for several repositories, keyed
// "repo:tag".
func exportLedgerRepos(t *testing.T, data string, repos ...string) ledgerDump {
	t.Helper()
	d := ledgerDump{bindings: map[string]string{}, modes: map[string]string{}}
	for _, repo := range repos {
		one := exportLedger(t, []string{"--data", data}, repo)
		d.reservations = one.reservations
		for tag, digest := range one.bindings {
			d.bindings[repo+":"+tag] = digest
			d.modes[repo+":"+tag] = one.modes[tag]
		}
	}
	return d
}

// registryTags lists repo's tags on the registry directly.
func registryTags(t *testing.T, registry, repo string) []string {
	t.Helper()
	resp, err := http.Get("http://" + registry + "/v2/" + repo + "/tags/list?n=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if resp.StatusCode == http.StatusOK {
		_ = json.NewDecoder(resp.Body).Decode(&list)
	}
	return list.Tags
}
