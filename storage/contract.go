package storage

import (
	"context"
	"io"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Ledger is the contract every ledger backend implements: what taglock
// remembers and the compare-and-swap that makes its decisions safe. The
// method documentation below is the contract; package ledgertest checks it,
// and every backend runs that suite unmodified.
//
// "Atomically" means all or nothing, as one transaction of the backend:
// no reader sees part of the write, and a failed write changed nothing.
// Every method takes a context and returns its error (context.Canceled or
// context.DeadlineExceeded included) rather than starting or carrying on
// once it ends. A Ledger is safe for concurrent use, and several Ledgers
// may share one store when the backend allows it (see its package doc):
// their Reserves are then atomic against each other too.
//
// Consumers declare the few methods they use as their own interfaces;
// nothing but the constructor in internal/ledger names a backend.
type Ledger interface {
	// Binding returns the binding of repo:tag, tombstones included
	// (Deleted=true). It returns an error wrapping ErrNotFound when there
	// is none. The read is up to date: it sees every write that completed
	// before it started, on any Ledger sharing the store.
	Binding(ctx context.Context, repo, tag string) (Binding, error)
	// Bindings returns every binding of repo, tombstones included, sorted
	// by tag, from one consistent state.
	Bindings(ctx context.Context, repo string) ([]Binding, error)
	// Repositories returns, sorted, the repositories with at least one
	// binding.
	Repositories(ctx context.Context) ([]string, error)
	// RepositoriesAfter is one page of Repositories: at most limit
	// repositories (all when limit <= 0) whose names sort bytewise after
	// after ("" starts at the first). It reads what it returns, not the
	// whole ledger.
	RepositoriesAfter(ctx context.Context, after string, limit int) ([]string, error)
	// BindingsAfter is one page of Bindings: at most limit bindings of
	// repo (all when limit <= 0), tombstones included, whose tags sort
	// bytewise after after ("" starts at the first), sorted by tag, from
	// one consistent state. It reads what it returns.
	BindingsAfter(ctx context.Context, repo, after string, limit int) ([]Binding, error)
	// Counts returns how many tags the ledger records, by mode with
	// tombstones apart, and in how many repositories: of the whole ledger
	// when repo is "", otherwise of repo alone (Repositories is then 1, or
	// 0 when repo has no binding). The counts are those of one consistent
	// state, up to date as Binding is, and equal what walking every
	// binding finds. How much a count costs is the backend's (see its
	// package doc).
	Counts(ctx context.Context, repo string) (Counts, error)
	// Referencing returns the bindings of repo, tombstones included, whose
	// Digest is d or whose Closure contains d, sorted by tag. It reads an
	// index, not every binding.
	Referencing(ctx context.Context, repo string, d digest.Digest) ([]Binding, error)
	// Put upserts bindings without a reservation (adoption, import,
	// tombstoning, restore) and appends events, atomically. Each binding
	// replaces the whole record of its tag. Bindings are normalized as
	// NormalizeBindings does, and invalid records fail the whole Put with
	// an error wrapping ErrInvalid.
	Put(ctx context.Context, bindings []Binding, events []Event) error

	// Reserve stores r, atomically, if nothing holds what it needs.
	//
	// For each tag in r.Tags it first compares the binding with
	// r.Expect[tag] (absent means no binding): the digest, the recorded
	// mode and the tombstone flag must be exactly what the caller saw, or
	// Reserve returns an error wrapping *ChangedError (and so ErrChanged)
	// naming the tag. It then returns an error wrapping *BusyError (and so
	// ErrBusy) when another pending reservation holds what r needs (see
	// Reservation, Reservation.SharesTag and Reservation.SharesDigest): for
	// a push, a tag another push holds with a different digest, a tag a
	// delete holds, or a delete of Digest or of any digest in Closure; for
	// a delete, any reservation of its tag, or, by digest, any push that
	// depends on Digest and any other delete of it. The tags are checked
	// in order, expectation then holders, before the digests.
	//
	// On success it stores the reservation normalized (see
	// NormalizeReservation) with r.ID, or a new random ID when r.ID is
	// empty, and CreatedAt set to the ledger's clock, and returns it; an
	// r.ID already pending fails with ErrInvalid. Nothing is stored on
	// failure. Two Reserves that cannot both hold never both succeed, even
	// on two Ledgers sharing a store.
	Reserve(ctx context.Context, r Reservation) (Reservation, error)
	// Commit completes push reservation reservationID atomically: it
	// deletes the reservation, upserts bindings (each replaces its tag's
	// whole record and index entries), records manifests and appends
	// events (Seq and Time filled where zero). It returns an error
	// wrapping ErrNotFound, and writes nothing, when the reservation no
	// longer exists, and one wrapping ErrInvalid when it is a delete.
	Commit(ctx context.Context, reservationID string, bindings []Binding, events []Event, manifests ...Manifest) error
	// CommitDelete completes delete reservation reservationID after the
	// upstream removed what it names, atomically: it deletes the
	// reservation and marks as deleted, at ev.Time (the ledger's clock
	// when zero), the bindings the upstream delete removed: the reserved
	// tag (recording the reservation's Mode when it has one), or every
	// live binding whose Digest is the reserved manifest; a blob delete
	// marks none. It appends one event per binding marked, made from ev
	// (Kind EventDeleted when empty) with the binding's tag and digest,
	// and returns those bindings as stored. It returns an error wrapping
	// ErrNotFound, and writes nothing, when the reservation no longer
	// exists, and one wrapping ErrInvalid when it is a push.
	CommitDelete(ctx context.Context, reservationID string, ev Event) ([]Binding, error)
	// Release deletes reservation reservationID, freeing what it held.
	// Releasing a reservation that is already gone is not an error.
	Release(ctx context.Context, reservationID string) error
	// Reservation returns pending reservation id, or an error wrapping
	// ErrNotFound.
	Reservation(ctx context.Context, id string) (Reservation, error)
	// Reservations returns the pending reservations, oldest (CreatedAt,
	// then ID) first. After a crash these are the requests whose outcome
	// must be reconciled with the upstream.
	Reservations(ctx context.Context) ([]Reservation, error)

	// Append records events atomically. Events with a zero Seq get the
	// next sequence number and those with a zero Time get the ledger's
	// clock. A non-zero Seq must be greater than every recorded one, or
	// Append returns an error wrapping ErrInvalid. Sequence numbers are
	// global and strictly increasing in the order writes complete, across
	// every Ledger sharing the store; a new ledger's first is 1.
	Append(ctx context.Context, events ...Event) error
	// History returns the events of repo:tag, or of the whole repository
	// when tag is "", newest first. limit <= 0 means all.
	History(ctx context.Context, repo, tag string, limit int) ([]Event, error)
	// Recent returns the newest events of kind across all repositories,
	// newest first; kind "" means any kind. limit <= 0 means all.
	Recent(ctx context.Context, kind EventKind, limit int) ([]Event, error)
	// HistoryBefore is one page of History: the events with a Seq below
	// before (every event when before is 0), newest first, at most limit
	// (all when limit <= 0). It reads what it returns.
	HistoryBefore(ctx context.Context, repo, tag string, before uint64, limit int) ([]Event, error)
	// RecentBefore is one page of Recent: the events of kind with a Seq
	// below before (every event when before is 0), newest first, at most
	// limit (all when limit <= 0). It reads what it returns.
	RecentBefore(ctx context.Context, kind EventKind, before uint64, limit int) ([]Event, error)

	// PutManifest records (or replaces) what manifest m.Digest of m.Repo
	// references.
	PutManifest(ctx context.Context, m Manifest) error
	// Manifest returns the record of manifest d in repo, or an error
	// wrapping ErrNotFound.
	Manifest(ctx context.Context, repo string, d digest.Digest) (Manifest, error)
	// Manifests returns the manifest records of repo, sorted by digest.
	Manifests(ctx context.Context, repo string) ([]Manifest, error)

	// RecordPulls records a batch of pulls, keeping for each (repository,
	// digest) the latest time seen. Pulls are statistics for retention: a
	// backend may write a large batch in several parts.
	RecordPulls(ctx context.Context, pulls []Pull) error
	// LastPulls returns, for every manifest of repo pulled at least once,
	// the time (UTC) of its latest pull.
	LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error)

	// Export writes every record of the ledger to w as JSON lines, each
	// with a "type" of "binding", "manifest", "pull", "reservation" or
	// "event", from one consistent state. Records come in that order,
	// bindings by repository then tag, manifests and pulls by repository
	// then digest, reservations by ID and events by Seq, each key compared
	// bytewise, so exporting equal ledgers gives equal bytes whatever
	// their backends.
	Export(ctx context.Context, w io.Writer) error
	// Import reads records written by Export and stores them.
	//
	// Import never changes a binding silently. A binding record that
	// differs in any field from what the ledger (or an earlier record of
	// the same import) holds for its repo:tag, and a reservation that
	// would hold an immutable tag for another digest than its binding's,
	// is a Contradiction. Without o.Force, Import then fails with a
	// *ContradictionError listing every one, and writes nothing. Records
	// identical to what the ledger holds, and records of tags it does not
	// hold, are not contradictions, so importing the same stream again is
	// safe.
	//
	// Otherwise bindings, manifests and reservations replace the records
	// with their keys, pulls keep the latest time, and events keep their
	// Seq (an event already recorded with the same Seq must be identical,
	// or Import fails with ErrInvalid), and later events are numbered
	// after the greatest. Unknown types or fields fail with ErrInvalid
	// naming the record number. Import reads and checks the whole stream,
	// in memory, before it writes anything; any invalid record means
	// nothing is written. It then writes the records in batches, each
	// atomic, checking each record again as it writes: if a push changed
	// a binding meanwhile so that a record now contradicts it, Import
	// stops with a *ContradictionError, the batches before it stay
	// written, and importing the stream again with Force settles it.
	Import(ctx context.Context, r io.Reader, o ImportOptions) (ImportStats, error)

	// Backup writes a consistent snapshot of the whole ledger to w, in the
	// backend's own restorable format, while the ledger stays in use, and
	// returns the number of bytes written. What the format is and how to
	// restore from it is the backend's (see its package doc).
	Backup(ctx context.Context, w io.Writer) (int64, error)
	// Check verifies the backend's integrity: that every record decodes
	// and sits under the key it claims, that every index entry points at a
	// record that has it, and that every record's index entries exist,
	// with whatever the backend can check of its own storage. It returns
	// the problems found (at most 1000) and, when there are any, an error
	// wrapping ErrCorrupt. Other errors mean the check could not run.
	Check(ctx context.Context) ([]string, error)

	// JobStates returns the job state whose names start with prefix, by
	// name, from one consistent state. Job state is what taglock's own
	// scheduled jobs (retention) remember between runs, so that whichever
	// process runs a job next resumes it: opaque values under names the
	// jobs choose. It is not part of the ledger's records: Export, Import,
	// Backup's export and Check leave it out.
	JobStates(ctx context.Context, prefix string) (map[string][]byte, error)
	// PutJobStates stores each value under its name, replacing what was
	// there; a nil value deletes the name (deleting an absent one is not
	// an error). Names must be valid (see ValidJobStateName) and values
	// at most MaxJobStateSize bytes, or the whole call fails with an
	// error wrapping ErrInvalid and writes nothing. Each value is written
	// atomically; a backend may write a large batch in several parts,
	// each atomic, as RecordPulls does.
	PutJobStates(ctx context.Context, values map[string][]byte) error

	// WatchBindings delivers on the returned channel the repo:tag of every
	// binding written after WatchBindings returns, by any Put, Commit,
	// CommitDelete or Import, so a cache of bindings can drop what
	// changed. A backend shared by several processes (etcd) delivers
	// every process's writes; one held by a single process (the bolt
	// file) delivers that process's. A change is delivered after its
	// write is durable, at least once, and in order for one tag. When the
	// backend may have missed changes (the consumer fell behind, the
	// backend lost its watch for a while) it delivers a change with Reset
	// set instead: everything may have changed. The channel is closed
	// when ctx ends or the ledger is closed; a consumer must keep reading
	// it until then.
	WatchBindings(ctx context.Context) (<-chan BindingChange, error)

	// Close releases what the ledger holds (a file lock, connections).
	// Closing a closed ledger is not an error.
	Close() error
}
