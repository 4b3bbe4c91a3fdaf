# syntax=docker/dockerfile:1
# The AttestMesh image: ghcr.io/<owner>/attestmesh-sidecar (published by .github/workflows/image.yml).
#
# One image, three programs from one virtualenv at /opt/attestmesh: the entrypoint is the sidecar (the
# container entrypoint of every node's CVM); the shared indexer runs from the same image with
# `entrypoint: ["attestmesh-indexer"]` (compose/indexer.yaml); the operator CLI `attestmesh` (package `ops`:
# chain status, owner actions, indexer register/verify, health) is there too. The development lab (`devnet`,
# with its development KMS) is not: it is never copied into the build stage.
# The venv is built by scripts/build-venv.sh, the same recipe tests/component/test_image.py runs, so the test
# proves what the image runs; `make image` (scripts/image.sh) builds this file with podman, and
# tests/e2e/test_image_build.py builds and runs the result. See docs/image.md.
#
# Build arguments (all optional; `make image` passes them all):
#   BASE               the base of both stages: the official python:3.11-slim-bookworm by default; `make image`
#                      uses a local Debian bookworm made by mmdebstrap (no registry is reachable there).
#   PYTHON             that base's interpreter: /usr/local/bin/python3 in the official image, /usr/bin/python3
#                      in Debian's. The venv links to it, so both stages must have it at the same path.
#   ATTESTMESH_VERSION, ATTESTMESH_COMMIT, ATTESTMESH_TREE
#                      which code this is: the OCI labels, and the build record the venv carries
#                      (`python -m sidecar.buildinfo record`), which /healthz `build`, attestmesh_build_info and
#                      every `--version` report. Without them the commit is honestly "unknown".
#
# Must not: bake configuration or secrets into the image (every setting is an ATTESTMESH_* variable from the
# compose file / sealed env), declare a VOLUME (the compose file mounts a named volume at the state dir), or
# need curl/wget (the health probe is `python -m sidecar.healthcheck`), or keep pip or setuptools in the runtime
# stage (the venv is built in the build stage; nothing installs packages at run time).

ARG BASE=python:3.11-slim-bookworm
ARG PYTHON=/usr/local/bin/python3

# --- build: the virtualenv ------------------------------------------------------------------------------
FROM ${BASE} AS build
ARG PYTHON
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=${PYTHON}
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md constraints.txt ./
COPY scripts/build-venv.sh scripts/
COPY contracts/artifacts contracts/artifacts
COPY sidecar sidecar
COPY indexer indexer
COPY ops ops
RUN bash scripts/build-venv.sh /opt/attestmesh
# After the venv, so a new commit re-runs only this step.
ARG ATTESTMESH_COMMIT=unknown
ARG ATTESTMESH_TREE=unknown
RUN /opt/attestmesh/bin/python -m sidecar.buildinfo record --commit "${ATTESTMESH_COMMIT}" --tree "${ATTESTMESH_TREE}"

# --- runtime ----------------------------------------------------------------------------------------------
FROM ${BASE}
ARG PYTHON
# iproute2: `ip` for operators and the interface; wireguard-tools: `wg`; wireguard-go: the userspace backend
# when the CVM kernel has no WireGuard module (ATTESTMESH_WG_BACKEND=auto picks it). Versions are Debian 12's,
# pinned (hadolint DL3008): when a point release supersedes one, the build fails until the pin is updated.
# Then no pip and no setuptools: Debian's wheels of them (python3-venv's dependencies, in the local base) are
# purged, the official image's copies uninstalled, and the wheels ensurepip could restore them from deleted.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        iproute2=6.1.0-3 \
        wireguard-go=0.0.20220316-1+b4 \
        wireguard-tools=1.0.20210914-1+b1 \
    && apt-get purge -y --auto-remove python3-pip-whl python3-setuptools-whl \
    && rm -rf /var/lib/apt/lists/* \
    && if "${PYTHON}" -m pip --version >/dev/null 2>&1; then \
           "${PYTHON}" -m pip uninstall --yes --quiet pip setuptools wheel; \
       fi \
    && find /usr -path '*/ensurepip/_bundled/*.whl' -delete
COPY --from=build /opt/attestmesh /opt/attestmesh
ENV PATH=/opt/attestmesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ARG ATTESTMESH_VERSION=unknown
ARG ATTESTMESH_COMMIT=unknown
LABEL org.opencontainers.image.title="attestmesh-sidecar" \
      org.opencontainers.image.description="AttestMesh sidecar (entrypoint) and indexer for dstack CVM clusters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${ATTESTMESH_VERSION}" \
      org.opencontainers.image.revision="${ATTESTMESH_COMMIT}"
# 9090: /healthz, /livez, /metrics (ATTESTMESH_HEALTH_ADDR); 51820/udp: WireGuard; 8080: the indexer.
EXPOSE 9090 51820/udp 8080
# The probe follows ATTESTMESH_HEALTH_ADDR; the indexer's compose file replaces it with its own URL.
# start-period: a first boot waits for the signer to be funded, registration and the CSK; failures meanwhile
# do not count, and the first success ends it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=900s --retries=3 CMD ["python", "-m", "sidecar.healthcheck"]
# No USER: the sidecar runs as root on purpose. It creates the WireGuard interface and sets its address and
# routes (CAP_NET_ADMIN, plus /dev/net/tun for wireguard-go), and Docker gives cap_add capabilities to root
# only: a non-root USER starts with an empty effective set. File capabilities on the interpreter would be the
# alternative, and would hand NET_ADMIN to any Python program in the image.
ENTRYPOINT ["attestmesh-sidecar"]
