package server

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/storage"
)

// How the whole-ledger counts of taglock_tags and the web page are read.
const (
	// countsMaxAge is how old a slow count may be before it is made again.
	countsMaxAge = 30 * time.Second
	// countsSlow is how long a count may take and still be made at every
	// call: the bolt backend's, one read, takes microseconds.
	countsSlow = 50 * time.Millisecond
	// countsTimeout bounds a count made in the background.
	countsTimeout = 5 * time.Minute
)

// counter is the ledger method countCache answers for.
type counter interface {
	Counts(ctx context.Context, repo string) (storage.Counts, error)
}

// countCache answers Counts for the metrics and the web page so that
// neither waits on a count that reads every binding. A repository's counts
// come from the ledger at every call. So do the whole ledger's while
// counting them takes less than countsSlow (the bolt backend keeps them as
// it writes); once a count took longer (the etcd backend reads every
// binding), the last one is answered, and made again in the background when
// it is older than countsMaxAge, so an answer is at most about that old.
// serve makes the first count in the background as it starts (prime); a
// call before it is done waits for it. A background count that fails is
// logged and forgotten: the next call counts again, and fails, itself.
type countCache struct {
	l      counter
	now    func() time.Time
	log    zerolog.Logger
	maxAge time.Duration
	slow   time.Duration

	mu         sync.Mutex
	last       storage.Counts
	at         time.Time // when last was counted
	cached     bool      // last took countsSlow or longer: answer it
	refreshing bool      // a background count runs; done closes when it ends
	done       chan struct{}
	closed     bool
	cancel     context.CancelFunc // the background count's
	wg         sync.WaitGroup
}

func newCountCache(l counter, log zerolog.Logger) *countCache {
	return &countCache{l: l, now: time.Now, log: log, maxAge: countsMaxAge, slow: countsSlow}
}

// prime starts the first count in the background.
func (c *countCache) prime() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.refreshing && !c.closed {
		c.startLocked()
	}
}

// Counts implements counter.
func (c *countCache) Counts(ctx context.Context, repo string) (storage.Counts, error) {
	if repo != "" {
		return c.l.Counts(ctx, repo)
	}
	for {
		c.mu.Lock()
		switch {
		case c.cached:
			if c.now().Sub(c.at) >= c.maxAge && !c.refreshing && !c.closed {
				c.startLocked()
			}
			last := c.last
			c.mu.Unlock()
			return last, nil
		case c.refreshing:
			done := c.done
			c.mu.Unlock()
			select {
			case <-done:
				continue // answered as it left things
			case <-ctx.Done():
				return storage.Counts{}, ctx.Err()
			}
		default:
			c.mu.Unlock()
			return c.count(ctx)
		}
	}
}

// startLocked starts a count in the background; c.mu is held.
func (c *countCache) startLocked() {
	ctx, cancel := context.WithTimeout(context.Background(), countsTimeout)
	done := make(chan struct{})
	c.refreshing, c.cancel, c.done = true, cancel, done
	c.wg.Go(func() { c.refresh(ctx, done) })
}

// count counts the whole ledger and notes how long it took.
func (c *countCache) count(ctx context.Context) (storage.Counts, error) {
	start := c.now()
	counts, err := c.l.Counts(ctx, "")
	if err != nil {
		return storage.Counts{}, err
	}
	end := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !end.Before(c.at) {
		c.last, c.at, c.cached = counts, end, end.Sub(start) >= c.slow
	}
	return counts, nil
}

// refresh counts in the background and closes done.
func (c *countCache) refresh(ctx context.Context, done chan struct{}) {
	_, err := c.count(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cancel()
	c.refreshing, c.cancel = false, nil
	close(done)
	if err != nil {
		c.cached = false
		if !c.closed {
			c.log.Warn().Err(err).Msg("counting the ledger's tags failed; the next read counts again")
		}
	}
}

// close stops a background count and waits for it.
func (c *countCache) close() {
	c.mu.Lock()
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// countedLedger is the ledger with whole-ledger counts answered by a
// countCache: what the web page reads.
type countedLedger struct {
	storage.Ledger
	counts *countCache
}

// Counts implements storage.Ledger.
func (l countedLedger) Counts(ctx context.Context, repo string) (storage.Counts, error) {
	return l.counts.Counts(ctx, repo)
}
