#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine (as root) for AttestMesh: apt packages, the pinned npm chain
# tools (anvil, cast, solcjs, OpenZeppelin) into tools/node_modules, and the virtualenv at .venv.
# Each step is skipped when its result is already current, so `make setup` costs ~1 s on a set-up machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The devnet's gateway mode: dnsmasq-base (the binary, without the dnsmasq package's system service that would
# take port 53 in the root namespace), nftables (the nodes' firewalls), iperf3 (the transport benchmark),
# prometheus (promtool for the alert rules' tests, and the lab's Prometheus of `devnet up --monitoring`).
# The image (`make image`, its tests, `devnet up --workload image`): podman and buildah build and run it
# without a Docker engine, runc is their runtime here (crun fails on these kernels' hybrid cgroups), and
# mmdebstrap makes the local Debian base (no container registry is reachable).
APT_PACKAGES=(wireguard-go wireguard-tools iproute2 iputils-ping shellcheck procps psmisc nodejs npm
  dnsmasq-base nftables iperf3 prometheus podman buildah runc mmdebstrap)
PYTHON=${PYTHON:-python3}
stamp_dir=.venv/.stamps

log() { printf '[setup] %s\n' "$*"; }

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing_apt+=("$pkg")
done
# node/npm may come from outside Debian (e.g. nodesource); only install them when the commands are absent.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for pkg in "${missing_apt[@]}"; do [[ $pkg == nodejs || $pkg == npm ]] || filtered+=("$pkg"); done
  missing_apt=("${filtered[@]}")
fi
# Debian's python3 ships venv and ensurepip separately.
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  missing_apt+=(python3-venv)
fi
if ((${#missing_apt[@]})); then
  log "apt: installing ${missing_apt[*]}"
  # iperf3 asks whether to run a system-wide server: never (the benchmark starts its own, in a lab namespace).
  echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
  # No package may start its system service (prometheus's would listen on :9090 in the root namespace; the
  # lab starts its own, on a lab address): invoke-rc.d asks policy-rc.d, which refuses while we install.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# AttestMesh setup: no service starts during the install\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
else
  log "apt: all packages present"
fi

if [[ ! -f tools/node_modules/.stamp ]] || ! cmp -s tools/package-lock.json tools/node_modules/.stamp; then
  log "npm: installing pinned tools into tools/node_modules"
  (cd tools && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  cp tools/package-lock.json tools/node_modules/.stamp
else
  log "npm: tools current"
fi

if [[ ! -x .venv/bin/python ]]; then
  log "venv: creating .venv"
  "$PYTHON" -m venv .venv
fi
mkdir -p "$stamp_dir"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp_dir/pip ]] || [[ $(cat "$stamp_dir/pip") != "$want" ]] || [[ ! -x .venv/bin/attestmesh ]]; then
  log "pip: installing attestmesh[dev] with constraints.txt"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp_dir/pip"
else
  log "pip: .venv current"
fi
mkdir -p /run/wireguard
log "done"
