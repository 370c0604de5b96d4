// Package e2e holds taglock's end-to-end tests. They run the built taglock
// binary, a separately started CNCF Distribution registry, the OCI conformance
// program and the real command-line clients (docker, crane, oras, regctl and
// skopeo), and check what a user of each would see.
//
// The tests carry the build tag e2e, so `go test ./...` leaves them out.
// `make test` (scripts/test.sh) installs every program they need, starts a
// private Docker daemon, builds taglock and runs them with the absolute path
// of each program in an environment variable:
//
//	TAGLOCK_BIN      the taglock binary under test
//	REGISTRY_BIN     the Distribution registry binary (upstream mode)
//	CONFORMANCE_BIN  the OCI distribution-spec conformance program
//	CRANE, ORAS, REGCTL, SKOPEO, DOCKER  the clients
//	ETCD_BIN         Debian's etcd server (3.4), for the etcd ledger
//
// DOCKER_HOST must point at a running Docker daemon. A missing variable or
// program fails the run: nothing here is ever skipped.
//
// Every test binds 127.0.0.1:0 and talks to loopback only.
package e2e
