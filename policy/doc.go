// Package policy decides what taglock allows, refuses and deletes. It owns
// the rules and nothing else: every function takes data in and returns a
// decision out.
//
// # Basics
//
// Globs select repositories and tags (see [CompileGlob]). Immutability
// decides whether a tag write binds, re-confirms, moves or is refused
// ([Immutability.ModeFor], [Effective], [DecideWrite], [DecideDelete]).
// Access rules decide who may pull, push and delete what ([Access.Decide]).
// The promotion guard decides whether a production tag may take a digest
// ([MatchPromotion], [DecidePromotion]). Retention plans which tags and
// manifests a cleanup run deletes, and why ([Plan]).
//
// Every decision fails closed: a zero or unknown enum value, an empty
// digest or an unknown recorded mode is refused rather than allowed, and
// retention keeps what it cannot prove safe to delete.
//
// # Caveats
//
// The package must stay pure. It performs no I/O: no net/http, no os, no
// storage, no logging, and it never reads the clock; time is passed in.
// depcheck_test.go enforces this. Callers own the ledger, the upstream and
// the audit log, and turn decisions into responses.
package policy
