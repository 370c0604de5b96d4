// Package etcd is the ledger backend on an etcd cluster (v3.4 or later),
// for several taglock replicas sharing one ledger. It implements
// storage.Ledger; package storage documents what the methods mean, and the
// notes below say how this backend keeps those promises.
//
// # Basics
//
// [Open] connects to the cluster and keeps the ledger under one key
// prefix (default /taglock/); any number of Ledgers, in any number of
// processes, may open the same prefix, and other prefixes of the cluster
// are other ledgers. Every call is bounded by [Options.RequestTimeout]:
// with the cluster unreachable or without quorum, writes and reads fail
// within it instead of hanging (the proxy answers 503 and forwards
// nothing), and the same Ledger works again as soon as the cluster
// answers. Every read is linearizable: it sees every write that completed
// before it, on any replica. etcd keeps its own records safe (raft, fsync
// on a quorum); the ledger never writes a key without a transaction that
// checks what its decision rested on.
//
// # Key layout
//
// Keys are the prefix, a section and the record's key parts joined by a
// NUL byte, as in the bolt backend; seq is a big-endian uint64, and inv is
// MaxUint64-seq, so that the newest event sorts first (etcd reads ranges in
// ascending key order only; a descending sort reads the whole range).
//
//	meta/version                   -> schema version ("1")
//	seq                            -> the last event sequence number, decimal
//	b/repo\x00tag                  -> binding record (JSON: the Binding and
//	                                  its generation, below)
//	repo/repo                      -> empty; one per repository with a binding
//	ref/repo\x00digest\x00tag\x00gen -> empty; one per Digest and Closure digest
//	                                  of binding generation gen (Referencing)
//	chunk/repo\x00tag\x00gen\x00i  -> part i (big-endian uint32) of a manifest
//	                                  too large to keep in the binding
//	ev/seq                         -> Event
//	evr/repo\x00inv                -> empty (History of a repository)
//	evt/repo\x00tag\x00inv         -> empty (History of a tag)
//	evk/kind\x00inv                -> empty (Recent by kind)
//	res/id                         -> Reservation
//	rtag/repo\x00tag\x00id         -> id; one per tag the reservation holds
//	rdig/repo\x00kind\x00id        -> Reservation, for one that holds digests
//	                                  (a push, a delete by digest)
//	mf/repo\x00digest              -> Manifest
//	pull/repo\x00digest            -> last pull, big-endian Unix nanoseconds
//	job/name                       -> job state value (raw bytes; JobStates)
//
// # Reservations
//
// [Ledger.Reserve] is one read and one transaction. The read takes, at one
// revision R, everything the decision rests on: the bindings of the tags,
// their holders (rtag/repo/tag/), and the pending reservations the digests
// may conflict with (rdig/repo/delete/ for a push; all of rdig/repo/ for a
// delete by digest). The decision is the bolt backend's (storage's
// Reservation.SharesTag and SharesDigest). The transaction then stores the
// reservation and its index entries only if the reservation ID is new,
// each tag's binding still has the ModRevision read (0 when there was
// none), and no key under each of those prefixes was created or changed
// after R (a compare over the prefix: ModRevision < R+1). A transaction
// that fails its compares wrote nothing; Reserve reads and decides again.
// Two replicas racing for one tag both write under rtag/repo/tag/, and a
// push racing a delete of content it uses each write where the other
// compares, so etcd's serializable transactions let at most one of them
// through. A reservation of more than 40 tags compares the repository's
// bindings and holders as a whole, to keep within the compares of one
// transaction, and one may hold at most 60 tags, so that its Commit fits
// one transaction too.
//
// [Ledger.Commit], [Ledger.CommitDelete] and [Ledger.Release] read the
// reservation and settle it in one transaction that compares its
// ModRevision: one that lost its reservation (settled by another replica)
// writes nothing and returns storage.ErrNotFound. The same transaction
// stores the bindings, each compared with the revision read, their events
// and manifest records. CommitDelete of a manifest finds the bindings
// through the ref/ index and compares that no index entry of the digest
// appeared since it read.
//
// # Large manifests and the index
//
// A binding holds an immutable manifest's bytes, up to 4 MiB, while etcd
// refuses requests over 1.5 MiB (--max-request-bytes) and transactions of
// more than 128 operations (--max-txn-ops) by default. So what may be large
// is written ahead of the binding's transaction, under a generation: a
// random name stored in the binding record. A manifest over 64 KiB goes to
// chunk/ keys of at most 512 KiB, and the ref/ index entries of the
// binding's digest and closure (one per digest, so a large image index
// would not fit one transaction) go to ref/ keys, both named by the
// generation. A few index entries (48 in one write) and no chunks go in
// the binding's own transaction instead, which is the common push. The
// transaction deletes the chunks of the generation it replaces and, as
// far as they fit, its index entries; the rest are deleted right after.
// A write that changes only a binding's mode, tombstone or first push
// keeps its generation and writes nothing ahead. Reads keep only index entries of the binding's current
// generation and read chunks at the binding's revision, so entries and
// chunks written ahead of a write that failed, or left by a crash, are
// never seen: they are garbage, removed when the write that made them
// learns it failed, and otherwise harmless (Check does not count them).
// Every transaction stays within 128 operations and about 1 MiB, so the
// ledger works with any cluster that keeps etcd's default limits.
//
// # Event sequence numbers
//
// The seq key holds the last sequence number. Every transaction that
// stores events numbers them from it, compares the key's ModRevision with
// the one it read, and writes the new last number, so numbers are unique
// and strictly increasing in commit order across every replica, and dense
// (a new ledger's first is 1, as the contract and imports expect). Within
// one process, writers of events take turns rather than failing each
// other's compares, and concurrent Appends (refusals) are written together
// in one transaction, so a burst of refusals does not queue a push behind
// one round trip each. Events go in the same transaction as the bindings
// they describe; when a write has more of them than one transaction holds
// (a delete by digest of more than about 20 tags), the rest are appended
// right after it, and any that then fail are logged and counted
// ([Ledger.LostEvents]); the bindings are never lost. Manifest records that
// do not fit follow the same way. Pulls arrive in batches
// (proxy.PullTracker) and are written at most 100 per transaction, each
// only over an earlier time.
//
// # Backup, export and Check
//
// [Ledger.Backup] writes the export ([Ledger.Export]): every record read
// at one revision. It is restored with Import into an empty prefix
// (taglock ledger import), and moves a ledger between bolt and etcd in
// either direction. An etcd snapshot (etcdctl snapshot save) is not used:
// it holds the whole cluster, needs maintenance rights, and restores only
// as a whole new cluster. [Ledger.Check] reads every key at one revision
// and verifies the layout above: records decode under their keys, every
// binding has its repository key, its generation's index entries and, for
// a chunked manifest, chunks that add up to its recorded size and sha256;
// events and their index entries point at each other; reservations and
// their holder entries agree; and the sequence is not behind any event.
//
// # Counts
//
// This backend keeps no counts in its writes: a counter every write
// updated would be one key that every push of every replica compares and
// rewrites, and a replica of an older version, during a rolling upgrade,
// would write bindings without it. [Ledger.Counts] reads every binding
// instead (of the whole ledger, or of one repository) at one revision, in
// pages each bounded by the request timeout: a few seconds for a million
// bindings. serve counts the whole ledger for taglock_tags and the web page
// in the background, at most every 30 s (see internal/server).
//
// # Caveats
//
// Export and Check read one revision across many requests: if the cluster
// compacts that revision meanwhile, they fail and can be run again. History
// grows without bound, as in the bolt file; mind the cluster's space quota
// (--quota-backend-bytes, 2 GiB by default). A Reserve or Commit whose
// request times out may still have been applied: its reservation then stays
// pending until the settler reconciles it, as after a crash. A write whose
// bindings alone do not fit one transaction fails rather than being split:
// a push of more than 60 tags (Reserve refuses it), a Put of more than
// about 120 bindings, or a delete by digest of a manifest more than about
// 120 live tags point at.
package etcd
