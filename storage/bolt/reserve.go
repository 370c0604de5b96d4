package bolt

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// Reserve implements storage.Ledger in one transaction.
func (l *Ledger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	r, err := storage.NormalizeReservation(r)
	if err != nil {
		return storage.Reservation{}, err
	}
	if r.ID == "" {
		if r.ID, err = storage.NewReservationID(); err != nil {
			return storage.Reservation{}, err
		}
	}
	err = l.update(ctx, func(tx *bbolt.Tx) error {
		r.Removes = nil
		if tx.Bucket(bucketReservations).Get([]byte(r.ID)) != nil {
			return fmt.Errorf("reservation %s exists: %w", r.ID, storage.ErrInvalid)
		}
		if r.RemovesTags() {
			live, err := liveBindingsOf(tx, r.Repo, r.Digest)
			if err != nil {
				return err
			}
			for _, b := range live {
				if err := checkTagHeld(tx, r, b.Tag); err != nil {
					return fmt.Errorf("reserve %s@%s (tag %s): %w", r.Repo, r.Digest, b.Tag, err)
				}
				r.Removes = append(r.Removes, b.Tag)
			}
		}
		for _, tag := range r.Tags {
			if err := checkExpect(tx, r.Repo, tag, r.Expect[tag]); err != nil {
				return fmt.Errorf("reserve %s:%s: %w", r.Repo, tag, err)
			}
			if err := checkTagHeld(tx, r, tag); err != nil {
				return fmt.Errorf("reserve %s:%s: %w", r.Repo, tag, err)
			}
		}
		for _, d := range r.Holds() {
			if err := checkDigestHeld(tx, r, d); err != nil {
				return fmt.Errorf("reserve %s@%s: %w", r.Repo, d, err)
			}
		}
		// Read the clock inside the transaction, so that reservations'
		// CreatedAt follow the order in which they were stored.
		r.CreatedAt = l.clock()
		return putReservation(tx, r)
	})
	if err != nil {
		return storage.Reservation{}, err
	}
	return r, nil
}

// Commit implements storage.Ledger in one transaction, which records the
// manifests too, so a push costs one write here rather than two.
func (l *Ledger) Commit(ctx context.Context, reservationID string, bindings []storage.Binding, events []storage.Event, manifests ...storage.Manifest) error {
	bindings, err := storage.NormalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	for _, m := range manifests {
		if err := m.Validate(); err != nil {
			return err
		}
	}
	return l.update(ctx, func(tx *bbolt.Tx) error {
		r, found, err := deleteReservation(tx, reservationID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("commit reservation %s: %w", reservationID, storage.ErrNotFound)
		}
		if r.IsDelete() {
			return fmt.Errorf("commit reservation %s: a delete is settled with CommitDelete: %w", reservationID, storage.ErrInvalid)
		}
		for _, b := range bindings {
			if err := l.putBinding(tx, b); err != nil {
				return err
			}
		}
		for _, m := range manifests {
			if err := putManifest(tx, m); err != nil {
				return err
			}
		}
		return l.appendEvents(tx, events)
	})
}

// CommitDelete implements storage.Ledger in one transaction.
func (l *Ledger) CommitDelete(ctx context.Context, reservationID string, ev storage.Event) ([]storage.Binding, error) {
	if ev.Kind == "" {
		ev.Kind = storage.EventDeleted
	}
	var marked []storage.Binding
	err := l.update(ctx, func(tx *bbolt.Tx) error {
		marked = nil
		r, found, err := deleteReservation(tx, reservationID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("commit delete %s: %w", reservationID, storage.ErrNotFound)
		}
		if !r.IsDelete() {
			return fmt.Errorf("commit delete %s: a push is settled with Commit: %w", reservationID, storage.ErrInvalid)
		}
		at := ev.Time
		if at.IsZero() {
			at = l.clock()
		}
		var gone []storage.Binding
		switch {
		case len(r.Tags) > 0:
			b, ok, err := getBinding(tx, r.Repo, r.Tags[0])
			if err != nil {
				return err
			}
			if ok && (!b.Deleted || r.Mode != nil && b.Mode != *r.Mode) {
				if r.Mode != nil {
					b.Mode = *r.Mode
				}
				gone = append(gone, b)
			}
		case !r.Blob:
			if gone, err = liveBindingsOf(tx, r.Repo, r.Digest); err != nil {
				return err
			}
		}
		events := make([]storage.Event, 0, len(gone))
		for _, b := range gone {
			if !b.Deleted {
				b.Deleted, b.DeletedAt = true, at.UTC()
			}
			if err := l.putBinding(tx, b); err != nil {
				return err
			}
			e := ev
			e.Seq, e.Time, e.Repo, e.Tag, e.Digest = 0, at, b.Repo, b.Tag, b.Digest
			events = append(events, e)
			marked = append(marked, b)
		}
		return l.appendEvents(tx, events)
	})
	if err != nil {
		return nil, err
	}
	return marked, nil
}

// Release implements storage.Ledger.
func (l *Ledger) Release(ctx context.Context, reservationID string) error {
	return l.update(ctx, func(tx *bbolt.Tx) error {
		_, _, err := deleteReservation(tx, reservationID)
		return err
	})
}

// Reservation implements storage.Ledger.
func (l *Ledger) Reservation(ctx context.Context, id string) (storage.Reservation, error) {
	var r storage.Reservation
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketReservations).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("reservation %s: %w", id, storage.ErrNotFound)
		}
		var err error
		r, err = decodeReservation([]byte(id), v)
		return err
	})
	return r, err
}

// Reservations implements storage.Ledger.
func (l *Ledger) Reservations(ctx context.Context) ([]storage.Reservation, error) {
	var out []storage.Reservation
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketReservations).ForEach(func(k, v []byte) error {
			r, err := decodeReservation(k, v)
			out = append(out, r)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b storage.Reservation) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// liveBindingsOf returns the live bindings of repo whose Digest is d.
func liveBindingsOf(tx *bbolt.Tx, repo string, d digest.Digest) ([]storage.Binding, error) {
	var out []storage.Binding
	p := prefix(repo, string(d))
	err := forPrefix(tx.Bucket(bucketBindingRefs), p, func(k, _ []byte) (bool, error) {
		b, ok, err := getBinding(tx, repo, string(k[len(p):]))
		if err != nil {
			return false, err
		}
		if ok && b.Digest == d && !b.Deleted {
			out = append(out, b)
		}
		return true, nil
	})
	return out, err
}

func checkExpect(tx *bbolt.Tx, repo, tag string, want storage.Seen) error {
	b, ok, err := getBinding(tx, repo, tag)
	if err != nil {
		return err
	}
	var got storage.Seen
	if ok {
		got = b.Seen()
	}
	if got != want {
		return &storage.ChangedError{Repo: repo, Tag: tag, Expected: want, Actual: got}
	}
	return nil
}

// checkTagHeld returns a *storage.BusyError when another reservation holds tag
// against r.
func checkTagHeld(tx *bbolt.Tx, r storage.Reservation, tag string) error {
	p := prefix(r.Repo, tag)
	return forPrefix(tx.Bucket(bucketReservedTags), p, func(k, v []byte) (bool, error) {
		id := k[len(p):]
		other, err := decodeReservation(id, tx.Bucket(bucketReservations).Get(id))
		if err != nil {
			return false, err
		}
		if r.SharesTag(other) {
			return true, nil // pushes of one digest share a tag
		}
		return false, &storage.BusyError{Repo: r.Repo, Tag: tag, Digest: other.Digest, Holder: other}
	})
}

// checkDigestHeld returns a *storage.BusyError when another reservation holds d
// against r: a delete, or, when r deletes d, any reservation.
func checkDigestHeld(tx *bbolt.Tx, r storage.Reservation, d digest.Digest) error {
	p := prefix(r.Repo, string(d))
	return forPrefix(tx.Bucket(bucketReservedDigs), p, func(k, v []byte) (bool, error) {
		if !r.IsDelete() && storage.ReservationKind(v) != storage.ReserveDelete {
			return true, nil // pushes may depend on the same content
		}
		id := k[len(p):]
		other, err := decodeReservation(id, tx.Bucket(bucketReservations).Get(id))
		if err != nil {
			return false, err
		}
		return false, &storage.BusyError{Repo: r.Repo, Digest: d, Holder: other}
	})
}

// putReservation stores r and its tag and digest index entries.
func putReservation(tx *bbolt.Tx, r storage.Reservation) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reservation %s: %w", r.ID, err)
	}
	if err := tx.Bucket(bucketReservations).Put([]byte(r.ID), v); err != nil {
		return err
	}
	for _, tag := range r.HeldTags() {
		if err := tx.Bucket(bucketReservedTags).Put(key(r.Repo, tag, r.ID), []byte(r.Digest)); err != nil {
			return err
		}
	}
	for _, d := range r.Holds() {
		if err := tx.Bucket(bucketReservedDigs).Put(key(r.Repo, string(d), r.ID), []byte(kindOf(r))); err != nil {
			return err
		}
	}
	return nil
}

// kindOf is r's Kind, with the zero Kind spelled out.
func kindOf(r storage.Reservation) storage.ReservationKind {
	if r.Kind == "" {
		return storage.ReservePush
	}
	return r.Kind
}

// deleteReservation removes reservation id and its index entries and
// returns it, reporting whether it existed.
func deleteReservation(tx *bbolt.Tx, id string) (storage.Reservation, bool, error) {
	b := tx.Bucket(bucketReservations)
	v := b.Get([]byte(id))
	if v == nil {
		return storage.Reservation{}, false, nil
	}
	r, err := decodeReservation([]byte(id), v)
	if err != nil {
		return storage.Reservation{}, false, err
	}
	for _, tag := range r.HeldTags() {
		if err := tx.Bucket(bucketReservedTags).Delete(key(r.Repo, tag, r.ID)); err != nil {
			return storage.Reservation{}, false, err
		}
	}
	for _, d := range r.Holds() {
		if err := tx.Bucket(bucketReservedDigs).Delete(key(r.Repo, string(d), r.ID)); err != nil {
			return storage.Reservation{}, false, err
		}
	}
	return r, true, b.Delete([]byte(id))
}

// indexReservedDigests adds the digest index entries of reservations stored
// before the index existed.
func indexReservedDigests(tx *bbolt.Tx) error {
	digs := tx.Bucket(bucketReservedDigs)
	return tx.Bucket(bucketReservations).ForEach(func(k, v []byte) error {
		r, err := decodeReservation(k, v)
		if err != nil {
			return err
		}
		for _, d := range r.Holds() {
			if digs.Get(key(r.Repo, string(d), r.ID)) == nil {
				if err := digs.Put(key(r.Repo, string(d), r.ID), []byte(kindOf(r))); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func decodeReservation(k, v []byte) (storage.Reservation, error) {
	if v == nil {
		return storage.Reservation{}, fmt.Errorf("reservation %s is indexed but missing: %w", k, storage.ErrCorrupt)
	}
	var r storage.Reservation
	if err := json.Unmarshal(v, &r); err != nil {
		return storage.Reservation{}, fmt.Errorf("reservation %s: %w: %w", k, storage.ErrCorrupt, err)
	}
	if r.Kind == "" {
		r.Kind = storage.ReservePush
	}
	return r, nil
}
