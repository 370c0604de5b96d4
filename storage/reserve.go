package storage

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Reserve holds r.Tags of r.Repo for a push of r.Digest, in one transaction.
//
// For each tag it first compares the live binding digest with r.Expect[tag]
// (absent means ""). The live binding digest is the binding's Digest, or ""
// when there is no binding or the binding is a tombstone whose Mode is not
// immutable; an immutable tombstone keeps its Digest. On a mismatch Reserve
// returns an error wrapping *ChangedError (and so ErrChanged) naming the tag.
// It then returns an error wrapping *BusyError (and so ErrBusy) if another
// pending reservation holds the tag with a different digest; reservations of
// the same digest coexist.
//
// On success it stores the reservation with a new random ID and CreatedAt set
// to Options.Now(), and returns it. Nothing is stored on failure.
func (l *Ledger) Reserve(ctx context.Context, r Reservation) (Reservation, error) {
	if err := checkReservation(r); err != nil {
		return Reservation{}, err
	}
	id, err := newID()
	if err != nil {
		return Reservation{}, err
	}
	r.ID = id
	r.Tags = slices.Clone(r.Tags)
	err = l.update(ctx, func(tx *bolt.Tx) error {
		for _, tag := range r.Tags {
			if err := checkExpect(tx, r.Repo, tag, r.Expect[tag]); err != nil {
				return fmt.Errorf("reserve %s:%s: %w", r.Repo, tag, err)
			}
			if err := checkBusy(tx, r.Repo, tag, r.Digest); err != nil {
				return fmt.Errorf("reserve %s:%s: %w", r.Repo, tag, err)
			}
		}
		// Read the clock inside the transaction, so that reservations'
		// CreatedAt follow the order in which they were stored.
		r.CreatedAt = l.clock()
		return putReservation(tx, r)
	})
	if err != nil {
		return Reservation{}, err
	}
	return r, nil
}

// Commit completes reservation reservationID in one transaction: it deletes
// the reservation, upserts bindings (each replaces its tag's whole record
// and index entries) and appends events (Seq and Time filled where zero). It
// returns an error wrapping ErrNotFound, and writes nothing, when the
// reservation no longer exists. Manifests given are recorded in the same
// transaction, so a push costs one write here rather than two.
func (l *Ledger) Commit(ctx context.Context, reservationID string, bindings []Binding, events []Event, manifests ...Manifest) error {
	bindings, err := normalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := checkEvents(events); err != nil {
		return err
	}
	for _, m := range manifests {
		if err := checkManifest(m); err != nil {
			return err
		}
	}
	return l.update(ctx, func(tx *bolt.Tx) error {
		found, err := deleteReservation(tx, reservationID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("commit reservation %s: %w", reservationID, ErrNotFound)
		}
		for _, b := range bindings {
			if err := putBinding(tx, b); err != nil {
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

// Release deletes reservation reservationID, freeing its tags. Releasing a
// reservation that is already gone is not an error.
func (l *Ledger) Release(ctx context.Context, reservationID string) error {
	return l.update(ctx, func(tx *bolt.Tx) error {
		_, err := deleteReservation(tx, reservationID)
		return err
	})
}

// Reservations returns the pending reservations, oldest first. After a crash
// these are the pushes whose outcome must be reconciled with the upstream.
func (l *Ledger) Reservations(ctx context.Context) ([]Reservation, error) {
	var out []Reservation
	err := l.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReservations).ForEach(func(k, v []byte) error {
			r, err := decodeReservation(k, v)
			out = append(out, r)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Reservation) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// liveDigest returns the digest a tag is bound to for compare-and-swap
// purposes: "" when unbound or when a non-immutable tombstone.
func liveDigest(tx *bolt.Tx, repo, tag string) (digest.Digest, error) {
	b, ok, err := getBinding(tx, repo, tag)
	if err != nil || !ok {
		return "", err
	}
	if b.Deleted && b.Mode != ModeImmutable {
		return "", nil
	}
	return b.Digest, nil
}

func checkExpect(tx *bolt.Tx, repo, tag string, want digest.Digest) error {
	got, err := liveDigest(tx, repo, tag)
	if err != nil {
		return err
	}
	if got != want {
		return &ChangedError{Repo: repo, Tag: tag, Expected: want, Actual: got}
	}
	return nil
}

func checkBusy(tx *bolt.Tx, repo, tag string, d digest.Digest) error {
	p := prefix(repo, tag)
	return forPrefix(tx.Bucket(bucketReservedTags), p, func(k, v []byte) (bool, error) {
		if digest.Digest(v) == d {
			return true, nil
		}
		id := k[len(p):]
		other, err := decodeReservation(id, tx.Bucket(bucketReservations).Get(id))
		if err != nil {
			return false, err
		}
		return false, &BusyError{Repo: repo, Tag: tag, Digest: digest.Digest(v), Since: other.CreatedAt}
	})
}

// putReservation stores r and its tag index entries.
func putReservation(tx *bolt.Tx, r Reservation) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reservation %s: %w", r.ID, err)
	}
	if err := tx.Bucket(bucketReservations).Put([]byte(r.ID), v); err != nil {
		return err
	}
	for _, tag := range r.Tags {
		if err := tx.Bucket(bucketReservedTags).Put(key(r.Repo, tag, r.ID), []byte(r.Digest)); err != nil {
			return err
		}
	}
	return nil
}

// deleteReservation removes reservation id and its tag index entries and
// reports whether it existed.
func deleteReservation(tx *bolt.Tx, id string) (bool, error) {
	b := tx.Bucket(bucketReservations)
	v := b.Get([]byte(id))
	if v == nil {
		return false, nil
	}
	r, err := decodeReservation([]byte(id), v)
	if err != nil {
		return false, err
	}
	for _, tag := range r.Tags {
		if err := tx.Bucket(bucketReservedTags).Delete(key(r.Repo, tag, r.ID)); err != nil {
			return false, err
		}
	}
	return true, b.Delete([]byte(id))
}

func decodeReservation(k, v []byte) (Reservation, error) {
	if v == nil {
		return Reservation{}, fmt.Errorf("reservation %s is indexed but missing: %w", k, ErrCorrupt)
	}
	var r Reservation
	if err := json.Unmarshal(v, &r); err != nil {
		return Reservation{}, fmt.Errorf("reservation %s: %w: %w", k, ErrCorrupt, err)
	}
	return r, nil
}

func checkReservation(r Reservation) error {
	if err := checkName("repository", r.Repo); err != nil {
		return err
	}
	if len(r.Tags) == 0 {
		return fmt.Errorf("reservation for %s has no tags: %w", r.Repo, ErrInvalid)
	}
	for _, tag := range r.Tags {
		if err := checkName("tag", tag); err != nil {
			return err
		}
	}
	return checkDigest("reservation digest", r.Digest)
}

// newID returns 16 random bytes, hex encoded.
func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reservation id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
