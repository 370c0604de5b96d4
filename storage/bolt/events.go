package bolt

import (
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

// History implements storage.Ledger with the events_by_tag and
// events_by_repo indexes.
func (l *Ledger) History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error) {
	bucket, p := bucketEventsByRepo, prefix(repo)
	if tag != "" {
		bucket, p = bucketEventsByTag, prefix(repo, tag)
	}
	return l.eventsByIndex(ctx, bucket, p, limit)
}

// Recent implements storage.Ledger with the events_by_kind index.
func (l *Ledger) Recent(ctx context.Context, kind storage.EventKind, limit int) ([]storage.Event, error) {
	if kind == "" {
		var out []storage.Event
		err := l.view(ctx, func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketEvents).Cursor()
			for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
				e, err := decodeEvent(k, v)
				if err != nil {
					return err
				}
				out = append(out, e)
			}
			return nil
		})
		return out, err
	}
	return l.eventsByIndex(ctx, bucketEventsByKind, prefix(string(kind)), limit)
}

// eventsByIndex walks an index bucket whose keys are p+seq backwards and
// loads the events.
func (l *Ledger) eventsByIndex(ctx context.Context, bucket, p []byte, limit int) ([]storage.Event, error) {
	var out []storage.Event
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		return forPrefixReverse(tx.Bucket(bucket), p, func(k, _ []byte) (bool, error) {
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
