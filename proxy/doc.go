// Package proxy speaks the OCI distribution API in front of a registry and
// enforces tag immutability on the way through.
//
// # Basics
//
// Every request is parsed against the spec's grammar into a Route. What does
// not parse is refused with the spec's 400 error and never forwarded; what
// parses is forwarded on a URL rebuilt from the Route. Manifest PUTs and
// DELETEs are decided against the ledger: a tag's first digest binds it, and
// a request that would move or remove an immutable tag is refused with 403
// DENIED. Everything else streams through unchanged.
//
// A push that may bind a tag is reserved in the ledger before it is
// forwarded, committed when the upstream accepts it and released when it
// definitely does not; an unclear outcome is reconciled against the upstream.
// No ledger write transaction is ever held across network I/O.
//
// # Caveats
//
// The package fails closed: when the ledger or a required upstream lookup
// cannot answer, the request is refused with a 5xx and nothing is forwarded.
// Waits are bounded: a write held by a WriteGate (embedded garbage
// collection) is refused with 503 after its wait, and uploads over
// Options.MaxUploads with 429, rather than queued behind a slow client.
// Decisions come from package policy; proxy does the I/O around them.
package proxy
