package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/taglock/taglock/storage"
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
	l, err := storage.Open(filepath.Join(t.TempDir(), "ledger.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	g := NewWriteGate(GateOptions{Drain: time.Hour, Wait: 50 * time.Millisecond})
	srv := New(Options{Upstream: NewInProcess(up), Ledger: l, Gate: g})
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
