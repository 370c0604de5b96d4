package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
)

// sequencer hands out event sequence numbers. The last one is the value of
// the seq key, and every transaction that stores events compares the key's
// revision with the one it numbered them from and writes the new last
// value, so numbers are unique and strictly increasing in commit order
// across every Ledger sharing the prefix. In one process, writers take
// turns (the semaphore) instead of failing each other's compares, and the
// last value is cached between them.
type sequencer struct {
	sem   chan struct{}
	known bool   // last and rev are the key's as of this process's last write or read
	last  uint64 // the last sequence number given out
	rev   int64  // the seq key's ModRevision; 0 when it does not exist
}

func newSequencer() *sequencer { return &sequencer{sem: make(chan struct{}, 1)} }

// lock takes the sequencer, reading the seq key when its value is not
// known.
func (l *Ledger) lockSeq(ctx context.Context) error {
	select {
	case l.seq.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if l.seq.known {
		return nil
	}
	resp, err := l.kv.Get(ctx, l.k.seq())
	if err != nil {
		l.unlockSeq()
		return err
	}
	if err := l.seq.learn(resp.Kvs); err != nil {
		l.unlockSeq()
		return err
	}
	return nil
}

func (l *Ledger) unlockSeq() { <-l.seq.sem }

// learn takes the seq key's value and revision from a read of it.
func (s *sequencer) learn(kvs []*mvccpb.KeyValue) error {
	s.known, s.last, s.rev = true, 0, 0
	if len(kvs) == 0 {
		return nil
	}
	n, err := strconv.ParseUint(string(kvs[0].Value), 10, 64)
	if err != nil {
		s.known = false
		return fmt.Errorf("event sequence %q: %w", kvs[0].Value, storage.ErrCorrupt)
	}
	s.last, s.rev = n, kvs[0].ModRevision
	return nil
}

// numbered is what adding events to a transaction did: the events as
// they will be stored and the last sequence number if it commits.
type numbered struct {
	events []storage.Event
	last   uint64
}

// eventPuts numbers e after last (an explicit Seq must be greater) and
// returns the keys and values that store it.
func (l *Ledger) eventPuts(e storage.Event, last uint64) (storage.Event, [][2]string, int, error) {
	if e.Seq == 0 {
		e.Seq = last + 1
	} else if e.Seq <= last {
		return e, nil, 0, fmt.Errorf("event seq %d is not after %d: %w", e.Seq, last, storage.ErrInvalid)
	}
	if e.Time.IsZero() {
		e.Time = l.clock()
	}
	v, err := json.Marshal(e)
	if err != nil {
		return e, nil, 0, fmt.Errorf("encode event %d: %w", e.Seq, err)
	}
	puts := [][2]string{{l.k.event(e.Seq), string(v)}}
	size := len(puts[0][0]) + len(v)
	for _, k := range l.eventIndexKeys(e) {
		puts = append(puts, [2]string{k, ""})
		size += len(k)
	}
	return e, puts, size + 8*len(puts), nil
}

// addEvents adds to t as many of events as fit, numbered after the
// sequencer's last value (the caller holds the sequencer), with the compare
// and update of the seq key, and returns what it added and the events
// left over. With all true it adds all of them or none.
func (l *Ledger) addEvents(t *txn, events []storage.Event, all bool) (numbered, []storage.Event, error) {
	n := numbered{last: l.seq.last}
	if len(events) == 0 {
		return n, nil, nil
	}
	type stored struct {
		e    storage.Event
		puts [][2]string
		size int
	}
	var add []stored
	ops, bytes := 2, 64 // the seq key's compare and put
	for i, e := range events {
		e, puts, size, err := l.eventPuts(e, n.last)
		if err != nil {
			return numbered{}, nil, err
		}
		if !t.fits(ops+len(puts), bytes+size) {
			if all {
				return numbered{last: l.seq.last}, events, nil
			}
			events = events[i:]
			break
		}
		ops, bytes = ops+len(puts), bytes+size
		add = append(add, stored{e, puts, size})
		n.last = e.Seq
		if i == len(events)-1 {
			events = nil
		}
	}
	if len(add) == 0 {
		return numbered{last: l.seq.last}, events, nil
	}
	t.cmp(l.k.seq(), clientv3.Compare(clientv3.ModRevision(l.k.seq()), "=", l.seq.rev))
	t.onFailure(clientv3.OpGet(l.k.seq()))
	for _, a := range add {
		for _, p := range a.puts {
			t.put(p[0], p[1])
		}
		n.events = append(n.events, a.e)
	}
	t.put(l.k.seq(), strconv.FormatUint(n.last, 10))
	return n, events, nil
}

// eventIndexKeys lists the index entries an event must have.
func (l *Ledger) eventIndexKeys(e storage.Event) []string {
	out := []string{l.k.eventByRepo(e.Repo, e.Seq), l.k.eventByKind(string(e.Kind), e.Seq)}
	if e.Tag != "" {
		out = append(out, l.k.eventByTag(e.Repo, e.Tag, e.Seq))
	}
	return out
}

// committed updates the sequencer after a transaction that held it: on
// success to what the transaction wrote, on failure to the seq key read
// in its else branch, and forgets the value when the outcome is unknown.
func (l *Ledger) committed(resp *clientv3.TxnResponse, err error, n numbered, wroteSeq bool) {
	switch {
	case err != nil:
		l.seq.known = false
	case resp.Succeeded && wroteSeq:
		l.seq.known, l.seq.last, l.seq.rev = true, n.last, resp.Header.Revision
	case !resp.Succeeded:
		for _, r := range resp.Responses {
			if rr := r.GetResponseRange(); rr != nil && len(rr.Kvs) > 0 && string(rr.Kvs[0].Key) == l.k.seq() {
				_ = l.seq.learn(rr.Kvs)
				return
			}
		}
		l.seq.known = false
	}
}

// Append implements storage.Ledger. Concurrent Appends of this Ledger are
// written together, in as few transactions as fit them, so a burst of
// refusals costs a few round trips rather than one each and never queues
// a push's commit behind them for long.
func (l *Ledger) Append(ctx context.Context, events ...storage.Event) error {
	if len(events) == 0 {
		return nil
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	return l.appends.append(ctx, events)
}

// appender writes concurrent Appends together. A caller that finds no
// write running writes the pending Appends itself, its own among them,
// and hands what arrived meanwhile to a goroutine.
type appender struct {
	l       *Ledger
	mu      sync.Mutex
	pending []*appendReq
	busy    bool
}

type appendReq struct {
	events []storage.Event
	done   chan error
}

func (a *appender) append(ctx context.Context, events []storage.Event) error {
	req := &appendReq{events: events, done: make(chan error, 1)}
	a.mu.Lock()
	a.pending = append(a.pending, req)
	lead := !a.busy
	a.busy = true
	a.mu.Unlock()
	if lead {
		a.run(ctx, true)
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run writes pending Appends, batch after batch. The leader writes the
// first batch (its own Append is in it) and leaves the rest to a
// goroutine. Each batch is bounded by the request timeout, not by one
// caller's context: the others in it may still be waiting.
func (a *appender) run(ctx context.Context, first bool) {
	for {
		a.mu.Lock()
		if len(a.pending) == 0 {
			a.busy = false
			a.mu.Unlock()
			return
		}
		batch := a.pending
		a.pending = nil
		a.mu.Unlock()
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.l.timeout)
		a.write(bctx, batch)
		cancel()
		if first {
			go a.run(context.WithoutCancel(ctx), false)
			return
		}
	}
}

// write writes reqs in as many transactions as they need, each request's
// events in one.
func (a *appender) write(ctx context.Context, reqs []*appendReq) {
	l := a.l
	for len(reqs) > 0 {
		if err := l.lockSeq(ctx); err != nil {
			for _, r := range reqs {
				r.done <- err
			}
			return
		}
		// Number every request's events after the one before, and put
		// as many requests in the transaction as fit.
		var (
			events []storage.Event
			in     []*appendReq
			rest   []*appendReq
			last   = l.seq.last
		)
		for i, r := range reqs {
			numbered, err := numberAfter(r.events, last)
			if err != nil {
				r.done <- err // an explicit seq that is not new: this Append alone fails
				continue
			}
			var probe txn
			if _, left, _ := l.addEvents(&probe, append(slices.Clone(events), numbered...), true); left != nil {
				if len(in) == 0 {
					r.done <- fmt.Errorf("append of %d events: more than one etcd transaction holds", len(r.events))
					continue
				}
				rest = reqs[i:]
				break
			}
			events, in = append(events, numbered...), append(in, r)
			last = numbered[len(numbered)-1].Seq
		}
		if len(in) == 0 {
			l.unlockSeq()
			reqs = rest
			continue
		}
		var t txn
		n, _, err := l.addEvents(&t, events, true)
		if err != nil {
			l.unlockSeq()
			for _, r := range in {
				r.done <- err
			}
			reqs = rest
			continue
		}
		resp, err := t.commit(ctx, l.kv)
		l.committed(resp, err, n, true)
		l.unlockSeq()
		switch {
		case err != nil:
			for _, r := range in {
				r.done <- err
			}
			reqs = rest
		case resp.Succeeded:
			for _, r := range in {
				r.done <- nil
			}
			reqs = rest
		default:
			// Another Ledger wrote events first: number them again.
			reqs = append(in, rest...)
		}
	}
}

// numberAfter gives events without a Seq the numbers after last, in order,
// and checks that explicit ones are greater than the number before them.
func numberAfter(events []storage.Event, last uint64) ([]storage.Event, error) {
	out := slices.Clone(events)
	for i := range out {
		if out[i].Seq == 0 {
			out[i].Seq = last + 1
		} else if out[i].Seq <= last {
			return nil, fmt.Errorf("event seq %d is not after %d: %w", out[i].Seq, last, storage.ErrInvalid)
		}
		last = out[i].Seq
	}
	return out, nil
}

// appendLater records events a write could not hold in its own
// transaction, after it. Events it cannot record are logged and counted
// in LostEvents.
func (l *Ledger) appendLater(ctx context.Context, events []storage.Event) {
	if len(events) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	for len(events) > 0 {
		n := min(len(events), 30)
		if err := l.appends.append(ctx, events[:n]); err != nil {
			for _, e := range events {
				l.log.Error().Err(err).Str("repo", e.Repo).Str("tag", e.Tag).Str("digest", e.Digest.String()).
					Str("kind", string(e.Kind)).Str("user", e.User).Msg("ledger: history event lost after its binding was recorded")
			}
			l.lost.Add(uint64(len(events)))
			return
		}
		events = events[n:]
	}
}
