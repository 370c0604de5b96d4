package bolt

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// importBatch is how many records Import writes per transaction.
const importBatch = 1000

// Backup implements storage.Ledger: it writes a consistent copy of the
// ledger file to w, from one read transaction, while the ledger stays in
// use. The copy opens with Open like the original; restore a ledger by
// putting the copy in place of its file while taglock is stopped.
func (l *Ledger) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("backup ledger %s: %w", l.path, err)
	}
	return n, nil
}

// Export implements storage.Ledger from one read transaction, walking each
// bucket in key order.
func (l *Ledger) Export(ctx context.Context, w io.Writer) error {
	x := storage.NewExportWriter(w)
	sections := []struct {
		bucket []byte
		write  func(k, v []byte) error
	}{
		{bucketBindings, func(k, v []byte) error {
			b, err := decodeBinding(k, v)
			if err != nil {
				return err
			}
			return x.Binding(b)
		}},
		{bucketManifests, func(k, v []byte) error {
			m, err := decodeManifest(k, v)
			if err != nil {
				return err
			}
			return x.Manifest(m)
		}},
		{bucketPulls, func(k, v []byte) error {
			parts, ok := splitKey(k, 2)
			if !ok {
				return fmt.Errorf("pull key %q: %w", k, storage.ErrCorrupt)
			}
			at, err := decodePullTime(k, v)
			if err != nil {
				return err
			}
			return x.Pull(storage.Pull{Repo: parts[0], Digest: digest.Digest(parts[1]), At: at})
		}},
		{bucketReservations, func(k, v []byte) error {
			r, err := decodeReservation(k, v)
			if err != nil {
				return err
			}
			return x.Reservation(r)
		}},
		{bucketEvents, func(k, v []byte) error {
			e, err := decodeEvent(k, v)
			if err != nil {
				return err
			}
			return x.Event(e)
		}},
	}
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		n := 0
		for _, s := range sections {
			err := tx.Bucket(s.bucket).ForEach(func(k, v []byte) error {
				if n++; n%checkEvery == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
				}
				return s.write(k, v)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = x.Flush()
	}
	if err != nil {
		return fmt.Errorf("export ledger %s: %w", l.path, err)
	}
	return nil
}

// Import implements storage.Ledger, writing importBatch (1000) records per
// transaction.
func (l *Ledger) Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error) {
	return storage.ImportInto(ctx, r, o, importTarget{l}, importBatch)
}

// importTarget is the ledger as storage.ImportInto writes it.
type importTarget struct{ l *Ledger }

// ViewImport implements storage.ImportTarget with a read transaction.
func (t importTarget) ViewImport(ctx context.Context, _ []storage.ImportRecord, fn func(storage.ImportView) error) error {
	return t.l.view(ctx, func(tx *bbolt.Tx) error { return fn(txView{tx}) })
}

// WriteImport implements storage.ImportTarget with one write transaction.
func (t importTarget) WriteImport(ctx context.Context, records []storage.ImportRecord, check func(storage.ImportView) error) error {
	return t.l.update(ctx, func(tx *bbolt.Tx) error {
		if err := check(txView{tx}); err != nil {
			return err
		}
		for _, rec := range records {
			if err := t.l.importRecord(tx, rec); err != nil {
				return fmt.Errorf("import record %d: %w", rec.N, err)
			}
		}
		return nil
	})
}

// importRecord stores one import record.
func (l *Ledger) importRecord(tx *bbolt.Tx, rec storage.ImportRecord) error {
	switch {
	case rec.Binding != nil:
		return l.putBinding(tx, *rec.Binding)
	case rec.Manifest != nil:
		return putManifest(tx, *rec.Manifest)
	case rec.Pull != nil:
		return putPull(tx, *rec.Pull)
	case rec.Reservation != nil:
		if _, _, err := deleteReservation(tx, rec.Reservation.ID); err != nil {
			return err
		}
		return putReservation(tx, *rec.Reservation)
	case rec.Event != nil:
		return importEvent(tx, *rec.Event)
	}
	return nil
}

// importEvent stores e under its own Seq, unless an event is already there
// (the check made sure it is identical), and moves the sequence past it.
func importEvent(tx *bbolt.Tx, e storage.Event) error {
	b := tx.Bucket(bucketEvents)
	if b.Get(seqKey(e.Seq)) != nil {
		return nil
	}
	if e.Seq > b.Sequence() {
		if err := b.SetSequence(e.Seq); err != nil {
			return err
		}
	}
	return putEvent(tx, e)
}

// txView is a transaction as import checks read it.
type txView struct{ tx *bbolt.Tx }

func (v txView) Binding(_ context.Context, repo, tag string) (storage.Binding, bool, error) {
	return getBinding(v.tx, repo, tag)
}

func (v txView) Reservation(_ context.Context, id string) (storage.Reservation, bool, error) {
	raw := v.tx.Bucket(bucketReservations).Get([]byte(id))
	if raw == nil {
		return storage.Reservation{}, false, nil
	}
	r, err := decodeReservation([]byte(id), raw)
	return r, err == nil, err
}

func (v txView) Manifest(_ context.Context, repo string, d digest.Digest) (storage.Manifest, bool, error) {
	k := key(repo, string(d))
	raw := v.tx.Bucket(bucketManifests).Get(k)
	if raw == nil {
		return storage.Manifest{}, false, nil
	}
	m, err := decodeManifest(k, raw)
	return m, err == nil, err
}

func (v txView) Event(_ context.Context, seq uint64) (storage.Event, bool, error) {
	k := seqKey(seq)
	raw := v.tx.Bucket(bucketEvents).Get(k)
	if raw == nil {
		return storage.Event{}, false, nil
	}
	var e storage.Event
	if err := json.Unmarshal(raw, &e); err != nil {
		return storage.Event{}, false, fmt.Errorf("event %d: %w: %w", seq, storage.ErrCorrupt, err)
	}
	return e, true, nil
}
