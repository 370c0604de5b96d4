package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/storage"
)

// fakeCounter counts on a fake clock: each whole-ledger count takes took
// of it, waits for gate when gate is not nil, and answers the next value
// of immutable, or fail.
type fakeCounter struct {
	mu        sync.Mutex
	clock     time.Time
	took      time.Duration
	gate      chan struct{}
	immutable int64
	fail      error
	calls     int
	repoCalls int
}

func (f *fakeCounter) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clock
}

func (f *fakeCounter) advance(d time.Duration) {
	f.mu.Lock()
	f.clock = f.clock.Add(d)
	f.mu.Unlock()
}

func (f *fakeCounter) Counts(ctx context.Context, repo string) (storage.Counts, error) {
	f.mu.Lock()
	if repo != "" {
		f.repoCalls++
		f.mu.Unlock()
		return storage.Counts{Repositories: 1}, nil
	}
	f.calls++
	gate := f.gate
	f.clock = f.clock.Add(f.took)
	f.immutable++
	c, err := storage.Counts{Immutable: f.immutable}, f.fail
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return storage.Counts{}, ctx.Err()
		}
	}
	return c, err
}

func (f *fakeCounter) set(fn func(*fakeCounter)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeCounter) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func newTestCache(f *fakeCounter) *countCache {
	c := newCountCache(f, zerolog.Nop())
	c.now = f.now
	return c
}

func mustCount(t *testing.T, c *countCache, want int64) {
	t.Helper()
	got, err := c.Counts(context.Background(), "")
	if err != nil || got.Immutable != want {
		t.Fatalf("Counts = %+v, %v; want %d immutable", got, err, want)
	}
}

// TestCountCacheAsksAFastLedgerEveryTime ensures counts that take less
// than countsSlow (the bolt backend's) are read at every call, so they are
// never stale, and a repository's counts always come from the ledger.
func TestCountCacheAsksAFastLedgerEveryTime(t *testing.T) {
	t.Parallel()
	f := &fakeCounter{took: time.Millisecond}
	c := newTestCache(f)
	defer c.close()
	for want := int64(1); want <= 3; want++ {
		mustCount(t, c, want)
	}
	_, err := c.Counts(context.Background(), "team/app")
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || f.repoCalls != 1 {
		t.Errorf("a repository's counts: %v, %d calls; want one call to the ledger", err, f.repoCalls)
	}
}

// TestCountCacheNeverWaitsOnASlowCount ensures that once a count took
// countsSlow or longer, calls answer the last count without asking the
// ledger until it is countsMaxAge old, then still answer it at once while
// the next count runs in the background, and answer that one once it is
// done.
func TestCountCacheNeverWaitsOnASlowCount(t *testing.T) {
	t.Parallel()
	f := &fakeCounter{took: time.Second}
	c := newTestCache(f)
	defer c.close()
	mustCount(t, c, 1) // the first count is made by the first call
	f.advance(countsMaxAge - 2*time.Second)
	mustCount(t, c, 1)
	if n := f.callCount(); n != 1 {
		t.Fatalf("the ledger was asked %d times within countsMaxAge, want once", n)
	}

	gate := make(chan struct{})
	f.set(func(f *fakeCounter) { f.gate = gate })
	f.advance(2 * time.Second)
	mustCount(t, c, 1) // stale: starts the background count, answers at once
	mustCount(t, c, 1) // while it waits, nothing more starts
	close(gate)
	c.wg.Wait()
	if n := f.callCount(); n != 2 {
		t.Errorf("the ledger was asked %d times, want 2", n)
	}
	mustCount(t, c, 2)
}

// TestCountCacheForgetsAFailedCount ensures a background count that fails
// is not hidden behind the last good one: the next call counts itself and
// returns the error, and counts again after that.
func TestCountCacheForgetsAFailedCount(t *testing.T) {
	t.Parallel()
	f := &fakeCounter{took: time.Second}
	c := newTestCache(f)
	defer c.close()
	mustCount(t, c, 1)
	down := errors.New("etcd: no quorum")
	f.set(func(f *fakeCounter) { f.fail = down })
	f.advance(countsMaxAge)
	mustCount(t, c, 1)
	c.wg.Wait()
	if _, err := c.Counts(context.Background(), ""); !errors.Is(err, down) {
		t.Fatalf("after a failed background count: err = %v, want %v", err, down)
	}
	f.set(func(f *fakeCounter) { f.fail = nil })
	mustCount(t, c, 4)
}

// TestCountCacheCloseStopsTheBackgroundCount ensures close cancels a count
// running in the background and waits for it.
func TestCountCacheCloseStopsTheBackgroundCount(t *testing.T) {
	t.Parallel()
	f := &fakeCounter{took: time.Second}
	c := newTestCache(f)
	mustCount(t, c, 1)
	f.set(func(f *fakeCounter) { f.gate = make(chan struct{}) }) // never opens
	f.advance(countsMaxAge)
	mustCount(t, c, 1)
	c.close() // returns only once the count saw its context end
	if n := f.callCount(); n != 2 {
		t.Errorf("the ledger was asked %d times, want 2", n)
	}
}

// TestCountCacheWaitsForTheFirstCount ensures a call made while the first
// count, started as serve starts, still runs waits for it and answers it,
// rather than starting a count of its own.
func TestCountCacheWaitsForTheFirstCount(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	f := &fakeCounter{took: time.Second, gate: gate}
	c := newTestCache(f)
	defer c.close()
	c.prime()
	got := make(chan storage.Counts, 1)
	go func() {
		counts, err := c.Counts(context.Background(), "")
		if err != nil {
			t.Error(err)
		}
		got <- counts
	}()
	close(gate)
	if counts := <-got; counts.Immutable != 1 {
		t.Errorf("the call answered %+v, want the first count's", counts)
	}
	if n := f.callCount(); n != 1 {
		t.Errorf("the ledger was asked %d times, want once", n)
	}
}
