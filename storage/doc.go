// Package storage is taglock's ledger: the durable memory behind tag
// immutability.
//
// # What the ledger owns
//
// The ledger records, in one bbolt file:
//
//   - bindings: for every repository and tag, the digest it was first bound
//     to, the policy mode in force at the time, who pushed it and when, the
//     manifest's closure (every child manifest and blob it references) and,
//     for immutable tags, the raw manifest bytes. A deleted tag keeps its
//     binding as a tombstone (Deleted=true), so deleting a tag never frees it
//     to be pushed again with other content;
//   - history: an append-only log of events (accepted, identical, moved,
//     refused, deleted, ...) with a global, strictly increasing sequence;
//   - reservations: what the requests in flight to the upstream hold: the
//     tags and the whole graph of a manifest push, the tag, manifest or blob
//     of a delete. They are persisted, with the deadline of the request, so
//     a crash between forwarding a request and recording its outcome leaves
//     a trace that is settled against the upstream after a restart;
//   - manifest references: what each manifest points at, so deletes and
//     retention can see the graph without asking the upstream;
//   - pulls: the last time each manifest was pulled, for retention.
//
// # What the ledger must not do
//
// The ledger speaks no HTTP and makes no policy decisions: it never decides
// whether a push is allowed, which mode a tag has, or what may be deleted. It
// stores what its callers decided and answers questions about it. Its one
// piece of logic is the compare-and-swap in [Ledger.Reserve], which makes the
// decision a caller took on a binding safe against concurrent pushes and
// deletes: the bindings must be exactly as the caller saw them, and nothing
// another reservation holds may be taken (see [Reservation]). Time
// comes from the caller or from [Options.Now]; the ledger never reads the
// clock elsewhere.
//
// # Basics
//
// Open a ledger with [Open]; a file is locked by one process at a time
// (readers opened with [Options.ReadOnly] share it). Every write method is a
// single bbolt read-write transaction, or part of one: it commits entirely or
// not at all, and writes made at the same time may share a transaction (see
// Caveats). A manifest push goes through [Ledger.Reserve], then the
// upstream write, then [Ledger.Commit] (or [Ledger.Release] when the
// upstream refused it); a delete of a tag, a manifest or a blob goes through
// [Ledger.Reserve] with [ReserveDelete], then the upstream delete, then
// [Ledger.CommitDelete], which marks what the upstream removed in the same
// transaction. Writes that need no reservation (adoption of tags found
// upstream, imports) use [Ledger.Put]; refusals and other bare events use
// [Ledger.Append]. [Ledger.Import] reads what [Ledger.Export] wrote and never
// changes a recorded binding silently: a record that contradicts one refuses
// the whole import unless [ImportOptions.Force] is given.
//
// # Bucket layout
//
// All keys join their parts with a NUL byte ("\x00"); repository names, tags
// and event kinds cannot contain NUL. seq is a big-endian uint64, so byte
// order is sequence order. Values are JSON unless noted.
//
//	meta            "version" -> schema version ("1")
//	bindings        repo\x00tag -> Binding
//	binding_refs    repo\x00digest\x00tag -> empty; one entry for the
//	                binding's Digest and one per Closure digest (Referencing)
//	events          seq -> Event; the bucket's sequence is the last seq
//	events_by_tag   repo\x00tag\x00seq -> empty (History of one tag)
//	events_by_repo  repo\x00seq -> empty (History of a repository)
//	events_by_kind  kind\x00seq -> empty (Recent by kind)
//	reservations    id -> Reservation
//	reserved_tags   repo\x00tag\x00id -> digest (raw string)
//	reserved_digests repo\x00digest\x00id -> kind ("push" or "delete"):
//	                a push's digest and closure, a delete's digest
//	manifests       repo\x00digest -> Manifest
//	pulls           repo\x00digest -> last pull, big-endian int64 Unix
//	                nanoseconds
//
// [Ledger.Check] verifies that every index entry above points at a record
// that has it and that every record's index entries exist.
//
// # Caveats
//
// bbolt allows one writer at a time and every commit is fsynced, so a write
// costs one disk flush (about 0.05 ms on a write-caching virtual disk, 0.5-2
// ms on cloud block storage). Writes that arrive while a commit runs are
// committed together in the next transaction, one flush for all of them; a
// write that arrives when none runs commits at once. The ledger never delays a
// write to batch it and never holds a write transaction across anything
// slow: callers must not call
// the upstream between Reserve and Commit while holding any other ledger
// operation open. A reservation left behind by a crash keeps its tags busy
// until it is committed or released; callers reconcile [Ledger.Reservations]
// at start-up.
package storage
