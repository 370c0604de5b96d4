package storage

import (
	"errors"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
)

var (
	// ErrNotFound means there is no such binding, manifest or reservation.
	ErrNotFound = errors.New("not found")

	// ErrBusy means another pending reservation holds a tag with a
	// different digest. Errors wrapping it are *BusyError values.
	ErrBusy = errors.New("tag reserved by another push")

	// ErrChanged means a tag's live binding is no longer the one the caller
	// expected when it decided (the compare-and-swap in Reserve failed).
	// Errors wrapping it are *ChangedError values.
	ErrChanged = errors.New("binding changed")

	// ErrLocked means Open could not get the ledger file's lock within
	// Options.LockTimeout: another process (or another Ledger in this one)
	// has it open.
	ErrLocked = errors.New("ledger is locked by another process")

	// ErrCorrupt means Check found a problem, or Open found a file that is
	// not a ledger this version understands.
	ErrCorrupt = errors.New("ledger is corrupt")

	// ErrInvalid means a record passed to the ledger cannot be stored: an
	// empty or NUL-containing repository, tag or kind, a malformed digest, an
	// unknown mode, or an event sequence that is not new.
	ErrInvalid = errors.New("invalid ledger record")

	// ErrReadOnly means a write was attempted on a ledger opened with
	// Options.ReadOnly.
	ErrReadOnly = errors.New("ledger is read-only")
)

// BusyError is the error Reserve returns (wrapped) when another pending
// reservation holds one of the tags with a different digest. It unwraps to
// ErrBusy.
type BusyError struct {
	Repo   string
	Tag    string
	Digest digest.Digest // the digest the other reservation is pushing
	Since  time.Time     // when the other reservation was made
}

// Error describes the conflicting reservation.
func (e *BusyError) Error() string {
	return fmt.Sprintf("%s:%s is being pushed as %s since %s: %v",
		e.Repo, e.Tag, e.Digest, e.Since.UTC().Format(time.RFC3339), ErrBusy)
}

// Unwrap returns ErrBusy.
func (e *BusyError) Unwrap() error { return ErrBusy }

// ChangedError is the error Reserve returns (wrapped) when a tag's live
// binding digest is not the one the caller expected. It unwraps to
// ErrChanged.
type ChangedError struct {
	Repo     string
	Tag      string
	Expected digest.Digest // what the caller saw ("" = no live binding)
	Actual   digest.Digest // the live binding digest now ("" = none)
}

// Error names the tag and both digests.
func (e *ChangedError) Error() string {
	return fmt.Sprintf("%s:%s: expected %s, found %s: %v",
		e.Repo, e.Tag, orNone(e.Expected), orNone(e.Actual), ErrChanged)
}

// Unwrap returns ErrChanged.
func (e *ChangedError) Unwrap() error { return ErrChanged }

func orNone(d digest.Digest) string {
	if d == "" {
		return "no binding"
	}
	return string(d)
}
