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
// definitely does not; an unclear outcome is left to the settler, which asks
// the upstream. No ledger write transaction is ever held across network I/O.
//
// # Reading the package
//
// Three exported types are built together by New and share their parts:
//
//   - Server is the http.Handler and nothing else. server.go holds its
//     Options and ServeHTTP, which parses (route.go), authorizes
//     (access.go), gates and counts the request (gate.go, limits.go), then
//     picks one operation: putManifest (push.go), deleteTag and
//     deleteContent (delete.go), pinned reads, or a plain stream to the
//     upstream. Each operation returns an error; errors.go is the one place
//     that turns errors into OCI responses.
//   - Reservations (settle.go, reserve.go) is the ledger side of a write:
//     claims, waiting for a conflicting request, and the settler that
//     decides what an unclear outcome became.
//   - Drift (drift.go, importtags.go, verify.go, repair.go) is the operator
//     tools and retention's Remove, which compare the ledger with the
//     upstream. It never serves a request; NewDrift builds it alone.
//
// Below them, small unexported types each own one job: reader (reader.go)
// reads manifests, tag lists and the catalog from the upstream; states
// (state.go) gives a tag's effective mode from the ledger and the
// configuration; graphs (graph.go) walks a manifest's closure and records
// manifests; adopter (adopt.go) records tags the upstream holds that the
// ledger never saw; auditor (audit.go) writes audit events; send and relay
// (send.go) are taglock's own upstream requests and the copy of their
// answers to the client.
//
// The interfaces proxy needs are declared here, small: Upstream
// (upstream.go, with Remote and InProcess), Ledger (server.go, satisfied by
// every storage backend) and authn.Authenticator.
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
