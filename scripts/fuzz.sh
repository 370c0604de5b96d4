#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each:
#
#   scripts/fuzz.sh [TIME]   fuzz each target for TIME (a go test -fuzztime
#                            value; default $TAGLOCK_FUZZ_TIME, else 10s)
#   scripts/fuzz.sh --list   print "PACKAGE_DIR TARGET" for each target
#
# Targets are found with grep (every top-level func Fuzz... in a _test.go
# file), so a new one is fuzzed without anyone listing it here. A target in a
# file that needs build tags fails the run loudly rather than being skipped.
#
# When a target fails, go test writes the input under the package's
# testdata/fuzz/TARGET/; commit it with the fix, and plain go test replays it
# from then on. Exits non-zero if any target fails.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TAGLOCK_ROOT"

targets() {
  grep -rEo --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata '^func Fuzz[A-Za-z0-9_]*\(' . |
    sed -E 's#^\./(.+)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#\1 \2#' | sort -u
}

if [[ ${1:-} == --list ]]; then
  targets
  exit 0
fi
budget=${1:-${TAGLOCK_FUZZ_TIME:-10s}}

mapfile -t found < <(targets)
if ((${#found[@]} == 0)); then
  die "no fuzz targets found under $TAGLOCK_ROOT"
fi
rc=0
for t in "${found[@]}"; do
  read -r dir name <<<"$t"
  log "fuzz $name (./$dir) for $budget"
  # -fuzzminimizetime bounds the time spent shrinking each new input, which
  # otherwise eats a short run on targets that are slow per input.
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" -fuzzminimizetime 3s "./$dir"; then
    echo "FAIL: $name (./$dir)" >&2
    rc=1
  fi
done
exit "$rc"
