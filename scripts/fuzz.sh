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
#
# Go 1.26's fuzzing coordinator can report a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-input, without any
# finding (go.dev/issue/75804, fixed in Go 1.27). A run that fails that way,
# writes no failing input and prints nothing else wrong is run once more; a
# second such failure, or any real finding, fails the run.
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
# fuzz_one DIR NAME runs one target; it prints go test's output and keeps it
# in $out for deadline_flake.
fuzz_one() {
  # -fuzzminimizetime bounds the time spent shrinking each new input, which
  # otherwise eats a short run on targets that are slow per input.
  local status=0
  out=$(go test -run '^$' -fuzz "^${2}\$" -fuzztime "$budget" -fuzzminimizetime 3s "./$1" 2>&1) || status=$?
  printf '%s\n' "$out"
  return "$status"
}

# deadline_flake reports whether $out is go.dev/issue/75804: the target
# failed with "context deadline exceeded" and nothing else, and no input was
# written.
deadline_flake() {
  grep -q '^    context deadline exceeded$' <<<"$out" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' <<<"$out"
}

rc=0
for t in "${found[@]}"; do
  read -r dir name <<<"$t"
  log "fuzz $name (./$dir) for $budget"
  if fuzz_one "$dir" "$name"; then
    continue
  fi
  if deadline_flake; then
    log "fuzz $name: a bare deadline at the end of -fuzztime (go.dev/issue/75804); once more"
    fuzz_one "$dir" "$name" && continue
  fi
  echo "FAIL: $name (./$dir)" >&2
  rc=1
done
exit "$rc"
