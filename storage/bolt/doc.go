// Package bolt is the ledger backend on one bbolt file: the default, for
// one taglock process (a sidecar, a single server). It implements
// storage.Ledger; package storage documents what the methods mean.
//
// # Basics
//
// Open a ledger with [Open]; a file is locked by one process at a time
// (readers opened with [Options.ReadOnly] share it), so several replicas
// cannot share it: use the etcd backend for that. Every write method is a
// single bbolt read-write transaction, or part of one: it commits entirely
// or not at all, and writes made at the same time may share a transaction
// (see Caveats).
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
//	stats           "total" -> the counts of the whole ledger: five
//	                big-endian uint64s (repositories, immutable, mutable,
//	                warn, deleted); "txid" -> the bbolt transaction that
//	                last kept them, big-endian uint64
//	repo_stats      repo -> the counts of repo, as "total"
//	jobs            name -> job state value (raw bytes; JobStates)
//
// [Ledger.Check] runs bbolt's own page checks and verifies that every index
// entry above points at a record that has it, that every record's index
// entries exist, and that the counts are what the bindings hold.
//
// # Counts
//
// Every write of a binding updates the counts in its own transaction, so
// [Ledger.Counts] is one read, whatever the size of the ledger, and a crash
// leaves counts and bindings of the same commit. Every write transaction
// also records its bbolt transaction ID under stats/txid; a file whose last
// transaction is another one was written by a program that does not keep
// the counts (an older taglock, bbolt's tools), and its counts are not
// believed: Open counts every binding again, and a read-only ledger counts
// them at every call. Counting reads every binding, but finds the two fields
// it needs without decoding the rest: under a second for a million bindings
// whose pages are cached, plus reading them from disk when they are not
// (docs/benchmarks.md).
//
// [Ledger.WatchBindings] delivers the bindings this process writes: no
// other process can write the file while it holds it.
//
// # Backup and restore
//
// [Ledger.Backup] writes a consistent copy of the file from one read
// transaction while the ledger stays in use. The copy is itself a ledger:
// it opens with [Open], and restoring means putting it in place of
// DATA/ledger.db while taglock is stopped.
//
// # Caveats
//
// bbolt allows one writer at a time and every commit is fsynced, so a write
// costs one disk flush (about 0.05 ms on a write-caching virtual disk, 0.5-2
// ms on cloud block storage). Writes that arrive while a commit runs are
// committed together in the next transaction, one flush for all of them; a
// write that arrives when none runs commits at once. The ledger never delays a
// write to batch it and never holds a write transaction across anything
// slow: callers must not call the upstream between Reserve and Commit while
// holding any other ledger operation open.
package bolt
