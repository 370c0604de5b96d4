package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage/bolt"
)

// patience is how long a test waits for something that must happen soon.
// It is far above any bound the tests configure, so a loaded machine
// cannot make them fail; only a wait that never ends can.
const patience = 20 * time.Second

// Hold gives up when a write outlasts the drain timeout: it reports how
// many writes are still in flight and leaves the gate open, so writes are
// never queued behind a slow client.
func TestWriteGateDrainTimeout(t *testing.T) {
	t.Parallel()
	g := NewWriteGate(GateOptions{Drain: 50 * time.Millisecond, Wait: time.Hour})
	leave, err := g.enter(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer leave()
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	release, err := g.Hold(ctx)
	if !errors.Is(err, ErrWritesInFlight) || release != nil {
		t.Fatalf("Hold with a write in flight: %v, want ErrWritesInFlight and no release", err)
	}
	// The gate is open: with a Wait of an hour, entering a held gate
	// would outlast ctx.
	other, err := g.enter(ctx)
	if err != nil {
		t.Fatalf("write after Hold gave up: %v, want it let in", err)
	}
	other()
}

// A write that arrives while the gate is held waits at most the wait
// timeout and is then refused with errGateHeld.
func TestWriteGateWaitTimeout(t *testing.T) {
	t.Parallel()
	g := NewWriteGate(GateOptions{Drain: time.Hour, Wait: 50 * time.Millisecond})
	release, err := g.Hold(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	if _, err := g.enter(ctx); !errors.Is(err, errGateHeld) {
		t.Fatalf("write at a held gate: %v, want errGateHeld", err)
	}
}

// A write waiting at a held gate gets in as soon as the gate is released,
// within its wait timeout.
func TestWriteGateReleaseLetsWaitersIn(t *testing.T) {
	t.Parallel()
	g := NewWriteGate(GateOptions{Drain: time.Hour, Wait: time.Hour})
	release, err := g.Hold(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan error, 1)
	go func() {
		leave, err := g.enter(t.Context())
		if err == nil {
			leave()
		}
		entered <- err
	}()
	release()
	select {
	case err := <-entered:
		if err != nil {
			t.Fatalf("write after release: %v", err)
		}
	case <-time.After(patience):
		t.Fatal("a waiting write did not get in after release")
	}
}

// While garbage collection holds the gate longer than a write may wait,
// the write is answered 503 UNAVAILABLE with Retry-After and an OCI error
// body, and never reaches the registry.
func TestHeldGateAnswers503(t *testing.T) {
	t.Parallel()
	reached := make(chan string, 1)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached <- r.Method + " " + r.URL.Path
		w.WriteHeader(http.StatusAccepted)
	})
	g := NewWriteGate(GateOptions{Drain: time.Hour, Wait: 50 * time.Millisecond})
	srv := newTestServer(t, up, Options{Gate: g})
	release, err := g.Hold(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodPost, "/v2/team/app/blobs/uploads/", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("write at a held gate: %d, Retry-After %q; want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNAVAILABLE" {
		t.Fatalf("body %q is not one OCI UNAVAILABLE error", rec.Body)
	}
	select {
	case got := <-reached:
		t.Fatalf("the refused write reached the registry: %s", got)
	default:
	}
	// Reads are never held.
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/team/app/blobs/uploads/abc", nil))
	if got := <-reached; got != "GET /v2/team/app/blobs/uploads/abc" {
		t.Fatalf("read while held reached the registry as %q", got)
	}
}

// isHeld reports whether Hold has closed the gate.
func (g *WriteGate) isHeld() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held != nil
}

// newTestServer is a proxy configured by o in front of up, on a fresh
// ledger.
func newTestServer(t *testing.T, up http.Handler, o Options) *Server {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	o.Upstream, o.Ledger = NewInProcess(up), l
	return New(o)
}

// A blob whose upload finishes just as garbage collection closes the gate
// is pending when Hold returns: the upload is recorded before its request
// leaves the gate, so the collection that follows cannot sweep it.
func TestUploadFinishingAtHoldIsPending(t *testing.T) {
	t.Parallel()
	blob := digest.FromString("layer")
	reached, finish := make(chan struct{}), make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(reached)
		<-finish
		w.Header().Set("Docker-Content-Digest", blob.String())
		w.WriteHeader(http.StatusCreated)
	})
	// Once the registry has answered, the clock lets Hold return first
	// (or waits half a second for it): a request that recorded its upload
	// only after leaving the gate would be caught between the two.
	var answered atomic.Bool
	holdReturned := make(chan struct{})
	now := func() time.Time {
		if answered.Load() {
			select {
			case <-holdReturned:
			case <-time.After(500 * time.Millisecond):
			}
		}
		return time.Now()
	}
	g := NewWriteGate(GateOptions{Drain: patience, Wait: patience})
	srv := newTestServer(t, up, Options{Gate: g, Now: now})
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPut,
			"/v2/team/app/blobs/uploads/"+session+"?digest="+blob.String(), nil))
	}()
	<-reached
	type held struct {
		release func()
		err     error
	}
	holds := make(chan held, 1)
	go func() {
		release, err := g.Hold(t.Context())
		holds <- held{release, err}
	}()
	for !g.isHeld() { // the gate is closed, the upload in flight
		time.Sleep(time.Millisecond)
	}
	answered.Store(true)
	close(finish)
	var h held
	select {
	case h = <-holds:
	case <-time.After(patience):
		t.Fatal("Hold did not return after the upload finished")
	}
	if h.err != nil {
		t.Fatal(h.err)
	}
	pending := g.Pending(time.Now().Add(-time.Hour))
	close(holdReturned)
	h.release()
	<-served
	if !pending[blob] {
		t.Fatal("a blob uploaded as the gate closed is not pending when Hold returns: the collection could sweep it")
	}
}
