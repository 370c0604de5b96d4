package storage

import (
	"crypto/rand"
	_ "crypto/sha256" // digest.Validate needs the algorithms registered
	_ "crypto/sha512"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taglock/taglock/policy"

	digest "github.com/opencontainers/go-digest"
)

// What a backend may store, and how it normalizes records first. Every
// backend calls these before it writes, so that all of them refuse the same
// records with the same errors (wrapping ErrInvalid) and store the same
// normalized values.

// NormalizeBindings validates bindings and returns copies whose Closure has
// no duplicates and not the binding's own Digest. It fails with an error
// wrapping ErrInvalid on an empty or NUL-containing repository or tag, a
// malformed digest or an unknown mode.
func NormalizeBindings(in []Binding) ([]Binding, error) {
	out := make([]Binding, len(in))
	for i, b := range in {
		if err := checkName("repository", b.Repo); err != nil {
			return nil, err
		}
		if err := checkName("tag", b.Tag); err != nil {
			return nil, err
		}
		if err := checkDigest("digest of "+b.Repo+":"+b.Tag, b.Digest); err != nil {
			return nil, err
		}
		if !validMode(b.Mode) {
			return nil, fmt.Errorf("binding %s:%s: mode %v: %w", b.Repo, b.Tag, b.Mode, ErrInvalid)
		}
		closure := make([]digest.Digest, 0, len(b.Closure))
		seen := map[digest.Digest]bool{b.Digest: true}
		for _, d := range b.Closure {
			if err := checkDigest("closure of "+b.Repo+":"+b.Tag, d); err != nil {
				return nil, err
			}
			if !seen[d] {
				seen[d] = true
				closure = append(closure, d)
			}
		}
		if len(closure) == 0 {
			closure = nil
		}
		b.Closure = closure
		out[i] = b
	}
	return out, nil
}

// RefDigests lists the digests a binding is found under by Referencing: its
// Digest and every digest of its Closure.
func (b Binding) RefDigests() []digest.Digest {
	return append([]digest.Digest{b.Digest}, b.Closure...)
}

// ValidateEvents checks events before they are stored: every event needs a
// kind, and no kind, repository or tag may contain NUL. It returns an error
// wrapping ErrInvalid.
func ValidateEvents(events []Event) error {
	for _, e := range events {
		if err := checkName("event kind", string(e.Kind)); err != nil {
			return err
		}
		if err := checkKey("event repository", e.Repo); err != nil {
			return err
		}
		if err := checkKey("event tag", e.Tag); err != nil {
			return err
		}
	}
	return nil
}

// NormalizeReservation validates r as Reserve takes it and returns a copy
// with Kind spelled out (ReservePush for ""), its own Tags slice and a
// normalized Closure (no duplicates, not Digest). It does not assign an ID.
// It fails with an error wrapping ErrInvalid.
func NormalizeReservation(r Reservation) (Reservation, error) {
	if r.Kind == "" {
		r.Kind = ReservePush
	}
	if err := checkReservation(r); err != nil {
		return Reservation{}, err
	}
	r.Tags = slices.Clone(r.Tags)
	r.Closure = normalizeClosure(r.Digest, r.Closure)
	return r, nil
}

// Holds lists the digests r holds or depends on: a push's Digest and
// Closure, a delete by digest's Digest, nothing for a delete by tag.
func (r Reservation) Holds() []digest.Digest {
	switch {
	case !r.IsDelete():
		return append([]digest.Digest{r.Digest}, r.Closure...)
	case len(r.Tags) == 0:
		return []digest.Digest{r.Digest}
	}
	return nil
}

// HeldTags lists the tags r holds: its Tags and, for a delete of a manifest
// by digest, the tags it removes (Removes).
func (r Reservation) HeldTags() []string {
	if len(r.Removes) == 0 {
		return r.Tags
	}
	return append(slices.Clone(r.Tags), r.Removes...)
}

// RemovesTags reports whether Reserve must find the tags r removes and hold
// them: r deletes a manifest by digest.
func (r Reservation) RemovesTags() bool { return r.IsDelete() && len(r.Tags) == 0 && !r.Blob }

// SharesTag reports whether r may be reserved while holder, another pending
// reservation, holds one of r's tags: only when both are pushes of the same
// digest.
func (r Reservation) SharesTag(holder Reservation) bool {
	return !r.IsDelete() && !holder.IsDelete() && holder.Digest == r.Digest
}

// SharesDigest reports whether r may be reserved while holder, another
// pending reservation, holds a digest r holds too (see Holds): only when both
// are pushes, which may depend on the same content.
func (r Reservation) SharesDigest(holder Reservation) bool {
	return !r.IsDelete() && !holder.IsDelete()
}

// InDoubt reports whether r's request may still land on the upstream at
// now: before its Deadline plus margin. A reservation without a Deadline is
// in doubt until margin after it was made.
func (r Reservation) InDoubt(now time.Time, margin time.Duration) bool {
	return now.Before(r.DoubtEnds(margin))
}

// MaxRequestWindow is the longest a request to the upstream is taken to
// run: a reservation's Deadline is never believed beyond CreatedAt plus
// this, and an import that says otherwise is refused.
const MaxRequestWindow = time.Hour

// DoubtEnds is when r's request can no longer land on the upstream: margin
// after its Deadline (at most MaxRequestWindow after CreatedAt), or after
// CreatedAt when it has none.
func (r Reservation) DoubtEnds(margin time.Duration) time.Time {
	end := r.Deadline
	if end.IsZero() {
		end = r.CreatedAt
	}
	if limit := r.CreatedAt.Add(MaxRequestWindow); !r.CreatedAt.IsZero() && end.After(limit) {
		end = limit
	}
	return end.Add(margin)
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

// Validate checks that m can be stored: a repository without NUL and a
// well-formed digest. It returns an error wrapping ErrInvalid.
func (m Manifest) Validate() error {
	if err := checkName("repository", m.Repo); err != nil {
		return err
	}
	return checkDigest("manifest digest", m.Digest)
}

// minPull and maxPull bound the times a pull record can hold (Unix
// nanoseconds in an int64).
var (
	minPull = time.Unix(0, 0)
	maxPull = time.Unix(0, 1<<63-1)
)

// Validate checks that p can be stored: a repository without NUL, a
// well-formed digest and a time from 1970 to 2262 (Unix nanoseconds in an
// int64). It returns an error wrapping ErrInvalid.
func (p Pull) Validate() error {
	if err := checkName("repository", p.Repo); err != nil {
		return err
	}
	if err := checkDigest("pulled digest", p.Digest); err != nil {
		return err
	}
	if p.At.Before(minPull) || p.At.After(maxPull) {
		return fmt.Errorf("pull of %s@%s at %s: out of range: %w", p.Repo, p.Digest, p.At, ErrInvalid)
	}
	return nil
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
		if r.Blob || r.Mode != nil {
			return fmt.Errorf("push reservation for %s: Blob and Mode are for deletes: %w", r.Repo, ErrInvalid)
		}
	case ReserveDelete:
		if len(r.Tags) > 1 || len(r.Closure) > 0 || r.Blob && len(r.Tags) > 0 {
			return fmt.Errorf("delete reservation for %s: one tag, a manifest or a blob, and no closure: %w", r.Repo, ErrInvalid)
		}
		if r.Mode != nil && !validMode(*r.Mode) {
			return fmt.Errorf("delete reservation for %s: mode %v: %w", r.Repo, *r.Mode, ErrInvalid)
		}
	default:
		return fmt.Errorf("reservation for %s: kind %q: %w", r.Repo, r.Kind, ErrInvalid)
	}
	if len(r.Removes) > 0 && (!r.IsDelete() || len(r.Tags) > 0 || r.Blob) {
		return fmt.Errorf("reservation for %s: only a delete of a manifest by digest removes tags: %w", r.Repo, ErrInvalid)
	}
	for _, tag := range r.HeldTags() {
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

// nul separates the parts of the keys backends store records under, so no
// name may contain it.
const nul = "\x00"

// checkName validates a repository, tag or kind used in a key.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s: %w", what, ErrInvalid)
	}
	if strings.Contains(s, nul) {
		return fmt.Errorf("%s %q contains NUL: %w", what, s, ErrInvalid)
	}
	return nil
}

// checkKey validates an optional key part: it may be empty but not hold NUL.
func checkKey(what, s string) error {
	if s == "" {
		return nil
	}
	return checkName(what, s)
}

// checkDigest validates a digest used in a key.
func checkDigest(what string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%s %q: %w: %w", what, d, ErrInvalid, err)
	}
	return nil
}

// validMode reports whether m is one of the policy's modes.
func validMode(m policy.Mode) bool {
	switch m {
	case policy.Immutable, policy.Mutable, policy.Warn:
		return true
	}
	return false
}
