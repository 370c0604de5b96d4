package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/storage"
)

// PullRecorder is what pull tracking writes to.
type PullRecorder interface {
	RecordPulls(ctx context.Context, pulls []storage.Pull) error
}

var _ PullRecorder = storage.Ledger(nil)

// DefaultPullFlush is how often a PullTracker writes what it collected
// when PullTrackerOptions.Interval is zero.
const DefaultPullFlush = time.Second

// PullTrackerOptions configures NewPullTracker.
type PullTrackerOptions struct {
	// Interval is how often collected pulls are written. Default
	// DefaultPullFlush.
	Interval time.Duration
	// Buffer is how many pulls may wait for the flusher before new ones
	// are dropped (counted in Dropped). Default 4096.
	Buffer int
	// Log receives flush failures. Default zerolog.Nop().
	Log zerolog.Logger
}

// PullTracker records the last pull time of manifests, for retention's
// pulled_within. A manifest GET only sends (repository, digest, time) on a
// buffered channel; a background flusher keeps the latest time per manifest
// and writes the batch in one ledger transaction every Interval. It never
// blocks a request: when the buffer is full the pull is dropped and counted.
type PullTracker struct {
	rec     PullRecorder
	in      chan storage.Pull
	flushNo chan chan struct{}
	stop    chan struct{}
	done    chan struct{}
	every   time.Duration
	log     zerolog.Logger
	dropped atomic.Int64
	once    sync.Once
}

// NewPullTracker starts a tracker writing to rec. Close it to flush and
// stop.
func NewPullTracker(rec PullRecorder, o PullTrackerOptions) *PullTracker {
	if o.Interval <= 0 {
		o.Interval = DefaultPullFlush
	}
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	t := &PullTracker{rec: rec, in: make(chan storage.Pull, o.Buffer), flushNo: make(chan chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{}), every: o.Interval, log: o.Log}
	go t.run()
	return t
}

// observe queues a pull without blocking.
func (t *PullTracker) observe(repo string, d digest.Digest, at time.Time) {
	select {
	case t.in <- storage.Pull{Repo: repo, Digest: d, At: at.UTC()}:
	default:
		t.dropped.Add(1)
	}
}

// Dropped counts pulls not recorded because the buffer was full.
func (t *PullTracker) Dropped() int64 { return t.dropped.Load() }

// Flush writes what has been collected so far and returns when it is in
// the ledger (or the write failed and was logged), or when ctx ends.
func (t *PullTracker) Flush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case t.flushNo <- ack:
	case <-t.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close flushes what was collected and stops the flusher.
func (t *PullTracker) Close() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

func (t *PullTracker) run() {
	defer close(t.done)
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	batch := map[[2]string]storage.Pull{}
	add := func(p storage.Pull) {
		k := [2]string{p.Repo, string(p.Digest)}
		if prev, ok := batch[k]; !ok || p.At.After(prev.At) {
			batch[k] = p
		}
	}
	drain := func() {
		for {
			select {
			case p := <-t.in:
				add(p)
			default:
				return
			}
		}
	}
	write := func() {
		drain()
		if len(batch) == 0 {
			return
		}
		pulls := make([]storage.Pull, 0, len(batch))
		for _, p := range batch {
			pulls = append(pulls, p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := t.rec.RecordPulls(ctx, pulls); err != nil {
			t.log.Error().Err(err).Int("pulls", len(pulls)).Msg("could not record pulls; retention's pulled_within may see them late")
			return // kept for the next flush
		}
		clear(batch)
	}
	for {
		select {
		case p := <-t.in:
			add(p)
		case <-tick.C:
			write()
		case ack := <-t.flushNo:
			write()
			close(ack)
		case <-t.stop:
			write()
			return
		}
	}
}
