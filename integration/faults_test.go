package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/taglock/taglock/internal/config"
)

// upstreamFault is one fault the registry shows taglock, and what the
// client of the request must see.
type upstreamFault struct {
	name   string
	fault  Fault
	status int  // what the client gets
	lands  bool // the registry carries the write out
}

// upstreamFaults are the faults of the fault suite, for a manifest PUT.
func upstreamFaults() []upstreamFault {
	return []upstreamFault{
		{"500 before storing", Fault{Skip: true, Status: 500}, http.StatusBadGateway, false},
		{"502 before storing", Fault{Skip: true, Status: 502}, http.StatusBadGateway, false},
		{"503 before storing", Fault{Skip: true, Status: 503}, http.StatusBadGateway, false},
		{"500 after storing", Fault{Status: 500}, http.StatusBadGateway, true},
		{"503 after storing", Fault{Status: 503}, http.StatusBadGateway, true},
		{"reset before the request arrives", Fault{Skip: true, Drop: true}, http.StatusBadGateway, false},
		{"reset after storing", Fault{Drop: true}, http.StatusBadGateway, true},
		{"stall past the timeout, then store", Fault{Delay: 1200 * time.Millisecond}, http.StatusBadGateway, true},
		{"slow, within the timeout", Fault{Delay: 100 * time.Millisecond}, http.StatusCreated, true},
		{"201 naming another digest", Fault{Header: http.Header{"Docker-Content-Digest": {"sha256:" + strings.Repeat("0", 64)}}}, http.StatusBadGateway, true},
		{"201 without a digest", Fault{Header: http.Header{"Docker-Content-Digest": {""}}}, http.StatusCreated, true},
	}
}

// TestUpstreamFaultsNeverLeaveABindingTheRegistryLacks is the fault suite
// for manifest pushes and deletes: whatever the registry does (fails before
// or after storing, resets the connection, stalls past the timeout, names
// the wrong digest or none), the client gets a clear answer with an OCI
// error body, the ledger never holds a live binding the registry does not
// serve, and every reservation is settled once the outcome is final.
func TestUpstreamFaultsNeverLeaveABindingTheRegistryLacks(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m, func(c *config.Config) {
			c.Upstream.Timeout = config.Duration(500 * time.Millisecond)
			c.Upstream.SettleMargin = config.Duration(time.Second)
			c.Immutability.Rules = []config.ImmutabilityRule{{Tags: []string{"m-*"}, Mode: "mutable"}}
		})
		var (
			mu     sync.Mutex
			faults = map[string]*Fault{} // "METHOD path" -> fault, used once
			used   int
		)
		inject := func(method, path string, f Fault) {
			mu.Lock()
			defer mu.Unlock()
			faults[method+" "+path] = &f
		}
		e.InjectFaults(t, func(r *http.Request) *Fault {
			mu.Lock()
			defer mu.Unlock()
			f := faults[r.Method+" "+r.URL.Path]
			if f != nil {
				delete(faults, r.Method+" "+r.URL.Path)
				used++
			}
			return f
		})
		e.Start(t)

		type pushCase struct {
			tag   string
			want  upstreamFault
			image Manifest
		}
		var cases []pushCase
		for i, uf := range upstreamFaults() {
			for _, prefix := range []string{"i", "m-"} { // immutable and mutable tags
				img := MustImage(t)
				MustPushByDigest(t, e.Addr, "team/faults", img)
				tag := fmt.Sprintf("%s%d", prefix, i)
				inject(http.MethodPut, "/v2/team/faults/manifests/"+tag, uf.fault)
				man := MustManifest(t, img)
				resp, body := putManifest(t, e.Addr, "/v2/team/faults/manifests/"+tag, man)
				if resp.StatusCode != uf.status {
					t.Errorf("%s, push of %s: %d %s, want %d", uf.name, tag, resp.StatusCode, body, uf.status)
				}
				if resp.StatusCode >= 400 {
					oe := parseOCI(t, resp.StatusCode, body)
					if oe.Code != "UNAVAILABLE" || !strings.Contains(oe.Message, "not known yet") {
						t.Errorf("%s, push of %s: %s %q, want UNAVAILABLE saying the outcome is not known yet", uf.name, tag, oe.Code, oe.Message)
					}
				}
				cases = append(cases, pushCase{tag: tag, want: uf, image: man})
			}
		}
		// Deletes of mutable tags under the same faults.
		var deletes []string
		for i, uf := range upstreamFaults()[:8] {
			tag := fmt.Sprintf("m-del%d", i)
			img := MustImage(t)
			MustPush(t, e.Addr, "team/faults:"+tag, img)
			inject(http.MethodDelete, "/v2/team/faults/manifests/"+tag, uf.fault)
			resp, body := do(t, http.MethodDelete, e.URL("/v2/team/faults/manifests/"+tag), nil, nil)
			want := http.StatusAccepted
			if uf.status != http.StatusCreated {
				want = http.StatusBadGateway
			}
			if resp.StatusCode != want {
				t.Errorf("%s, delete of %s: %d %s, want %d", uf.name, tag, resp.StatusCode, body, want)
			}
			deletes = append(deletes, tag)
		}

		waitSettledWithin(t, e, 30*time.Second)
		for _, c := range cases {
			b, err := e.Ledger().Binding(t.Context(), "team/faults", c.tag)
			served := e.served(t, "/v2/team/faults/manifests/"+c.tag)
			switch {
			case err == nil && !b.Deleted && !served:
				t.Errorf("%s: the ledger binds %s to %s and the registry does not have it", c.want.name, c.tag, b.Digest)
			case c.want.lands && (err != nil || b.Digest != c.image.Digest):
				t.Errorf("%s: the registry holds %s but the ledger has %+v, %v", c.want.name, c.tag, b, err)
			case !c.want.lands && served:
				t.Errorf("%s: the registry holds %s, which the fault should have kept from it", c.want.name, c.tag)
			}
		}
		for _, tag := range deletes {
			b, err := e.Ledger().Binding(t.Context(), "team/faults", tag)
			served := e.served(t, "/v2/team/faults/manifests/"+tag)
			if err != nil || served == b.Deleted {
				t.Errorf("delete of %s: the registry serves it: %v; the ledger has %+v, %v", tag, served, b, err)
			}
		}
		t.Logf("%d pushes and %d deletes under %d injected faults; the ledger agrees with the registry", len(cases), len(deletes), used)
	})
}

// waitSettledWithin waits until no reservation is pending.
func waitSettledWithin(t *testing.T, e *Env, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		res, err := e.Ledger().Reservations(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(res) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var left []string
			for _, r := range res {
				left = append(left, fmt.Sprintf("%s %s:%v %s", r.Kind, r.Repo, r.Tags, r.Digest))
			}
			t.Fatalf("reservations still pending after %s: %v", d, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count file descriptors: %v", err)
	}
	return len(ents)
}

// TestAbandonedTransfersLeakNothing ensures clients that disconnect in the
// middle of a blob upload or download leave no goroutine and no file
// descriptor behind in taglock (and its registry, in the same process).
func TestAbandonedTransfersLeakNothing(t *testing.T) {
	// Not parallel: it counts the whole process's goroutines and files.
	for _, m := range []Mode{Embedded, Separate} {
		t.Run(string(m), func(t *testing.T) {
			e := MustEnv(t, m)
			img, err := random.Image(8<<20, 1) // big enough to hang up in the middle of it
			if err != nil {
				t.Fatal(err)
			}
			MustPush(t, e.Addr, "team/leak:1", img)
			layer := mustLayers(t, img)[0]
			abandon := func() {
				// Download: read the head of the answer, then hang up.
				sendHalf(t, e.Addr, "GET /v2/team/leak/blobs/"+layer.String()+" HTTP/1.1\r\nHost: x\r\n\r\n", nil)
				// Upload: start a session, send half a chunk, hang up.
				r, body := do(t, http.MethodPost, e.URL("/v2/team/leak/blobs/uploads/"), nil, nil)
				if r.StatusCode != http.StatusAccepted {
					t.Fatalf("start upload: %d %s", r.StatusCode, body)
				}
				loc := r.Header.Get("Location")
				head := fmt.Sprintf("PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n", loc)
				sendHalf(t, e.Addr, head, make([]byte, 300<<10))
			}
			for range 3 {
				abandon() // warm up pools and lazily started goroutines
			}
			settle := func() (int, int) {
				http.DefaultClient.CloseIdleConnections()
				var g, f int
				for range 50 {
					runtime.GC()
					time.Sleep(100 * time.Millisecond)
					g, f = runtime.NumGoroutine(), openFDs(t)
				}
				return g, f
			}
			g0, f0 := settle()
			const rounds = 40
			for range rounds {
				abandon()
			}
			g1, f1 := settle()
			t.Logf("%d abandoned uploads and downloads: goroutines %d -> %d, file descriptors %d -> %d", rounds, g0, g1, f0, f1)
			if g1 > g0+5 {
				t.Errorf("goroutines grew from %d to %d over %d abandoned transfers", g0, g1, rounds)
			}
			if f1 > f0+5 {
				t.Errorf("file descriptors grew from %d to %d over %d abandoned transfers", f0, f1, rounds)
			}
			if res, err := e.Ledger().Reservations(t.Context()); err != nil || len(res) != 0 {
				t.Errorf("reservations: %v, %v", res, err)
			}
		})
	}
}

// sendHalf writes head and body on a fresh connection and hangs up: at
// once after body, or, with no body, after reading the first bytes of the
// answer.
func sendHalf(t *testing.T, addr, head string, body []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if body != nil {
		_, _ = conn.Write(body)
		return
	}
	buf := make([]byte, 64<<10)
	_, _ = io.ReadAtLeast(conn, buf, 1)
}
