#!/usr/bin/env bash
# Runs taglock's benchmarks (./integration/bench) with the same tools and
# environment variables as the end-to-end tests, plus nginx as a reference
# proxy (installed with apt when missing). It is slow and noisy on a
# shared machine, so `make test` leaves it out: run it with `make bench`.
#
# The benchmarks write their medians to TAGLOCK_BENCH_JSON (default
# bin/bench.json), and scripts/benchchart draws them, as ratios to direct, to
# TAGLOCK_BENCH_CHART: docs/benchmarks.svg after a full run, bin/benchmarks.svg
# when BENCH picks some benchmarks only.
#
# Environment: BENCHTIME (default 3x), BENCHCOUNT (go test -count, default 1;
# the chart takes the median of the runs), BENCH (a -bench regexp, default the
# proxy benchmarks; BENCH=LedgerAtScale runs the ledger at scale, about 20
# minutes, and BENCH=. everything),
# TAGLOCK_BENCH_TIMEOUT (default 60m), TAGLOCK_BENCH_JSON, TAGLOCK_BENCH_CHART,
# TAGLOCK_BENCH_PROFILE (a directory: profile taglock, see docs/benchmarks.md).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TAGLOCK_ROOT"

"$TAGLOCK_ROOT/scripts/install-deps.sh"
# nginx is the benchmarks' reference proxy; the test suite does not need it.
if ! command -v nginx >/dev/null; then
  command -v apt-get >/dev/null || die "nginx not found and no apt-get: install nginx by hand"
  log "apt-get install nginx-light (the benchmarks' reference proxy)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get install -y -qq nginx-light >/dev/null
  # The package starts a system nginx on port 80; the benchmarks run their own.
  as_root service nginx stop >/dev/null 2>&1 || true
fi
NGINX_BIN=$(command -v nginx) || die "nginx still missing after apt-get install"
export NGINX_BIN
mkdir -p "$TAGLOCK_BIN_DIR"
log "go build ./cmd/taglock"
go build -o "$TAGLOCK_BIN_DIR/taglock" ./cmd/taglock
export_tool_env
BENCH=${BENCH:-^Benchmark(Blob|Manifest|Memory)}
TAGLOCK_BENCH_JSON=${TAGLOCK_BENCH_JSON:-$TAGLOCK_BIN_DIR/bench.json}
TAGLOCK_BENCH_COMMIT=${TAGLOCK_BENCH_COMMIT:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
export TAGLOCK_BENCH_JSON TAGLOCK_BENCH_COMMIT
if [[ $BENCH == "^Benchmark(Blob|Manifest|Memory)" || $BENCH == . ]]; then
  chart=${TAGLOCK_BENCH_CHART:-$TAGLOCK_ROOT/docs/benchmarks.svg}
else
  chart=${TAGLOCK_BENCH_CHART:-$TAGLOCK_BIN_DIR/benchmarks.svg}
fi
rm -f "$TAGLOCK_BENCH_JSON"
log "go test -bench ${BENCH} -benchtime ${BENCHTIME:-3x} -count ${BENCHCOUNT:-1} ./integration/bench/..."
go test -tags bench -run '^$' -bench "${BENCH}" -benchtime "${BENCHTIME:-3x}" -count "${BENCHCOUNT:-1}" \
  -timeout "${TAGLOCK_BENCH_TIMEOUT:-60m}" ./integration/bench/...
if grep -q '"ratio"' "$TAGLOCK_BENCH_JSON"; then
  log "results in $TAGLOCK_BENCH_JSON; chart in $chart"
  go run ./scripts/benchchart -in "$TAGLOCK_BENCH_JSON" -out "$chart"
else
  log "results in $TAGLOCK_BENCH_JSON; no ratios to chart"
fi
