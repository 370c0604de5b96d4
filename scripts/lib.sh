# shellcheck shell=bash
# Shared helpers for taglock's scripts: where the tools live, how to name them,
# and how to run and stop a private Docker daemon. Source it; it runs nothing.

# Repository root, whatever the caller's working directory.
TAGLOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where install-deps.sh puts the Go-built tools (crane, oras, regctl, registry, conformance, helm).
TAGLOCK_TOOLS=${TAGLOCK_TOOLS:-$HOME/.cache/taglock/tools}
# Where the taglock binary is built.
TAGLOCK_BIN_DIR=${TAGLOCK_BIN_DIR:-$TAGLOCK_ROOT/bin}
export TAGLOCK_ROOT TAGLOCK_TOOLS TAGLOCK_BIN_DIR

# dockerd and friends live in sbin, which a non-login root shell may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac
export PATH

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# as_root runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# export_tool_env exports the absolute path of every program the tests run,
# under the names the tests read, and fails if any of them is missing.
export_tool_env() {
  TAGLOCK_BIN=$TAGLOCK_BIN_DIR/taglock
  REGISTRY_BIN=$TAGLOCK_TOOLS/registry
  CONFORMANCE_BIN=$TAGLOCK_TOOLS/conformance
  CRANE=$TAGLOCK_TOOLS/crane
  ORAS=$TAGLOCK_TOOLS/oras
  REGCTL=$TAGLOCK_TOOLS/regctl
  SKOPEO=$(command -v skopeo || true)
  DOCKER=$(command -v docker || true)
  ETCD_BIN=$(command -v etcd || true)
  HELM_BIN=$TAGLOCK_TOOLS/helm
  export TAGLOCK_BIN REGISTRY_BIN CONFORMANCE_BIN CRANE ORAS REGCTL SKOPEO DOCKER ETCD_BIN HELM_BIN
  local name missing=0
  for name in TAGLOCK_BIN REGISTRY_BIN CONFORMANCE_BIN CRANE ORAS REGCTL SKOPEO DOCKER ETCD_BIN HELM_BIN; do
    if [[ -z ${!name} || ! -x ${!name} ]]; then
      printf 'error: %s: no executable at "%s" (run scripts/install-deps.sh and make build)\n' "$name" "${!name}" >&2
      missing=1
    fi
  done
  return "$missing"
}

# start_dockerd DIR starts a private Docker daemon with all its state under DIR,
# waits until it answers and exports DOCKER_HOST. It leaves the host alone:
# no bridge, no iptables rules, its own socket, data and exec roots, and an
# empty daemon.json so that /etc/docker/daemon.json does not apply.
# The caller stops it with stop_dockerd DIR (install it in an EXIT trap).
start_dockerd() {
  local dir=$1 sock pid
  command -v dockerd >/dev/null || die "dockerd not found (scripts/install-deps.sh installs docker.io)"
  mkdir -p "$dir/root" "$dir/exec"
  echo '{}' >"$dir/daemon.json"
  sock=$dir/docker.sock
  dockerd --config-file "$dir/daemon.json" --data-root "$dir/root" --exec-root "$dir/exec" \
    -H "unix://$sock" --pidfile "$dir/dockerd.pid" --bridge=none --iptables=false \
    >"$dir/dockerd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/dockerd.started"
  for _ in $(seq 1 300); do
    if DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1; then
      export DOCKER_HOST=unix://$sock
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "dockerd did not answer; last lines of $dir/dockerd.log:" >&2
  tail -20 "$dir/dockerd.log" >&2 || true
  stop_dockerd "$dir"
  return 1
}

# stop_dockerd DIR stops the daemon start_dockerd started under DIR (and only
# that one: it signals the process id it recorded), waiting up to 20 s.
stop_dockerd() {
  local dir=$1 pid
  [[ -f $dir/dockerd.started ]] || return 0
  pid=$(cat "$dir/dockerd.started")
  rm -f "$dir/dockerd.started"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  echo "dockerd ($pid) ignored SIGTERM for 20 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}
