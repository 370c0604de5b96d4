#!/usr/bin/env bash
# Runs taglock's whole test suite on this machine, installing what it lacks:
#
#   1. scripts/install-deps.sh   skopeo, docker.io, etcd-server, crane, oras, regctl, registry, conformance, helm
#   2. gofmt -l and go vet       (go vet also with -tags e2e, -tags bench, which
#                                compiles the benchmarks that `make bench` runs, and
#                                -tags gcs, the build with the gcs storage driver)
#      helm lint and template    the chart in configs/helm/taglock with every values file
#                                (the e2e test TestHelmChart checks what it renders)
#   3. go build ./cmd/taglock    into bin/taglock, the binary the end-to-end tests run
#   4. a private Docker daemon   root only: its own socket, data and exec roots in a
#                                temporary directory, no bridge, no iptables; stopped on exit
#   5. go test -race ./...       unit and in-process integration tests
#   6. scripts/fuzz.sh           every fuzz target (found by grep) for TAGLOCK_FUZZ_TIME
#                                each, default 10s: about 1.5 minutes on 2 cores, plus
#                                about 3 on a cold build cache, which compiles every
#                                dependency once more with the fuzzer's instrumentation
#   7. go test -tags e2e ./integration/e2e/...
#                                the built binary with the real CLIs, a separate Distribution
#                                upstream and the OCI conformance program
#
# Test output goes through scripts/testreport, which prints what go test prints
# plus the number of tests, and fails a run that ran no test or skipped one.
# Prints a summary of the steps, then "tests: N passed, M failed, K skipped", and
# exits non-zero if any step failed. Nothing is skipped: a tool that cannot be
# installed fails the run.
#
# Not root? An already running Docker daemon that `docker version` reaches
# (DOCKER_HOST or the default socket) is used instead of a private one.
#
# Environment: TAGLOCK_TOOLS (tool directory), TAGLOCK_BIN_DIR (default ./bin),
# TAGLOCK_E2E_TIMEOUT (default 20m), TAGLOCK_FUZZ_TIME (per target, default 10s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TAGLOCK_ROOT"

summary=()
failed=0
started=$SECONDS

# step NAME CMD... runs one step, records PASS/FAIL and its duration, and
# returns the command's status.
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  log "$name"
  "$@" || rc=$?
  if ((rc == 0)); then
    summary+=("PASS  $name ($((SECONDS - t0))s)")
  else
    summary+=("FAIL  $name ($((SECONDS - t0))s, exit $rc)")
    failed=1
  fi
  return "$rc"
}

print_summary() {
  echo
  echo "==> summary ($((SECONDS - started))s)"
  printf '  %s\n' "${summary[@]}"
  if ((failed)); then
    echo "taglock test suite: FAILED"
  else
    echo "taglock test suite: all steps passed"
  fi
  if [[ -s $counts ]]; then
    awk '{p += $1; f += $2; s += $3} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, s}' "$counts"
  fi
}

workdir=$(mktemp -d "${TMPDIR:-/tmp}/taglock-test.XXXXXX")
counts=$workdir/counts # one "passed failed skipped" line per go test run
cleanup() {
  stop_dockerd "$workdir/dockerd"
  if grep -qF "$workdir" /proc/mounts 2>/dev/null; then
    echo "warning: $workdir still has mounts; leaving it in place" >&2
  else
    rm -rf "$workdir" 2>/dev/null || as_root rm -rf "$workdir" || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check_gofmt() {
  local out
  out=$(gofmt -l .)
  if [[ -n $out ]]; then
    echo "gofmt would reformat:" >&2
    printf '  %s\n' $out >&2
    return 1
  fi
}

go_vet() {
  go vet ./... && go vet -tags e2e ./integration/e2e/... && go vet -tags bench ./integration/bench/... &&
    go vet -tags gcs ./proxy/embedded/ ./cmd/taglock/
}

# helm_chart lints and renders the Helm chart with its defaults and with
# each values-*.yaml beside them.
helm_chart() {
  local helm=$TAGLOCK_TOOLS/helm chart=configs/helm/taglock f
  "$helm" lint --strict "$chart" >/dev/null || return 1
  "$helm" template taglock "$chart" >/dev/null || return 1
  for f in "$chart"/values-*.yaml; do
    "$helm" lint --strict "$chart" -f "$f" >/dev/null || { echo "helm lint failed with $f" >&2; return 1; }
    "$helm" template taglock "$chart" -f "$f" >/dev/null || { echo "helm template failed with $f" >&2; return 1; }
  done
}

build() {
  go build -o "$workdir/testreport" ./scripts/testreport || return 1
  mkdir -p "$TAGLOCK_BIN_DIR"
  go build -o "$TAGLOCK_BIN_DIR/taglock" ./cmd/taglock
}

# gotest REPORT_FLAGS -- GO_TEST_ARGS runs go test -json through testreport.
gotest() {
  local flags=()
  while [[ $1 != -- ]]; do flags+=("$1"); shift; done
  shift
  [[ -x $workdir/testreport ]] || { echo "testreport was not built" >&2; return 1; }
  go test -json "$@" 2>&1 | "$workdir/testreport" -no-skip -counts "$counts" "${flags[@]}"
}

unit() {
  gotest -min 1 -- -race -count=1 ./...
}

docker_daemon() {
  if [[ $(id -u) -eq 0 ]]; then
    start_dockerd "$workdir/dockerd" || return 1
    log "private dockerd answering at $DOCKER_HOST"
  elif docker version >/dev/null 2>&1; then
    log "not root: using the Docker daemon that is already running (${DOCKER_HOST:-default socket})"
  else
    echo "not root and no running Docker daemon answers: run as root (the script starts its own) or start dockerd" >&2
    return 1
  fi
}

e2e() {
  export_tool_env || return 1
  # -min: the e2e suite has 22 tests and subtests; far fewer means they did not run.
  gotest -min 20 -- -tags e2e -count=1 -timeout "${TAGLOCK_E2E_TIMEOUT:-20m}" ./integration/e2e/...
}

if ! step "install dependencies" "$TAGLOCK_ROOT/scripts/install-deps.sh"; then
  print_summary
  exit 1
fi
step "gofmt" check_gofmt || true
step "go vet" go_vet || true
step "helm lint and template (configs/helm/taglock)" helm_chart || true
built=1
step "build taglock" build || built=0
dockerd_ok=1
step "start Docker daemon" docker_daemon || dockerd_ok=0
step "unit and integration tests (go test -race ./...)" unit || true
step "fuzz each target for ${TAGLOCK_FUZZ_TIME:-10s} (scripts/fuzz.sh)" "$TAGLOCK_ROOT/scripts/fuzz.sh" || true
if ((built && dockerd_ok)); then
  step "end-to-end tests (go test -tags e2e ./integration/e2e/...)" e2e || true
else
  summary+=("FAIL  end-to-end tests: not run, the build or the Docker daemon failed")
  failed=1
fi

print_summary
exit "$failed"
