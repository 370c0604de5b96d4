package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

type pullSink struct {
	mu      sync.Mutex
	batches [][]storage.Pull
}

func (p *pullSink) RecordPulls(_ context.Context, pulls []storage.Pull) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.batches = append(p.batches, pulls)
	return nil
}

// Pulls are coalesced per manifest to the latest time and written in one
// batch, and Close flushes what is left.
func TestPullTrackerBatches(t *testing.T) {
	t.Parallel()
	sink := &pullSink{}
	tr := NewPullTracker(sink, PullTrackerOptions{Interval: time.Hour})
	d := digest.FromString("a")
	base := time.Unix(1000, 0)
	for i := range 100 {
		tr.observe("r", d, base.Add(time.Duration(i)*time.Second))
	}
	tr.observe("r", digest.FromString("b"), base)
	tr.Close()
	if len(sink.batches) != 1 || len(sink.batches[0]) != 2 {
		t.Fatalf("batches %v, want one of 2 pulls", sink.batches)
	}
	for _, p := range sink.batches[0] {
		if p.Digest == d && !p.At.Equal(base.Add(99*time.Second)) {
			t.Errorf("latest pull of a is %v, want %v", p.At, base.Add(99*time.Second))
		}
	}
}

// Hold waits for writes in flight, keeps new ones out until released, and
// a blob uploaded without its manifest stays pending.
func TestWriteGateHoldsWrites(t *testing.T) {
	t.Parallel()
	g := NewWriteGate(GateOptions{})
	leave, err := g.enter(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan func())
	go func() {
		release, err := g.Hold(context.Background())
		if err != nil {
			t.Error(err)
		}
		held <- release
	}()
	select {
	case <-held:
		t.Fatal("Hold returned while a write was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	leave()
	release := <-held
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.enter(ctx); err == nil {
		t.Fatal("a write entered while the gate was held")
	}
	release()
	if leave, err = g.enter(t.Context()); err != nil {
		t.Fatalf("write after release: %v", err)
	}
	leave()

	d := digest.FromString("blob")
	g.uploaded(d, time.Now())
	if !g.Pending(time.Now().Add(-time.Hour))[d] {
		t.Error("an uploaded blob is not pending")
	}
	g.referenced([]digest.Digest{d})
	if g.Pending(time.Now().Add(-time.Hour))[d] {
		t.Error("a blob its manifest references is still pending")
	}
}
