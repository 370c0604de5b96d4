// Package bench measures taglock's throughput and memory against the
// registry it fronts. It holds no library code: the benchmarks run the built
// taglock binary and a separately started CNCF Distribution registry, and
// compare the same operations sent directly to the registry, through a bare
// httputil.ReverseProxy (the control, which shows what any proxy hop costs)
// and through taglock, in the same run, as ratios.
//
// BenchmarkLedgerAtScale and BenchmarkLedgerAtScaleEtcd measure the ledger
// itself with a generated ledger of a million bindings (a hundred thousand
// on etcd): lookups, import and export, serve's start-up, /metrics, the web
// page and the API. They take about twenty minutes, so `make bench` runs
// them only when asked: make bench BENCH=LedgerAtScale.
//
// The benchmarks carry the build tag bench, so `go test ./...` leaves them
// out (it still compiles and tests the small helpers they share). Run them
// with `make bench`, or by hand:
//
//	TAGLOCK_BIN=/abs/path/taglock REGISTRY_BIN=/abs/path/registry \
//	  go test -tags bench -run '^$' -bench . -benchtime 3x ./integration/bench/
//
// A missing TAGLOCK_BIN or REGISTRY_BIN fails the run; nothing is skipped.
// Every process binds 127.0.0.1:0 and all traffic stays on loopback.
// docs/benchmarks.md has the figures and how to read them.
package bench
