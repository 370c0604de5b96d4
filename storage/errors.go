package storage

import (
	"errors"
	"fmt"
	"strings"
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

	// ErrLocked means a backend could not get the exclusive hold it needs
	// on its store: the bolt backend's file lock within its LockTimeout,
	// held by another process (or another Ledger in this one).
	ErrLocked = errors.New("ledger is locked by another process")

	// ErrCorrupt means Check found a problem, or a backend found a store
	// (a file, a key prefix) that is not a ledger this version understands.
	ErrCorrupt = errors.New("ledger is corrupt")

	// ErrInvalid means a record passed to the ledger cannot be stored: an
	// empty or NUL-containing repository, tag or kind, a malformed digest, an
	// unknown mode, or an event sequence that is not new.
	ErrInvalid = errors.New("invalid ledger record")

	// ErrContradiction means an import carries records that would change
	// what the ledger holds for a tag (see Contradiction). Errors wrapping
	// it are *ContradictionError values.
	ErrContradiction = errors.New("import contradicts the ledger")

	// ErrReadOnly means a write was attempted on a ledger opened
	// read-only.
	ErrReadOnly = errors.New("ledger is read-only")

	// ErrClosed means the ledger was closed before the call.
	ErrClosed = errors.New("ledger is closed")
)

// BusyError is the error Reserve returns (wrapped) when another pending
// reservation holds what the new one needs: a tag another push holds with a
// different digest, a tag or digest a delete holds, or, for a delete, a
// digest a push depends on. It unwraps to ErrBusy.
type BusyError struct {
	Repo string
	// Tag is the contended tag, or "" when the contention is on Digest.
	Tag string
	// Digest is the other reservation's digest, or the contended digest
	// when Tag is "".
	Digest digest.Digest
	// Holder is the other reservation.
	Holder Reservation
}

// Error describes the conflicting reservation.
func (e *BusyError) Error() string {
	what := "being pushed as " + string(e.Holder.Digest)
	if e.Holder.IsDelete() {
		what = "being deleted"
	}
	subject := e.Repo + ":" + e.Tag
	if e.Tag == "" {
		subject = e.Repo + "@" + string(e.Digest)
		if !e.Holder.IsDelete() {
			what = "used by a push of " + string(e.Holder.Digest)
		}
	}
	return fmt.Sprintf("%s is %s since %s: %v", subject, what, e.Holder.CreatedAt.UTC().Format(time.RFC3339), ErrBusy)
}

// Unwrap returns ErrBusy.
func (e *BusyError) Unwrap() error { return ErrBusy }

// ChangedError is the error Reserve returns (wrapped) when a tag's binding
// is not what the caller saw when it decided. It unwraps to ErrChanged.
type ChangedError struct {
	Repo     string
	Tag      string
	Expected Seen // what the caller saw (zero = no binding)
	Actual   Seen // the binding now (zero = none)
}

// Error names the tag and both states.
func (e *ChangedError) Error() string {
	return fmt.Sprintf("%s:%s: expected %s, found %s: %v", e.Repo, e.Tag, e.Expected, e.Actual, ErrChanged)
}

// Unwrap returns ErrChanged.
func (e *ChangedError) Unwrap() error { return ErrChanged }

// ContradictionError is the error Import returns (wrapped) when records
// contradict the ledger and ImportOptions.Force is not set. It unwraps to
// ErrContradiction.
type ContradictionError struct {
	// Contradictions lists every contradicting record, in input order.
	Contradictions []Contradiction
}

// Error names every contradicting record and what it would change.
func (e *ContradictionError) Error() string {
	parts := make([]string, len(e.Contradictions))
	for i, c := range e.Contradictions {
		parts[i] = c.String()
	}
	n := fmt.Sprintf("%d records", len(parts))
	if len(parts) == 1 {
		n = "1 record"
	}
	return fmt.Sprintf("%s would change what the ledger holds (%s): %v", n, strings.Join(parts, "; "), ErrContradiction)
}

// Unwrap returns ErrContradiction.
func (e *ContradictionError) Unwrap() error { return ErrContradiction }
