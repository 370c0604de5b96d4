// Package retention applies taglock's retention policy to a registry.
//
// It gathers what policy.Plan needs about every governed repository (the
// ledger's bindings, tombstones included; the upstream's tag lists; the
// manifest graph, fetched from the upstream where the ledger lacks it; the
// last pull times pull tracking recorded), plans, and applies the plan:
// tags first, one DELETE manifests/<tag> each, then digests in the plan's
// delete order, each re-checked just before its delete so that a push that
// landed after the plan is never undone. Deleted tags stay in the ledger as
// tombstones. The remaining deletions of a run, and when untagged
// manifests were first seen, are kept in the ledger's job state
// (storage.Ledger.JobStates), so an interrupted run resumes where it
// stopped, in whichever process runs retention next. In embedded mode it then
// reclaims blob storage with a mark and sweep that runs while the proxy
// holds writes.
//
// The package makes no retention decisions itself (package policy does)
// and never goes through the proxy's request path: its deletes are
// taglock's own, sent to the upstream directly.
package retention
