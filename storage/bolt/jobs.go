package bolt

import (
	"bytes"
	"context"
	"maps"
	"slices"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// JobStates returns the job state whose names start with prefix (see
// storage.Ledger).
func (l *Ledger) JobStates(ctx context.Context, prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		if b == nil {
			return nil // a read-only ledger written before job state existed
		}
		c := b.Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			out[string(k)] = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutJobStates stores or deletes job state in one transaction (see
// storage.Ledger).
func (l *Ledger) PutJobStates(ctx context.Context, values map[string][]byte) error {
	if err := storage.ValidJobStates(values); err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(values))
	return l.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		for _, name := range names {
			var err error
			if v := values[name]; v == nil {
				err = b.Delete([]byte(name))
			} else {
				err = b.Put([]byte(name), v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}
