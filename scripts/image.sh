#!/usr/bin/env bash
# `make image`: build the Dockerfile with podman on this machine and print the image id (stdout, one line).
#
#   scripts/image.sh [--tag IMAGE]         IMAGE defaults to $ATTESTMESH_IMAGE or localhost/attestmesh-sidecar:dev
#
# The base image ($ATTESTMESH_IMAGE_BASE):
#   local (default)   a Debian bookworm minbase with python3, python3-venv and ca-certificates, made by
#                     mmdebstrap and `podman import`ed as localhost/attestmesh-base:bookworm-<recipe hash>;
#                     made once: a later build finds it in podman's storage (no container registry needed).
#   anything else     an image reference, e.g. docker.io/library/python:3.11-slim-bookworm (the Dockerfile's
#                     own default, what the publish workflow builds on); $ATTESTMESH_IMAGE_PYTHON names its
#                     interpreter (default /usr/local/bin/python3, the official image's).
# The build arguments ATTESTMESH_VERSION (pyproject's), ATTESTMESH_COMMIT (`git rev-parse HEAD`, or unknown)
# and ATTESTMESH_TREE (clean/modified: uncommitted changes to tracked files) say which code the image is.
#
# podman runs with scripts/podman/containers.conf (CONTAINERS_CONF: no default ulimits, no pids limit, runc)
# and builds on the host network: the build's only traffic is apt and pip to their registries, and no
# bridge or NAT rule is created on the host. The host's /etc/pip.conf and CA bundle are bind-mounted
# read-only into the RUN steps (see below). Progress goes to stderr.
# Must not: push anywhere, touch images other than its own tag and the base it made, or run a container.
set -euo pipefail
shopt -s inherit_errexit # a failing mmdebstrap inside $(local_base) stops the script
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

tag=${ATTESTMESH_IMAGE:-localhost/attestmesh-sidecar:dev}
if (($# == 2)) && [[ $1 == --tag ]]; then
  tag=$2
elif (($# != 0)); then
  echo "usage: $0 [--tag IMAGE]" >&2
  exit 2
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/scripts/podman/containers.conf}
base=${ATTESTMESH_IMAGE_BASE:-local}

log() { printf '[image] %s\n' "$*" >&2; }

# One build at a time on this machine (two test workers, or two checkouts, building at once would both make
# the base and race on the tag): the lock is released when this script exits.
exec 9>"${TMPDIR:-/tmp}/attestmesh-image.lock"
flock 9

for tool in podman runc; do
  command -v "$tool" >/dev/null || { log "$tool is not installed: run make setup"; exit 1; }
done

# The local base: its tag names a hash of the recipe, so a changed recipe is a new base, never a stale one.
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_SOURCES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
local_base() {
  local key ref work
  key=$(printf '%s\n' minbase "$BASE_SUITE" "$BASE_PACKAGES" "${BASE_SOURCES[@]}" | sha256sum | cut -c1-12)
  ref=localhost/attestmesh-base:$BASE_SUITE-$key
  if podman image exists "$ref"; then
    log "base: $ref (cached)"
  else
    command -v mmdebstrap >/dev/null || { log "mmdebstrap is not installed: run make setup"; exit 1; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/attestmesh-base.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this directory
    trap "rm -rf '$work'" EXIT
    log "base: making $ref with mmdebstrap (once)"
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$work/base.tar" \
      "${BASE_SOURCES[@]}" >&2
    podman import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      "$work/base.tar" "$ref" >/dev/null
    rm -rf "$work"
    trap - EXIT
  fi
  printf '%s\n' "$ref"
}

if [[ $base == local ]]; then
  base_ref=$(local_base)
  python=/usr/bin/python3
  pull=never
else
  base_ref=$base
  python=${ATTESTMESH_IMAGE_PYTHON:-/usr/local/bin/python3}
  pull=missing
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
commit=unknown
tree=unknown
if git rev-parse --git-dir >/dev/null 2>&1; then
  commit=$(git rev-parse HEAD)
  if [[ -n $(git status --porcelain --untracked-files=no) ]]; then tree=modified; else tree=clean; fi
fi

# This machine's trust store and pip configuration, lent read-only to the build's RUN steps (a bind mount is
# never part of a layer): these machines reach PyPI through a TLS-inspecting proxy whose CA only the host's
# bundle holds (/etc/pip.conf points pip at it), so pip in the build trusts what pip on the host trusts.
lend=()
for file in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
  if [[ -f $file ]]; then lend+=(--volume "$file:$file:ro"); fi
done

log "building $tag from $base_ref (version $version, commit $commit, tree $tree)"
iidfile=$(mktemp "${TMPDIR:-/tmp}/attestmesh-iid.XXXXXX")
# --format docker: the OCI image format has no HEALTHCHECK, and podman would drop the image's.
podman build --format docker --network host --pull="$pull" "${lend[@]}" \
  --build-arg BASE="$base_ref" \
  --build-arg PYTHON="$python" \
  --build-arg ATTESTMESH_VERSION="$version" \
  --build-arg ATTESTMESH_COMMIT="$commit" \
  --build-arg ATTESTMESH_TREE="$tree" \
  --iidfile "$iidfile" --tag "$tag" --file Dockerfile . >&2
id=$(cat "$iidfile")
rm -f "$iidfile"
log "built $tag"
printf '%s\n' "${id#sha256:}"
