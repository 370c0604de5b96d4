package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// TestLedgerOnFullDisk ensures what a full disk under the data directory
// does to pushes: each one is answered 5xx with an OCI error, never
// accepted; once one push reached the registry and its commit failed
// (bbolt reuses freed pages, so a small reservation can still fit where the
// commit after the upstream PUT does not), no push reaches the registry at
// all until that one is recorded; every push the registry
// took is held by its reservation; deleting an immutable tag is still
// refused; shutting down while reservations cannot be settled takes no
// longer than the shutdown allows; and after a restart with room again the
// ledger records exactly what the registry holds, and pushes work.
//
// It mounts a small tmpfs, so it needs root (CI runs as root). Without root
// it drives the same story through a proxy whose ledger fails its writes.
func TestLedgerOnFullDisk(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		if os.Geteuid() != 0 {
			t.Log("not root: no tmpfs; failing the ledger's writes below the proxy instead")
			fullDiskByFaults(t, m)
			return
		}
		dir := mustTmpfs(t, "16m")
		e := NewEnv(t, m, func(c *config.Config) {
			c.Data = dir
			// A push the embedded registry failed on the full disk is
			// settled once it can no longer land: do not wait 30s more.
			c.Upstream.SettleMargin = config.Duration(time.Second)
		})
		e.Data = dir
		e.Start(t)
		MustPush(t, e.Addr, "team/app:v0", MustImage(t))
		var ms []Manifest
		for range 40 {
			img := MustImage(t)
			MustPushByDigest(t, e.Addr, "team/app", img) // blobs and manifest, no tag
			ms = append(ms, MustManifest(t, img))
		}
		filler := mustFill(t, dir)

		manifestPuts := func() float64 {
			return scrapeSum(t, e.Addr, `taglock_upstream_duration_seconds_count{method="PUT",op="lookup"}`)
		}
		var refused, reached []int // pushes that did not and did reach the registry
		unrecordedAt := -1         // the first push the registry took and the ledger could not record
		for i, mf := range ms {
			before := manifestPuts()
			resp, body := putManifest(t, e.Addr, fmt.Sprintf("/v2/team/app/manifests/v%d", i+1), mf)
			oe := ociAnswer(t, resp.StatusCode, body)
			if manifestPuts() == before {
				refused = append(refused, i)
				if oe.Status != http.StatusServiceUnavailable || oe.Code != "UNAVAILABLE" || !strings.Contains(oe.Message, "nothing was changed") {
					t.Errorf("push %d, refused before the registry: %d %s %q; want 503 UNAVAILABLE saying nothing was changed", i+1, oe.Status, oe.Code, oe.Message)
				}
				if len(refused) == 3 && slices.Equal(refused, []int{i - 2, i - 1, i}) {
					break
				}
				continue
			}
			// The registry took it and the ledger could not record it
			// (503), or, embedded on the same full disk, it failed to
			// store it (502, outcome unknown): never an acceptance.
			reached = append(reached, i)
			if unrecordedAt >= 0 {
				t.Errorf("push %d reached the registry after push %d's commit had failed; once a write is unrecorded, none may be forwarded", i+1, unrecordedAt+1)
			}
			switch {
			case oe.Status == http.StatusServiceUnavailable && strings.Contains(oe.Message, "could not record it"):
				unrecordedAt = i
			case oe.Status == http.StatusBadGateway && strings.Contains(oe.Message, "not known yet"):
			default:
				t.Errorf("push %d reached the registry on a full disk and got %d %s %q; want 503 saying the ledger could not record it, or 502 saying the outcome is not known",
					i+1, oe.Status, oe.Code, oe.Message)
			}
		}
		t.Logf("on the full disk %d pushes reached the registry first, then %d did not", len(reached), len(refused))
		if len(refused) < 3 {
			t.Fatalf("of %d pushes on a full disk, %d still reached the registry; want them to stop", len(ms), len(reached))
		}
		held, err := e.Ledger().Reservations(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range reached {
			// Held by its reservation, or already settled.
			tag := fmt.Sprintf("v%d", i+1)
			b, err := e.Ledger().Binding(t.Context(), "team/app", tag)
			if !slices.ContainsFunc(held, func(r storage.Reservation) bool { return slices.Contains(r.Tags, tag) }) && (err != nil || b.Digest != ms[i].Digest) {
				t.Errorf("push of %s reached the registry, but neither a reservation nor a binding holds the tag (%v): %+v", tag, err, held)
			}
		}
		deletes := scrapeSum(t, e.Addr, `taglock_upstream_duration_seconds_count{method="DELETE",op="lookup"}`)
		resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/v0"), nil, nil)
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusForbidden || oe.Code != "DENIED" {
			t.Errorf("delete of the immutable v0 on a full disk: %d %s, want 403 DENIED", oe.Status, oe.Code)
		}
		if n := scrapeSum(t, e.Addr, `taglock_upstream_duration_seconds_count{method="DELETE",op="lookup"}`) - deletes; n != 0 {
			t.Errorf("%v DELETEs reached the registry, want none", n)
		}

		// Stopping while reservations cannot be settled on the full disk
		// takes no longer than the shutdown allows; they stay in the
		// ledger for the next start.
		pending, err := e.Ledger().Reservations(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		srv := e.srv
		shutdowns.Store(srv, struct{}{}) // stopped here, not at cleanup
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		err = srv.Shutdown(ctx)
		cancel()
		if took := time.Since(start); took > 6*time.Second {
			t.Errorf("shutdown with %d reservations pending took %v, want at most the 3s it was given", len(pending), took)
		}
		t.Logf("shutdown with %d reservations pending: %v", len(pending), err)
		e.srv, e.Addr = nil, ""

		// Room again, and a restart: what reached the registry is
		// recorded, nothing else.
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		e.Start(t)
		waitNoReservations(t, e.Ledger(), time.Minute)
		for _, i := range reached {
			tag := fmt.Sprintf("v%d", i+1)
			served := ""
			if r, b := do(t, http.MethodHead, e.URL("/v2/team/app/manifests/"+tag), nil, http.Header{"Accept": {ms[i].MediaType}}); r.StatusCode == http.StatusOK {
				served = r.Header.Get("Docker-Content-Digest")
			} else if r.StatusCode != http.StatusNotFound {
				t.Fatalf("HEAD %s: %d %s", tag, r.StatusCode, b)
			}
			b, err := e.Ledger().Binding(t.Context(), "team/app", tag)
			switch {
			case served == "" && err == nil:
				t.Errorf("%s is not on the registry but the ledger binds it to %s", tag, b.Digest)
			case served != "" && (err != nil || b.Digest.String() != served):
				t.Errorf("%s is %s on the registry but the ledger has %s (%v)", tag, served, b.Digest, err)
			}
		}
		for _, i := range refused {
			tag := fmt.Sprintf("v%d", i+1)
			if b, err := e.Ledger().Binding(t.Context(), "team/app", tag); err == nil {
				t.Errorf("refused push of %s is bound to %s", tag, b.Digest)
			}
		}
		last := len(ms) - 1
		if resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/after", ms[last]); resp.StatusCode != http.StatusCreated {
			t.Errorf("push with room again: %d %s", resp.StatusCode, body)
		}
	})
}

// ociAnswer reads the first error of an OCI error body, whatever its
// detail (Distribution puts strings there).
func ociAnswer(t *testing.T, status int, body []byte) OCIError {
	t.Helper()
	var doc struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || len(doc.Errors) == 0 {
		t.Fatalf("status %d: body is not an OCI error: %q", status, body)
	}
	return OCIError{Status: status, Code: doc.Errors[0].Code, Message: doc.Errors[0].Message}
}

// mustTmpfs mounts a tmpfs of size under a temporary directory until the
// test ends and returns its path.
func mustTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0750", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// mustFill writes a file into dir until the file system is full and
// returns its path.
func mustFill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			break
		}
	}
	for { // the last pages a 64 KiB write could not take
		if _, err := f.Write(buf[:512]); err != nil {
			return path
		}
	}
}

// waitNoReservations waits until the ledger holds no reservation.
func waitNoReservations(t *testing.T, l interface {
	Reservations(context.Context) ([]storage.Reservation, error)
}, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		res, err := l.Reservations(t.Context())
		if err == nil && len(res) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reservations still pending after %v: %+v, %v", d, res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeFailingLedger is a ledger whose writes fail with ENOSPC once full
// is set, as on a full disk.
type writeFailingLedger struct {
	*bolt.Ledger
	full atomic.Bool
}

func (l *writeFailingLedger) check() error {
	if l.full.Load() {
		return fmt.Errorf("write %s: %w", l.Path(), syscall.ENOSPC)
	}
	return nil
}

func (l *writeFailingLedger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	if err := l.check(); err != nil {
		return storage.Reservation{}, err
	}
	return l.Ledger.Reserve(ctx, r)
}

func (l *writeFailingLedger) Commit(ctx context.Context, id string, bs []storage.Binding, evs []storage.Event, ms ...storage.Manifest) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.Ledger.Commit(ctx, id, bs, evs, ms...)
}

func (l *writeFailingLedger) CommitDelete(ctx context.Context, id string, ev storage.Event) ([]storage.Binding, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	return l.Ledger.CommitDelete(ctx, id, ev)
}

func (l *writeFailingLedger) Release(ctx context.Context, id string) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.Ledger.Release(ctx, id)
}

func (l *writeFailingLedger) Put(ctx context.Context, bs []storage.Binding, evs []storage.Event) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.Ledger.Put(ctx, bs, evs)
}

func (l *writeFailingLedger) Append(ctx context.Context, evs ...storage.Event) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.Ledger.Append(ctx, evs...)
}

func (l *writeFailingLedger) PutManifest(ctx context.Context, m storage.Manifest) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.Ledger.PutManifest(ctx, m)
}

// countingWrites counts the manifest PUTs and DELETEs taglock sends.
type countingWrites struct {
	proxy.Upstream
	puts, deletes atomic.Int64
}

func (u *countingWrites) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.Method {
	case http.MethodPut:
		u.puts.Add(1)
	case http.MethodDelete:
		u.deletes.Add(1)
	}
	return u.Upstream.RoundTrip(r)
}

// fullDiskByFaults is TestLedgerOnFullDisk without root: taglock's proxy in
// front of the mode's registry, with a ledger whose writes all fail.
func fullDiskByFaults(t *testing.T, m Mode) {
	var up proxy.Upstream
	if m == Separate {
		u := MustUpstream(t)
		up = proxy.NewRemote(&url.URL{Scheme: "http", Host: u.Addr}, http.DefaultTransport, zerolog.Nop())
	} else {
		reg, err := embedded.New(t.Context(), embedded.Options{Root: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Shutdown() })
		up = proxy.NewInProcess(reg.Handler())
	}
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	fl := &writeFailingLedger{Ledger: l}
	counter := &countingWrites{Upstream: up}
	p := proxy.New(proxy.Options{Upstream: counter, Ledger: fl, Immutability: policy.DefaultImmutability()})
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")

	MustPush(t, addr, "team/app:v0", MustImage(t))
	other := MustImage(t)
	MustPushByDigest(t, addr, "team/app", other)
	fl.full.Store(true)
	puts := counter.puts.Load()
	resp, body := putManifest(t, addr, "/v2/team/app/manifests/v1", MustManifest(t, other))
	if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusServiceUnavailable || oe.Code != "UNAVAILABLE" || !strings.Contains(oe.Message, "nothing was changed") {
		t.Errorf("push on a ledger that cannot write: %d %s %q; want 503 UNAVAILABLE saying nothing was changed", oe.Status, oe.Code, oe.Message)
	}
	if n := counter.puts.Load() - puts; n != 0 {
		t.Errorf("%d manifest PUTs reached the registry, want none", n)
	}
	resp, body = do(t, http.MethodDelete, srv.URL+"/v2/team/app/manifests/v0", nil, nil)
	if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusForbidden || oe.Code != "DENIED" {
		t.Errorf("delete of the immutable v0: %d %s, want 403 DENIED", oe.Status, oe.Code)
	}
	if n := counter.deletes.Load(); n != 0 {
		t.Errorf("%d DELETEs reached the registry, want none", n)
	}
}
