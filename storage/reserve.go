package storage

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Reserve stores r, in one transaction, if nothing holds what it needs.
//
// For each tag in r.Tags it first compares the binding with r.Expect[tag]
// (absent means no binding): the digest, the recorded mode and the tombstone
// flag must be exactly what the caller saw, or Reserve returns an error
// wrapping *ChangedError (and so ErrChanged) naming the tag. It then returns an
// error wrapping *BusyError (and so ErrBusy) when another pending reservation
// holds what r needs (see Reservation): for a push, a tag another push holds
// with a different digest, a tag a delete holds, or a delete of Digest or of
// any digest in Closure; for a delete, any reservation of its tag, or, by
// digest, any push that depends on Digest, any other delete of it and, for
// a manifest, any reservation of a tag bound to it (which it then holds, in
// Removes).
//
// On success it stores the reservation with r.ID, or a new random ID when r.ID
// is empty, and CreatedAt set to Options.Now(), and returns it. Nothing is
// stored on failure.
func (l *Ledger) Reserve(ctx context.Context, r Reservation) (Reservation, error) {
	if r.Kind == "" {
		r.Kind = ReservePush
	}
	if err := checkReservation(r); err != nil {
		return Reservation{}, err
	}
	if r.ID == "" {
		id, err := NewReservationID()
		if err != nil {
			return Reservation{}, err
		}
		r.ID = id
	}
	r.Tags = slices.Clone(r.Tags)
	r.Closure = normalizeClosure(r.Digest, r.Closure)
	err := l.update(ctx, func(tx *bolt.Tx) error {
		r.Removes = nil
		if tx.Bucket(bucketReservations).Get([]byte(r.ID)) != nil {
			return fmt.Errorf("reservation %s exists: %w", r.ID, ErrInvalid)
		}
		if r.IsDelete() && len(r.Tags) == 0 && !r.Blob {
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
		for _, d := range heldDigests(r) {
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
		return Reservation{}, err
	}
	return r, nil
}

// Commit completes push reservation reservationID in one transaction: it
// deletes the reservation, upserts bindings (each replaces its tag's whole
// record and index entries) and appends events (Seq and Time filled where
// zero). It returns an error wrapping ErrNotFound, and writes nothing, when
// the reservation no longer exists, and one wrapping ErrInvalid when it is a
// delete. Manifests given are recorded in the same transaction, so a push
// costs one write here rather than two.
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
		r, found, err := deleteReservation(tx, reservationID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("commit reservation %s: %w", reservationID, ErrNotFound)
		}
		if r.IsDelete() {
			return fmt.Errorf("commit reservation %s: a delete is settled with CommitDelete: %w", reservationID, ErrInvalid)
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

// CommitDelete completes delete reservation reservationID after the upstream
// removed what it names, in one transaction: it deletes the reservation and
// marks as deleted, at ev.Time (Options.Now() when zero), the bindings the
// upstream delete removed: the reserved tag (recording the reservation's Mode
// when it has one), or every live binding whose Digest is the reserved
// manifest; a blob delete marks none. It appends one event per binding marked,
// made from ev with the binding's tag and digest, and returns those bindings
// as stored. It returns an error wrapping ErrNotFound, and writes nothing, when
// the reservation no longer exists, and one wrapping ErrInvalid when it is a
// push.
func (l *Ledger) CommitDelete(ctx context.Context, reservationID string, ev Event) ([]Binding, error) {
	if ev.Kind == "" {
		ev.Kind = EventDeleted
	}
	var marked []Binding
	err := l.update(ctx, func(tx *bolt.Tx) error {
		marked = nil
		r, found, err := deleteReservation(tx, reservationID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("commit delete %s: %w", reservationID, ErrNotFound)
		}
		if !r.IsDelete() {
			return fmt.Errorf("commit delete %s: a push is settled with Commit: %w", reservationID, ErrInvalid)
		}
		at := ev.Time
		if at.IsZero() {
			at = l.clock()
		}
		var gone []Binding
		switch {
		case len(r.Tags) > 0:
			b, ok, err := getBinding(tx, r.Repo, r.Tags[0])
			if err != nil {
				return err
			}
			if ok && (!b.Deleted || r.Mode != "" && b.Mode != r.Mode) {
				if r.Mode != "" {
					b.Mode = r.Mode
				}
				gone = append(gone, b)
			}
		case !r.Blob:
			if gone, err = liveBindingsOf(tx, r.Repo, r.Digest); err != nil {
				return err
			}
		}
		events := make([]Event, 0, len(gone))
		for _, b := range gone {
			if !b.Deleted {
				b.Deleted, b.DeletedAt = true, at.UTC()
			}
			if err := putBinding(tx, b); err != nil {
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

// Release deletes reservation reservationID, freeing what it held. Releasing
// a reservation that is already gone is not an error.
func (l *Ledger) Release(ctx context.Context, reservationID string) error {
	return l.update(ctx, func(tx *bolt.Tx) error {
		_, _, err := deleteReservation(tx, reservationID)
		return err
	})
}

// Reservation returns pending reservation id, or an error wrapping
// ErrNotFound.
func (l *Ledger) Reservation(ctx context.Context, id string) (Reservation, error) {
	var r Reservation
	err := l.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketReservations).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("reservation %s: %w", id, ErrNotFound)
		}
		var err error
		r, err = decodeReservation([]byte(id), v)
		return err
	})
	return r, err
}

// Reservations returns the pending reservations, oldest first. After a crash
// these are the requests whose outcome must be reconciled with the upstream.
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

// liveBindingsOf returns the live bindings of repo whose Digest is d.
func liveBindingsOf(tx *bolt.Tx, repo string, d digest.Digest) ([]Binding, error) {
	var out []Binding
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

func checkExpect(tx *bolt.Tx, repo, tag string, want Seen) error {
	b, ok, err := getBinding(tx, repo, tag)
	if err != nil {
		return err
	}
	var got Seen
	if ok {
		got = b.Seen()
	}
	if got != want {
		return &ChangedError{Repo: repo, Tag: tag, Expected: want, Actual: got}
	}
	return nil
}

// checkTagHeld returns a *BusyError when another reservation holds tag
// against r.
func checkTagHeld(tx *bolt.Tx, r Reservation, tag string) error {
	p := prefix(r.Repo, tag)
	return forPrefix(tx.Bucket(bucketReservedTags), p, func(k, v []byte) (bool, error) {
		id := k[len(p):]
		other, err := decodeReservation(id, tx.Bucket(bucketReservations).Get(id))
		if err != nil {
			return false, err
		}
		if !r.IsDelete() && !other.IsDelete() && digest.Digest(v) == r.Digest {
			return true, nil // pushes of one digest share a tag
		}
		return false, &BusyError{Repo: r.Repo, Tag: tag, Digest: other.Digest, Holder: other}
	})
}

// checkDigestHeld returns a *BusyError when another reservation holds d
// against r: a delete, or, when r deletes d, any reservation.
func checkDigestHeld(tx *bolt.Tx, r Reservation, d digest.Digest) error {
	p := prefix(r.Repo, string(d))
	return forPrefix(tx.Bucket(bucketReservedDigs), p, func(k, v []byte) (bool, error) {
		if !r.IsDelete() && ReservationKind(v) != ReserveDelete {
			return true, nil // pushes may depend on the same content
		}
		id := k[len(p):]
		other, err := decodeReservation(id, tx.Bucket(bucketReservations).Get(id))
		if err != nil {
			return false, err
		}
		return false, &BusyError{Repo: r.Repo, Digest: d, Holder: other}
	})
}

// heldTags lists the tags r holds: its Tags and, for a delete of a
// manifest, the tags it removes.
func heldTags(r Reservation) []string {
	if len(r.Removes) == 0 {
		return r.Tags
	}
	return append(slices.Clone(r.Tags), r.Removes...)
}

// heldDigests lists the digests r holds or depends on: a push's Digest and
// Closure, a delete by digest's Digest, nothing for a delete by tag.
func heldDigests(r Reservation) []digest.Digest {
	switch {
	case !r.IsDelete():
		return append([]digest.Digest{r.Digest}, r.Closure...)
	case len(r.Tags) == 0:
		return []digest.Digest{r.Digest}
	}
	return nil
}

// putReservation stores r and its tag and digest index entries.
func putReservation(tx *bolt.Tx, r Reservation) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reservation %s: %w", r.ID, err)
	}
	if err := tx.Bucket(bucketReservations).Put([]byte(r.ID), v); err != nil {
		return err
	}
	for _, tag := range heldTags(r) {
		if err := tx.Bucket(bucketReservedTags).Put(key(r.Repo, tag, r.ID), []byte(r.Digest)); err != nil {
			return err
		}
	}
	for _, d := range heldDigests(r) {
		if err := tx.Bucket(bucketReservedDigs).Put(key(r.Repo, string(d), r.ID), []byte(kindOf(r))); err != nil {
			return err
		}
	}
	return nil
}

// kindOf is r's Kind, with the zero Kind spelled out.
func kindOf(r Reservation) ReservationKind {
	if r.Kind == "" {
		return ReservePush
	}
	return r.Kind
}

// deleteReservation removes reservation id and its index entries and
// returns it, reporting whether it existed.
func deleteReservation(tx *bolt.Tx, id string) (Reservation, bool, error) {
	b := tx.Bucket(bucketReservations)
	v := b.Get([]byte(id))
	if v == nil {
		return Reservation{}, false, nil
	}
	r, err := decodeReservation([]byte(id), v)
	if err != nil {
		return Reservation{}, false, err
	}
	for _, tag := range heldTags(r) {
		if err := tx.Bucket(bucketReservedTags).Delete(key(r.Repo, tag, r.ID)); err != nil {
			return Reservation{}, false, err
		}
	}
	for _, d := range heldDigests(r) {
		if err := tx.Bucket(bucketReservedDigs).Delete(key(r.Repo, string(d), r.ID)); err != nil {
			return Reservation{}, false, err
		}
	}
	return r, true, b.Delete([]byte(id))
}

// indexReservedDigests adds the digest index entries of reservations stored
// before the index existed.
func indexReservedDigests(tx *bolt.Tx) error {
	digs := tx.Bucket(bucketReservedDigs)
	return tx.Bucket(bucketReservations).ForEach(func(k, v []byte) error {
		r, err := decodeReservation(k, v)
		if err != nil {
			return err
		}
		for _, d := range heldDigests(r) {
			if digs.Get(key(r.Repo, string(d), r.ID)) == nil {
				if err := digs.Put(key(r.Repo, string(d), r.ID), []byte(kindOf(r))); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func decodeReservation(k, v []byte) (Reservation, error) {
	if v == nil {
		return Reservation{}, fmt.Errorf("reservation %s is indexed but missing: %w", k, ErrCorrupt)
	}
	var r Reservation
	if err := json.Unmarshal(v, &r); err != nil {
		return Reservation{}, fmt.Errorf("reservation %s: %w: %w", k, ErrCorrupt, err)
	}
	if r.Kind == "" {
		r.Kind = ReservePush
	}
	return r, nil
}

func checkReservation(r Reservation) error {
	if err := checkName("repository", r.Repo); err != nil {
		return err
	}
	if r.ID != "" && !validID(r.ID) {
		return fmt.Errorf("reservation id %q: want 32 lowercase hex digits: %w", r.ID, ErrInvalid)
	}
	switch r.Kind {
	case ReservePush:
		if len(r.Tags) == 0 {
			return fmt.Errorf("push reservation for %s has no tags: %w", r.Repo, ErrInvalid)
		}
		if r.Blob || r.Mode != "" {
			return fmt.Errorf("push reservation for %s: Blob and Mode are for deletes: %w", r.Repo, ErrInvalid)
		}
	case ReserveDelete:
		if len(r.Tags) > 1 || len(r.Closure) > 0 || r.Blob && len(r.Tags) > 0 {
			return fmt.Errorf("delete reservation for %s: one tag, a manifest or a blob, and no closure: %w", r.Repo, ErrInvalid)
		}
		switch r.Mode {
		case "", ModeImmutable, ModeMutable, ModeWarn:
		default:
			return fmt.Errorf("delete reservation for %s: mode %q: %w", r.Repo, r.Mode, ErrInvalid)
		}
	default:
		return fmt.Errorf("reservation for %s: kind %q: %w", r.Repo, r.Kind, ErrInvalid)
	}
	if len(r.Removes) > 0 && (!r.IsDelete() || len(r.Tags) > 0 || r.Blob) {
		return fmt.Errorf("reservation for %s: only a delete of a manifest by digest removes tags: %w", r.Repo, ErrInvalid)
	}
	for _, tag := range heldTags(r) {
		if err := checkName("tag", tag); err != nil {
			return err
		}
	}
	for _, d := range r.Closure {
		if err := checkDigest("reservation closure", d); err != nil {
			return err
		}
	}
	if r.IsDelete() && len(r.Tags) > 0 && r.Digest == "" {
		return nil // a tag the ledger never bound
	}
	return checkDigest("reservation digest", r.Digest)
}

// normalizeClosure drops d and duplicates from closure.
func normalizeClosure(d digest.Digest, closure []digest.Digest) []digest.Digest {
	if len(closure) == 0 {
		return nil
	}
	seen := map[digest.Digest]bool{d: true}
	out := make([]digest.Digest, 0, len(closure))
	for _, c := range closure {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// NewReservationID returns 16 random bytes, hex encoded: an ID a caller may
// choose before Reserve, so that it can mark the reservation as its own
// before the ledger stores it.
func NewReservationID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reservation id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// InDoubt reports whether r's request may still land on the upstream at
// now: before its Deadline plus margin. A reservation without a Deadline is
// in doubt until margin after it was made.
func (r Reservation) InDoubt(now time.Time, margin time.Duration) bool {
	return now.Before(r.DoubtEnds(margin))
}

// DoubtEnds is when r's request can no longer land on the upstream: margin
// after its Deadline, or after CreatedAt when it has none.
func (r Reservation) DoubtEnds(margin time.Duration) time.Time {
	end := r.Deadline
	if end.IsZero() {
		end = r.CreatedAt
	}
	return end.Add(margin)
}
