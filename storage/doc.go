// Package storage is taglock's ledger: the durable memory behind tag
// immutability. It owns the records, their validation, the errors and the
// contract every backend implements ([Ledger]); the backends live in their
// own packages (storage/bolt on one bbolt file, storage/etcd on an etcd
// cluster shared by several replicas), and internal/ledger picks one from
// the configuration.
//
// # What the ledger owns
//
// The ledger records:
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
//     of a delete. They are persisted, with the deadline of the request and
//     the process that owns it, so a crash between forwarding a request and
//     recording its outcome leaves a trace that is settled against the
//     upstream after a restart;
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
// another reservation holds may be taken (see [Reservation]). Time comes
// from the caller or from the backend's clock option; the ledger never reads
// the clock elsewhere.
//
// # Basics
//
// A manifest push goes through [Ledger.Reserve], then the upstream write,
// then [Ledger.Commit] (or [Ledger.Release] when the upstream refused it);
// a delete of a tag, a manifest or a blob goes through [Ledger.Reserve] with
// [ReserveDelete], then the upstream delete, then [Ledger.CommitDelete],
// which marks what the upstream removed in the same atomic write. Writes
// that need no reservation (adoption of tags found upstream, imports) use
// [Ledger.Put]; refusals and other bare events use [Ledger.Append].
// [Ledger.Import] reads what [Ledger.Export] wrote, whatever backend wrote
// it, and never changes a recorded binding silently: a record that
// contradicts one refuses the whole import unless [ImportOptions.Force] is
// given.
//
// # Writing a backend
//
// A backend implements [Ledger] and runs storage/ledgertest's
// RunConformance unmodified. It validates records with
// [NormalizeBindings], [ValidateEvents], [NormalizeReservation],
// [Manifest.Validate] and [Pull.Validate], decides conflicts with
// [Reservation.Holds], [Reservation.SharesTag] and [Reservation.SharesDigest],
// writes exports with [ExportWriter] and implements Import with
// [ImportInto], so that every backend refuses, conflicts and round-trips
// alike. Names, tags and kinds never contain NUL, so backends may join key
// parts with it.
//
// # Caveats
//
// A reservation left behind by a crash keeps its tags busy until it is
// committed or released; callers reconcile [Ledger.Reservations] at
// start-up. Callers must not call the upstream while holding any other
// ledger operation open.
package storage
