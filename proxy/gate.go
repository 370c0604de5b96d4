package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Errors of the write gate.
var (
	// ErrWritesInFlight is returned, wrapped, by Hold when writes are still
	// in flight after the drain timeout; the gate is open again.
	ErrWritesInFlight = errors.New("writes still in flight")
	// errGateHeld refuses a write that waited its bound at a held gate;
	// it is answered 503 with Retry-After.
	errGateHeld = errors.New("garbage collection is holding writes")
)

// Default bounds of a WriteGate.
const (
	// DefaultGateDrain is how long Hold waits for writes in flight.
	DefaultGateDrain = 10 * time.Second
	// DefaultGateWait is how long a write waits at a held gate.
	DefaultGateWait = 20 * time.Second
)

// GateOptions bounds how long a WriteGate waits, either way.
type GateOptions struct {
	// Drain is how long Hold waits for the writes in flight to end before
	// it gives up, opens the gate again and returns ErrWritesInFlight.
	// Default DefaultGateDrain.
	Drain time.Duration
	// Wait is how long a write that arrives while the gate is held waits
	// for it to open before it is refused with 503. Keep it above Drain,
	// so that the writes that arrive while Hold drains get in when Hold
	// gives up. Default DefaultGateWait.
	Wait time.Duration
}

// WriteGate lets garbage collection of the embedded registry run without
// racing pushes. Requests that write (PUT, POST, PATCH, DELETE) pass it
// while it is open; Hold closes it, waits for the writes in flight to end,
// and keeps new ones waiting until released. Both waits are bounded: Hold
// gives up when writes outlast the drain timeout (a slow client must not
// stall garbage collection, nor every write queued behind it), and a
// write that waits longer than the wait timeout is refused with 503.
//
// It also remembers blobs uploaded whose manifest has not been pushed yet
// (a push spans several requests), so a collection between a blob upload
// and its manifest does not sweep them. An upload is recorded before its
// request leaves the gate, so a Hold that finds no write in flight also
// finds every upload that finished.
//
// The zero value is not usable; use NewWriteGate.
type WriteGate struct {
	drain, wait time.Duration

	mu      sync.Mutex
	held    chan struct{} // non-nil while held; closed on release
	active  int           // writes in flight
	drained chan struct{} // closed when active drops to zero while held
	pending map[digest.Digest]time.Time
}

// NewWriteGate returns an open gate.
func NewWriteGate(o GateOptions) *WriteGate {
	g := &WriteGate{drain: o.Drain, wait: o.Wait, pending: map[digest.Digest]time.Time{}}
	if g.drain <= 0 {
		g.drain = DefaultGateDrain
	}
	if g.wait <= 0 {
		g.wait = DefaultGateWait
	}
	return g
}

// isWrite reports whether a method changes the registry.
func isWrite(method string) bool {
	switch method {
	case http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// enter waits until the gate is open, at most the gate's wait timeout, and
// counts a write in flight. The returned func ends it.
func (g *WriteGate) enter(ctx context.Context) (func(), error) {
	var expired <-chan time.Time
	for {
		g.mu.Lock()
		if g.held == nil {
			g.active++
			g.mu.Unlock()
			return g.leave, nil
		}
		ch := g.held
		g.mu.Unlock()
		if expired == nil {
			t := time.NewTimer(g.wait)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-ch:
		case <-expired:
			return nil, errGateHeld
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *WriteGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.active--
	if g.active == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
}

// Hold closes the gate and waits until no write is in flight, at most the
// drain timeout. It returns the func that opens the gate again. When writes
// are still in flight at the timeout it opens the gate at once and returns
// an error wrapping ErrWritesInFlight; on any error the gate is open.
func (g *WriteGate) Hold(ctx context.Context) (release func(), err error) {
	for {
		g.mu.Lock()
		if g.held == nil {
			break
		}
		ch := g.held
		g.mu.Unlock()
		select { // another holder: wait for it
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	held := make(chan struct{})
	g.held = held
	var once sync.Once
	release = func() {
		once.Do(func() {
			g.mu.Lock()
			g.held, g.drained = nil, nil
			g.mu.Unlock()
			close(held)
		})
	}
	var expired <-chan time.Time
	for g.active > 0 {
		if g.drained == nil {
			g.drained = make(chan struct{})
		}
		ch := g.drained
		g.mu.Unlock()
		if expired == nil {
			t := time.NewTimer(g.drain)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-ch:
		case <-expired:
			g.mu.Lock()
			n := g.active
			g.mu.Unlock()
			if n == 0 { // drained just as the timer fired
				return release, nil
			}
			release()
			return nil, fmt.Errorf("%w: %d after waiting %s", ErrWritesInFlight, n, g.drain)
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
		g.mu.Lock()
	}
	g.mu.Unlock()
	return release, nil
}

// Pending returns the blobs uploaded since before (or later) whose manifest
// has not been pushed yet, and forgets older ones.
func (g *WriteGate) Pending(since time.Time) map[digest.Digest]bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[digest.Digest]bool{}
	for d, at := range g.pending {
		if at.Before(since) {
			delete(g.pending, d)
			continue
		}
		out[d] = true
	}
	return out
}

func (g *WriteGate) uploaded(d digest.Digest, at time.Time) {
	g.mu.Lock()
	g.pending[d] = at
	g.mu.Unlock()
}

func (g *WriteGate) referenced(ds []digest.Digest) {
	g.mu.Lock()
	for _, d := range ds {
		delete(g.pending, d)
	}
	g.mu.Unlock()
}

// track passes a request through the gate and pull tracking. It returns
// the func to call when the request has been answered.
func (s *Server) track(w *statusWriter, r *http.Request, rt Route) (func(), error) {
	leave := func() {}
	if s.gate != nil && isWrite(r.Method) {
		var err error
		if leave, err = s.gate.enter(r.Context()); err != nil {
			return nil, err
		}
	}
	return func() {
		// A finished upload is recorded while its request still counts
		// as in flight: a Hold that finds no write in flight then finds
		// the blob pending, and the collection after it keeps the blob.
		if s.gate != nil && (rt.Kind == KindUpload || rt.Kind == KindUploadStart) && w.status == http.StatusCreated {
			if d, err := digest.Parse(w.Header().Get("Docker-Content-Digest")); err == nil {
				s.gate.uploaded(d, s.now())
			}
		}
		leave()
		if w.status/100 != 2 {
			return
		}
		switch {
		case rt.Kind == KindManifest && r.Method == http.MethodGet && s.pulls != nil:
			d := rt.Digest
			if d == "" {
				d, _ = digest.Parse(w.Header().Get("Docker-Content-Digest"))
			}
			if d != "" {
				s.pulls.observe(rt.Name, d, s.now())
			}
		case s.gate != nil && rt.Kind == KindManifest && r.Method == http.MethodPut:
			// After leaving: until the blobs are no longer pending they
			// stay protected, which errs on the safe side.
			d, err := digest.Parse(w.Header().Get("Docker-Content-Digest"))
			if err != nil {
				return
			}
			if m, err := s.ledger.Manifest(context.WithoutCancel(r.Context()), rt.Name, d); err == nil {
				s.gate.referenced(append(m.Blobs, m.Children...))
			}
		}
	}, nil
}
