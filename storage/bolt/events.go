package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// Append implements storage.Ledger in one transaction.
func (l *Ledger) Append(ctx context.Context, events ...storage.Event) error {
	if len(events) == 0 {
		return nil
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	return l.update(ctx, func(tx *bbolt.Tx) error {
		return l.appendEvents(tx, events)
	})
}

// History implements storage.Ledger.
func (l *Ledger) History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error) {
	return l.HistoryBefore(ctx, repo, tag, 0, limit)
}

// HistoryBefore implements storage.Ledger with the events_by_tag and
// events_by_repo indexes.
func (l *Ledger) HistoryBefore(ctx context.Context, repo, tag string, before uint64, limit int) ([]storage.Event, error) {
	bucket, p := bucketEventsByRepo, prefix(repo)
	if tag != "" {
		bucket, p = bucketEventsByTag, prefix(repo, tag)
	}
	return l.eventsByIndex(ctx, bucket, p, before, limit)
}

// Recent implements storage.Ledger.
func (l *Ledger) Recent(ctx context.Context, kind storage.EventKind, limit int) ([]storage.Event, error) {
	return l.RecentBefore(ctx, kind, 0, limit)
}

// RecentBefore implements storage.Ledger with the events_by_kind index, or
// the events themselves for any kind.
func (l *Ledger) RecentBefore(ctx context.Context, kind storage.EventKind, before uint64, limit int) ([]storage.Event, error) {
	if kind != "" {
		return l.eventsByIndex(ctx, bucketEventsByKind, prefix(string(kind)), before, limit)
	}
	var out []storage.Event
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		return forPrefixBelow(tx.Bucket(bucketEvents), nil, below(nil, before), func(k, v []byte) (bool, error) {
			e, err := decodeEvent(k, v)
			if err != nil {
				return false, err
			}
			out = append(out, e)
			return limit <= 0 || len(out) < limit, nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// below is the key under prefix p that the events before seq sort below,
// or nil for every event when seq is 0.
func below(p []byte, seq uint64) []byte {
	if seq == 0 {
		return nil
	}
	return append(bytes.Clone(p), seqKey(seq)...)
}

// eventsByIndex walks an index bucket whose keys are p+seq backwards from
// below(p, before) and loads the events.
func (l *Ledger) eventsByIndex(ctx context.Context, bucket, p []byte, before uint64, limit int) ([]storage.Event, error) {
	var out []storage.Event
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		return forPrefixBelow(tx.Bucket(bucket), p, below(p, before), func(k, _ []byte) (bool, error) {
			seq, ok := seqOf(k[len(p):])
			if !ok || len(k) != len(p)+8 {
				return false, fmt.Errorf("%s key %q: %w", bucket, k, storage.ErrCorrupt)
			}
			ek := seqKey(seq)
			v := events.Get(ek)
			if v == nil {
				return false, fmt.Errorf("%s entry for missing event %d: %w", bucket, seq, storage.ErrCorrupt)
			}
			e, err := decodeEvent(ek, v)
			if err != nil {
				return false, err
			}
			out = append(out, e)
			return limit <= 0 || len(out) < limit, nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func decodeEvent(k, v []byte) (storage.Event, error) {
	var e storage.Event
	if err := json.Unmarshal(v, &e); err != nil {
		return storage.Event{}, fmt.Errorf("event %x: %w: %w", k, storage.ErrCorrupt, err)
	}
	return e, nil
}

// appendEvents fills Seq and Time where zero and stores events with their
// indexes. Explicit sequences must be new and increasing.
func (l *Ledger) appendEvents(tx *bbolt.Tx, events []storage.Event) error {
	b := tx.Bucket(bucketEvents)
	for _, e := range events {
		if e.Seq == 0 {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			e.Seq = seq
		} else {
			if e.Seq <= b.Sequence() {
				return fmt.Errorf("event seq %d is not after %d: %w", e.Seq, b.Sequence(), storage.ErrInvalid)
			}
			if err := b.SetSequence(e.Seq); err != nil {
				return err
			}
		}
		if e.Time.IsZero() {
			e.Time = l.clock()
		}
		if err := putEvent(tx, e); err != nil {
			return err
		}
	}
	return nil
}

// putEvent stores e under its Seq with its index entries.
func putEvent(tx *bbolt.Tx, e storage.Event) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %d: %w", e.Seq, err)
	}
	if err := tx.Bucket(bucketEvents).Put(seqKey(e.Seq), v); err != nil {
		return err
	}
	for _, ix := range eventIndexKeys(e) {
		if err := tx.Bucket(ix.bucket).Put(ix.key, nil); err != nil {
			return err
		}
	}
	return nil
}

// indexKey is one index entry: a key in a bucket.
type indexKey struct {
	bucket []byte
	key    []byte
}

// eventIndexKeys lists the index entries an event must have.
func eventIndexKeys(e storage.Event) []indexKey {
	keys := []indexKey{
		{bucketEventsByRepo, seqKey(e.Seq, e.Repo)},
		{bucketEventsByKind, seqKey(e.Seq, string(e.Kind))},
	}
	if e.Tag != "" {
		keys = append(keys, indexKey{bucketEventsByTag, seqKey(e.Seq, e.Repo, e.Tag)})
	}
	return keys
}
