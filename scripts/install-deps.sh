#!/usr/bin/env bash
# Installs what taglock's test suite needs and a fresh machine lacks. Idempotent:
# a second run installs nothing and takes about a second.
#
#   Debian packages (apt, root or sudo): skopeo, docker.io (dockerd and the docker CLI),
#     chromium (headless, for the web page's end-to-end test), etcd-server (etcd 3.4,
#     for the end-to-end tests of the etcd ledger against the server Debian ships).
#   Go-built tools, into ${TAGLOCK_TOOLS:-$HOME/.cache/taglock/tools}:
#     crane, oras, regctl   the real OCI clients the end-to-end tests drive
#     registry              CNCF Distribution, the separate upstream for upstream mode
#     conformance           the OCI conformance program, at the version pinned in go.mod
#     helm                  renders and lints the Helm chart (configs/helm/taglock)
#
# Usage: scripts/install-deps.sh [--no-apt]
#   --no-apt  skip the Debian packages (for a machine where you manage them yourself)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

use_apt=1
for arg in "$@"; do
  case $arg in
    --no-apt) use_apt=0 ;;
    *) die "unknown argument: $arg (usage: install-deps.sh [--no-apt])" ;;
  esac
done

command -v go >/dev/null || die "go not found: install Go 1.26 (https://go.dev/dl) and put it on PATH"

# Debian packages, checked by the command each provides.
if ((use_apt)); then
  need=()
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v chromium >/dev/null || need+=(chromium)
  command -v etcd >/dev/null || need+=(etcd-server)
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    need+=(docker.io)
  fi
  if ((${#need[@]})); then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them by hand"
    log "apt-get install ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a \
      apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  for cmd in skopeo dockerd docker chromium etcd; do
    command -v "$cmd" >/dev/null || die "$cmd still missing after apt-get install"
  done
fi

# Go tools: each is rebuilt only when missing or when its pinned version changed
# (a stamp file next to the binary records the module@version it came from).
mkdir -p "$TAGLOCK_TOOLS"
declare -A mods=(
  [crane]=github.com/google/go-containerregistry/cmd/crane@v0.22.1
  [oras]=oras.land/oras/cmd/oras@v1.3.6
  [regctl]=github.com/regclient/regclient/cmd/regctl@v0.11.7
  [registry]=github.com/distribution/distribution/v3/cmd/registry@v3.1.2
  [helm]=helm.sh/helm/v3/cmd/helm@v3.21.4
)
for bin in crane oras regctl registry helm; do
  mod=${mods[$bin]}
  stamp=$TAGLOCK_TOOLS/.$bin.version
  if [[ -x $TAGLOCK_TOOLS/$bin && -f $stamp && $(cat "$stamp") == "$mod" ]]; then
    continue
  fi
  note=""
  [[ $bin == registry || $bin == helm ]] && note=" (about 2 min on a cold cache)"
  log "go install $mod$note"
  GOBIN=$TAGLOCK_TOOLS go install "$mod"
  echo "$mod" >"$stamp"
done

# The conformance program is a `tool` in go.mod: building it needs no download
# beyond the module cache, and always matches the pinned version.
(cd "$TAGLOCK_ROOT" && go build -o "$TAGLOCK_TOOLS/conformance" github.com/opencontainers/distribution-spec/conformance)

log "tools in $TAGLOCK_TOOLS: $(cd "$TAGLOCK_TOOLS" && echo *)"
