package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/taglock/taglock/storage"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// History implements storage.Ledger.
func (l *Ledger) History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error) {
	return l.HistoryBefore(ctx, repo, tag, 0, limit)
}

// HistoryBefore implements storage.Ledger with the evt/ and evr/ indexes,
// whose keys sort newest first.
func (l *Ledger) HistoryBefore(ctx context.Context, repo, tag string, before uint64, limit int) ([]storage.Event, error) {
	p := l.k.prefix("evr", repo)
	if tag != "" {
		p = l.k.prefix("evt", repo, tag)
	}
	return l.eventsByIndex(ctx, p, before, limit)
}

// Recent implements storage.Ledger.
func (l *Ledger) Recent(ctx context.Context, kind storage.EventKind, limit int) ([]storage.Event, error) {
	return l.RecentBefore(ctx, kind, 0, limit)
}

// RecentBefore implements storage.Ledger: by kind with the evk/ index, and
// for any kind from the newest sequence numbers down.
func (l *Ledger) RecentBefore(ctx context.Context, kind storage.EventKind, before uint64, limit int) ([]storage.Event, error) {
	if kind != "" {
		return l.eventsByIndex(ctx, l.k.prefix("evk", string(kind)), before, limit)
	}
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	resp, err := l.kv.Get(ctx, l.k.seq())
	if err != nil {
		return nil, err
	}
	var s sequencer
	if err := s.learn(resp.Kvs); err != nil {
		return nil, err
	}
	rev, top := resp.Header.Revision, s.last
	if before > 0 {
		top = min(top, before-1)
	}
	// Sequence numbers are dense but for explicit jumps: read windows
	// below the last, each twice as deep, until limit events are found.
	var out []storage.Event
	window := uint64(max(limit, 16))
	for top > 0 && (limit <= 0 || len(out) < limit) {
		lo := uint64(1)
		if limit > 0 && top > window {
			lo = top - window + 1
		}
		var got []storage.Event
		_, err := l.scan(ctx, l.k.event(lo), l.k.event(top+1), rev, false, func(kv *mvccpb.KeyValue) error {
			e, err := decodeEvent(kv)
			got = append(got, e)
			return err
		})
		if err != nil {
			return nil, err
		}
		slices.Reverse(got)
		out = append(out, got...)
		top, window = lo-1, window*2
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// eventsByIndex reads the newest limit entries (all when limit <= 0) of an
// index whose keys are p+inverted(seq), from the first event before before
// (from the newest when before is 0), and loads their events at the same
// revision.
func (l *Ledger) eventsByIndex(ctx context.Context, p string, before uint64, limit int) ([]storage.Event, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	start := p
	if before > 0 {
		start = p + inverted(before-1) // keys sort newest first
	}
	var seqs []uint64
	opts := []clientv3.OpOption{clientv3.WithRange(end(p)), clientv3.WithKeysOnly()}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	var rev int64
	if limit > 0 {
		resp, err := l.kv.Get(ctx, start, opts...)
		if err != nil {
			return nil, err
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			seq, ok := invertedSeq(kv.Key)
			if !ok || len(kv.Key) != len(p)+8 {
				return nil, fmt.Errorf("index key %q: %w", kv.Key, storage.ErrCorrupt)
			}
			seqs = append(seqs, seq)
		}
	} else {
		rev, err = l.scan(ctx, start, end(p), 0, true, func(kv *mvccpb.KeyValue) error {
			seq, ok := invertedSeq(kv.Key)
			if !ok || len(kv.Key) != len(p)+8 {
				return fmt.Errorf("index key %q: %w", kv.Key, storage.ErrCorrupt)
			}
			seqs = append(seqs, seq)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	gets := make([]get, len(seqs))
	for i, s := range seqs {
		gets[i] = get{key: l.k.event(s)}
	}
	got, _, err := l.read(ctx, rev, gets)
	if err != nil {
		return nil, err
	}
	out := make([]storage.Event, 0, len(seqs))
	for i, kvs := range got {
		if len(kvs) == 0 {
			return nil, fmt.Errorf("index entry for missing event %d: %w", seqs[i], storage.ErrCorrupt)
		}
		e, err := decodeEvent(kvs[0])
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func decodeEvent(kv *mvccpb.KeyValue) (storage.Event, error) {
	var e storage.Event
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return storage.Event{}, fmt.Errorf("event %x: %w: %w", kv.Key, storage.ErrCorrupt, err)
	}
	return e, nil
}
