#!/usr/bin/env bash
# Runs taglock's benchmarks (./integration/bench) with the same tools and
# environment variables as the end-to-end tests. It is slow and noisy on a
# shared machine, so `make test` leaves it out: run it with `make bench`.
#
# Environment: BENCHTIME (default 3x), BENCH (a -bench regexp, default .),
# TAGLOCK_BENCH_TIMEOUT (default 60m).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TAGLOCK_ROOT"

"$TAGLOCK_ROOT/scripts/install-deps.sh"
mkdir -p "$TAGLOCK_BIN_DIR"
log "go build ./cmd/taglock"
go build -o "$TAGLOCK_BIN_DIR/taglock" ./cmd/taglock
export_tool_env
log "go test -bench ${BENCH:-.} -benchtime ${BENCHTIME:-3x} ./integration/bench/..."
exec go test -tags bench -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-3x}" \
  -timeout "${TAGLOCK_BENCH_TIMEOUT:-60m}" ./integration/bench/...
