#!/usr/bin/env bash
# deploy/node.sh NODE VERB: create, update, restart and check one node of a cluster (day-2 operations).
#
# Owns the order of a node's day-2 steps and the rule that drives them, "allowlist first": the KMS releases
# keys only to a CVM whose compose hash the cluster allowlists, so a new compose hash is learned without
# touching the node (prepare only), allowlisted on chain, and only then applied. Every step checks the
# chain or the provider before it writes, so a run killed anywhere and run again finishes the work without
# a second transaction. Every step is logged (deploy/lib.sh). Must not: hold a secret anywhere but in its
# environment (keys come only from ATTESTMESH_OWNER_KEY / ATTESTMESH_FUNDER_KEY, the Phala API key from
# PHALA_CLOUD_API_KEY), or decide anything the chain, the node's /healthz or the provider can answer.
#
# Verbs:
#   all          create the node: its app contract and pre-approved app id, the compose hash allowlisted,
#                the CVM created and booted, its signer funded, then mesh-verify. Re-running changes
#                nothing and says so.
#   update       apply COMPOSE_FILE (devnet) or COMPOSE + ENV_FILE (phala), or the lab's / COMPOSE's compose
#                with SIDECAR_IMAGE (an image roll; pinned by digest, a new compose hash): prepare only (learn
#                the new compose hash), allowlist it if needed, apply, mesh-verify; the member id must not
#                change; then retire the compose the node left (removeComposeHash) once no node runs it.
#   restart      restart the node's CVM (a tagged image is pulled again: pull_policy always); no allowlist
#                step.
#   mesh-verify  poll the node's /healthz until it is healthy or MESH_VERIFY_TIMEOUT passes.
#   status       what the chain, the provider and /healthz say about the node (reads only).
#
# Providers (PROVIDER): devnet (default; the local lab of `attestmesh devnet`) and phala (the `phala` CLI).
# Settings (environment):
#   ATTESTMESH_OWNER_KEY      cluster owner key (devnet: the lab's well-known anvil key 0 when unset)
#   ATTESTMESH_FUNDER_KEY     pays the signer's gas (default: the owner key)
#   ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_MEMBER_APP_FACTORY
#   ATTESTMESH_KMS_ROOTS [ATTESTMESH_INDEXER_REGISTRY]
#                             the chain and the cluster's trust anchors (devnet: read from the lab)
#   FUND_MIN_BALANCE FUND_AMOUNT  top the signer up to AMOUNT ETH when below MIN (default 0.05 / 0.5)
#   MESH_VERIFY_TIMEOUT MESH_VERIFY_INTERVAL  seconds (default 300 / 2)
#   HEALTH_URL                the node's /healthz (default: devnet from the lab; phala
#                             https://<app id>-9090.<PHALA_GATEWAY_DOMAIN>/healthz)
#   SIDECAR_IMAGE             the sidecar image the compose names (ghcr.io/…/attestmesh-sidecar@sha256:…)
#   KEEP_OLD_COMPOSE          1: update leaves the compose hash the node left on the allowlist
#   devnet:  COMPOSE_FILE     the node's app-compose.json (default: the lab's, its anchors as literals, with
#            SIDECAR_IMAGE when set: `attestmesh devnet compose --image`)
#   phala:   COMPOSE (the template, default compose/node.yaml: rendered with the trust anchors above by
#            `attestmesh compose node`, SIDECAR_IMAGE pins the image), ENV_FILE (the sealed env, required;
#            it must not name a trust anchor), PHALA_CLOUD_API_KEY,
#            PHALA_KMS (default base), PHALA_KMS_CONTRACT, PHALA_NODE_ID, PHALA_INSTANCE_TYPE,
#            PHALA_GATEWAY_DOMAIN, PHALA_CLI (default phala)
# Bring-up order of a cluster: deploy the cluster, render the compose with its address (this routine does,
# from the trust anchors), allowlist its hash (the allowlist step), then the nodes.
# Exit codes: 0 done, 1 a step failed (the log says which and why), 2 bad usage.

set -euo pipefail

DEPLOY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_ROOT")
# shellcheck source=deploy/lib.sh
source "$DEPLOY_ROOT/lib.sh"
DEPLOY_SECRET_VARS+=" PHALA_COMMIT_TOKEN"

(($# == 2)) || deploy_usage
NODE=$1
VERB=$2
case $VERB in all | update | restart | mesh-verify | status) ;; *) deploy_usage ;; esac
deploy_check_target node.sh "$NODE"
deploy_tools
FUND_MIN_BALANCE=${FUND_MIN_BALANCE:-0.05}
FUND_AMOUNT=${FUND_AMOUNT:-0.5}
MESH_VERIFY_TIMEOUT=${MESH_VERIFY_TIMEOUT:-300}
MESH_VERIFY_INTERVAL=${MESH_VERIFY_INTERVAL:-2}

deploy_init node "$NODE" "$VERB"

# --- provider facts ------------------------------------------------------------------------------------

# The chain settings: from the lab on the devnet, from the environment elsewhere.
load_chain() {
  if [[ $PROVIDER == devnet ]]; then
    local facts url
    # The lab's chain and the node's facts as the run starts (one CLI call; steps re-read what they change).
    facts=$("$ATTESTMESH" devnet env "$NODE") || deploy_fail "the devnet lab is not running (attestmesh devnet up)"
    printf '%s\n' "$facts" >"$DEPLOY_RUN_DIR/facts"
    deploy_devnet_gateway "$facts"
    if [[ -z ${COMPOSE_FILE:-} && -n ${SIDECAR_IMAGE:-} ]]; then
      mkdir -p "$(deploy_state_dir)"
      "$ATTESTMESH" devnet compose --image "$SIDECAR_IMAGE" --output "$(deploy_state_dir)/app-compose.json" ||
        deploy_fail "cannot write the lab's compose with the image $SIDECAR_IMAGE"
    fi
    url=$(deploy_shell_value "$facts" NODE_HEALTH_URL) # empty while the node does not exist yet
    if [[ -n $url ]]; then printf '%s\n' "$url" >"$DEPLOY_RUN_DIR/health_url"; fi
    export ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_MEMBER_APP_FACTORY
    ATTESTMESH_RPC_URL=$(deploy_shell_value "$facts" ATTESTMESH_RPC_URL)
    ATTESTMESH_CHAIN_ID=$(deploy_shell_value "$facts" ATTESTMESH_CHAIN_ID)
    ATTESTMESH_CLUSTER=$(deploy_shell_value "$facts" ATTESTMESH_CLUSTER)
    ATTESTMESH_MEMBER_APP_FACTORY=$(deploy_shell_value "$facts" ATTESTMESH_MEMBER_APP_FACTORY)
    export ATTESTMESH_OWNER_KEY=${ATTESTMESH_OWNER_KEY:-$DEPLOY_DEVNET_OWNER_KEY}
  else
    deploy_require ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_MEMBER_APP_FACTORY \
      ATTESTMESH_KMS_ROOTS
    export ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_MEMBER_APP_FACTORY \
      ATTESTMESH_KMS_ROOTS
    check_sealed_env
    render_compose
  fi
}

# The trust anchors: literals of the rendered compose (measured), never names of the sealed env.
MEASURED_VARS="ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_MEMBER_APP_FACTORY ATTESTMESH_KMS_ROOTS"
MEASURED_VARS+=" ATTESTMESH_INDEXER_REGISTRY"

# check_sealed_env: ENV_FILE (its names become allowed_envs) names no trust anchor.
check_sealed_env() {
  [[ -n ${ENV_FILE:-} && -f $ENV_FILE ]] || return 0
  local name found=()
  for name in $MEASURED_VARS; do
    if grep -Eq "^[[:space:]]*(export[[:space:]]+)?${name}[[:space:]]*=" "$ENV_FILE"; then found+=("$name"); fi
  done
  ((${#found[@]} == 0)) ||
    deploy_fail "ENV_FILE names trust anchors (${found[*]}): they are literals of the compose, not sealed"
}

# devnet_fact KEY: one of the node's facts from `attestmesh devnet env NODE`.
devnet_fact() {
  local facts
  facts=$("$ATTESTMESH" devnet env "$NODE") || return 1
  deploy_shell_value "$facts" "$1"
}

# health_url: where the node's /healthz answers (looked up once per run).
health_url() {
  if [[ -n ${HEALTH_URL:-} ]]; then
    printf '%s\n' "$HEALTH_URL"
  elif [[ -s $DEPLOY_RUN_DIR/health_url ]]; then
    cat "$DEPLOY_RUN_DIR/health_url"
  elif [[ $PROVIDER == devnet ]]; then
    devnet_fact NODE_HEALTH_URL | tee "$DEPLOY_RUN_DIR/health_url"
  else
    local app_id
    app_id=$(deploy_state_get APP_ID) || deploy_fail "no app id recorded for $NODE (run all first)"
    deploy_require PHALA_GATEWAY_DOMAIN
    printf 'https://%s-9090.%s/healthz\n' "${app_id#0x}" "$PHALA_GATEWAY_DOMAIN"
  fi
}

# fetch_health FILE: the node's /healthz body into FILE (empty when it does not answer); returns 0 iff the
# node is healthy (HTTP 200 and "healthy": true). The operator CLI reads it as an operator would: through
# the gateway on the devnet's gateway mode (ATTESTMESH_CA_FILE, ATTESTMESH_CONNECT_TO) and on Phala.
fetch_health() {
  local url
  url=$(health_url)
  [[ -n $url ]] || return 1
  "$ATTESTMESH" health "$url" --json --timeout 5 >"$1" 2>/dev/null
}

# compose_file: the compose this node boots with. Devnet: COMPOSE_FILE, or the lab's app-compose.json (its
# cluster's anchors as literals; with SIDECAR_IMAGE, written into the node's state directory). Phala: the
# template COMPOSE rendered with the cluster's trust anchors (`attestmesh compose node`) into the node's
# state directory.
compose_file() {
  if [[ $PROVIDER == devnet ]]; then
    if [[ -n ${COMPOSE_FILE:-} ]]; then
      printf '%s\n' "$COMPOSE_FILE"
    elif [[ -n ${SIDECAR_IMAGE:-} ]]; then
      printf '%s\n' "$(deploy_state_dir)/app-compose.json"
    else
      deploy_shell_value "$(cat "$DEPLOY_RUN_DIR/facts")" LAB_COMPOSE_FILE
    fi
  else
    printf '%s\n' "$(deploy_state_dir)/node.yaml"
  fi
}

# render_compose (phala): the template with the cluster's trust anchors as literals (the environment's
# ATTESTMESH_* values), where compose_file finds it; the same anchors give the same bytes on every run.
render_compose() {
  local extra=()
  [[ -n ${SIDECAR_IMAGE:-} ]] && extra+=(--image "$SIDECAR_IMAGE")
  "$ATTESTMESH" compose node --template "${COMPOSE:-$REPO_ROOT/compose/node.yaml}" \
    --output "$(deploy_state_dir)/node.yaml" "${extra[@]}" ||
    deploy_fail "cannot render the compose with the cluster's trust anchors"
}

phala_cli() {
  deploy_require PHALA_CLOUD_API_KEY
  "$PHALA" "$@"
}

# --- steps ---------------------------------------------------------------------------------------------

# step_prepare: learn the compose hash the node would boot with, touching nothing (prepare only).
step_prepare() {
  local out hash
  if [[ $PROVIDER == devnet ]]; then
    out=$("$ATTESTMESH" devnet node prepare "$NODE" --compose-file "$(compose_file)" --shell) || return 1
    hash=$(deploy_shell_value "$out" COMPOSE_HASH)
  else
    local cvm
    cvm=$(deploy_state_get CVM_ID) || deploy_fail "no CVM recorded for $NODE (run all first)"
    deploy_require ENV_FILE
    phala_cli deploy --cvm-id "$cvm" --compose "$(compose_file)" -e "$ENV_FILE" --prepare-only --json \
      >"$DEPLOY_RUN_DIR/prepare.json" || return 1
    hash=$(deploy_json_get "$DEPLOY_RUN_DIR/prepare.json" compose_hash)
    local token
    token=$(deploy_json_get "$DEPLOY_RUN_DIR/prepare.json" commit_token)
    # The commit token authorises applying this prepared update: kept in the state directory, never shown.
    if [[ -n $token ]]; then deploy_state_set COMMIT_TOKEN "$token"; fi
  fi
  [[ $hash =~ ^0x[0-9a-fA-F]{64}$ ]] || deploy_fail "prepare gave no compose hash"
  deploy_state_set COMPOSE_HASH "$hash"
  echo "new compose hash $hash"
}

# step_app: the node's app contract and its pre-approved app id (the cold-start rule).
step_app() {
  local out
  out=$("$ATTESTMESH" chain member-app --name "$NODE") || return 1
  echo "$out"
  [[ $out == *"nothing changed"* ]] || deploy_changed app
  [[ $out =~ app\ (0x[0-9a-fA-F]{40}) ]] || return 1
  deploy_state_set APP_ID "${BASH_REMATCH[1]}"
}

# step_allowlist: the compose hash on the cluster's allowlist (a transaction only when it is missing).
step_allowlist() {
  local hash out
  hash=$(deploy_state_get COMPOSE_HASH) || deploy_fail "no compose hash learned yet"
  out=$("$ATTESTMESH" chain allow-compose --compose-hash "$hash") || return 1
  echo "$out"
  [[ $out == *"already allowlisted"* ]] || deploy_changed allowlist
}

# step_boot_devnet: create the node (or start it when it exists but is off).
step_boot_devnet() {
  local facts exists running hash
  facts=$(cat "$DEPLOY_RUN_DIR/facts") # as the run started: the steps before this one change no node
  exists=$(deploy_shell_value "$facts" NODE_EXISTS)
  running=$(deploy_shell_value "$facts" NODE_RUNNING)
  hash=$(deploy_state_get COMPOSE_HASH) || return 1
  # `node add` and `node start` exit 1 when the KMS boot gate denies the node (the reason on stderr).
  if [[ $exists != 1 ]]; then
    deploy_changed boot
    "$ATTESTMESH" devnet node add "$NODE" --compose-file "$(compose_file)" || return 1
  elif [[ $(deploy_shell_value "$facts" NODE_COMPOSE_HASH) != "$hash" ]]; then
    echo "$NODE runs compose $(deploy_shell_value "$facts" NODE_COMPOSE_HASH), not $hash: use the update verb"
    return 1
  elif [[ $running == 1 ]]; then
    echo "$NODE already exists and runs; nothing to boot"
  else
    deploy_changed boot
    "$ATTESTMESH" devnet node start "$NODE" || return 1
  fi
}

# step_create_phala: create the CVM under the node's app id, unless it exists (found by name).
step_create_phala() {
  local app_id cvm
  app_id=$(deploy_state_get APP_ID) || deploy_fail "no app id recorded"
  if cvm=$(deploy_state_get CVM_ID); then
    echo "CVM $cvm already created"
    return 0
  fi
  phala_cli cvms list --json >"$DEPLOY_RUN_DIR/cvms.json" || return 1
  cvm=$(python3 - "$DEPLOY_RUN_DIR/cvms.json" "$NODE" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))
items = items.get("items", items) if isinstance(items, dict) else items
for cvm in items:
    if cvm.get("name") == sys.argv[2]:
        print(cvm.get("vm_uuid") or cvm.get("id"))
        break
EOF
  )
  if [[ -n $cvm ]]; then
    echo "CVM $cvm named $NODE exists already (a previous run created it)"
  else
    deploy_require ENV_FILE PHALA_KMS_CONTRACT
    local extra=()
    [[ -n ${PHALA_NODE_ID:-} ]] && extra+=(--node-id "$PHALA_NODE_ID")
    [[ -n ${PHALA_INSTANCE_TYPE:-} ]] && extra+=(--instance-type "$PHALA_INSTANCE_TYPE")
    phala_cli deploy --name "$NODE" --compose "$(compose_file)" -e "$ENV_FILE" --kms "${PHALA_KMS:-base}" \
      --kms-contract "$PHALA_KMS_CONTRACT" --custom-app-id "$app_id" "${extra[@]}" --json \
      >"$DEPLOY_RUN_DIR/deploy.json" || return 1
    cat "$DEPLOY_RUN_DIR/deploy.json"
    cvm=$(deploy_json_get "$DEPLOY_RUN_DIR/deploy.json" vm_uuid)
    [[ -n $cvm ]] || deploy_fail "phala deploy did not report a CVM id"
    deploy_changed create
  fi
  deploy_state_set CVM_ID "$cvm"
  # The compose hash the backend measured; the CVM booted with it, allowlisted or not.
  phala_cli cvms get "$cvm" --json >"$DEPLOY_RUN_DIR/cvm.json" || return 1
  local hash
  hash=$(deploy_json_get "$DEPLOY_RUN_DIR/cvm.json" compose_hash)
  [[ $hash == 0x* ]] || hash=0x$hash
  [[ $hash =~ ^0x[0-9a-fA-F]{64}$ ]] || deploy_fail "phala cvms get gave no compose hash"
  deploy_state_set COMPOSE_HASH "$hash"
  "$ATTESTMESH" chain status --compose-hash "$hash" --json >"$DEPLOY_RUN_DIR/chain.json" || return 1
  if [[ $(deploy_json_get "$DEPLOY_RUN_DIR/chain.json" compose_hashes.0.allowlisted) != true ]]; then
    # It booted before the allowlist had its hash: the KMS refused it keys; restart after allowlisting.
    deploy_state_set NEEDS_RESTART 1
  fi
  echo "CVM $cvm app $app_id compose $hash"
}

# step_restart_if_needed (phala): the CVM booted before its hash was allowlisted.
step_restart_if_needed() {
  if deploy_state_get NEEDS_RESTART >/dev/null; then
    deploy_changed restart
    phala_cli cvms restart "$(deploy_state_get CVM_ID)" || return 1
    deploy_state_clear NEEDS_RESTART
  else
    echo "no restart needed"
  fi
}

# step_fund: the node's signer (read from its /healthz) holds at least FUND_MIN_BALANCE.
step_fund() {
  local deadline signer="" out
  deadline=$((SECONDS + MESH_VERIFY_TIMEOUT))
  while [[ -z $signer ]]; do
    fetch_health "$DEPLOY_RUN_DIR/health.json" || true
    signer=$(deploy_json_get "$DEPLOY_RUN_DIR/health.json" node.signer)
    [[ -n $signer ]] && break
    ((SECONDS < deadline)) || deploy_fail "the node's /healthz showed no signer within ${MESH_VERIFY_TIMEOUT}s"
    sleep "$MESH_VERIFY_INTERVAL" # polling a remote service's answer, with a deadline
  done
  out=$("$ATTESTMESH" chain fund --to "$signer" --min-balance "$FUND_MIN_BALANCE" --amount "$FUND_AMOUNT") ||
    return 1
  echo "$out"
  [[ $out == *"nothing sent"* ]] || deploy_changed fund
}

# step_mesh_verify: poll /healthz until healthy (phase healthy) or the deadline.
step_mesh_verify() {
  local deadline phase last="" start=$SECONDS hz=$DEPLOY_RUN_DIR/health.json
  deadline=$((SECONDS + MESH_VERIFY_TIMEOUT))
  while true; do
    if fetch_health "$hz"; then
      echo "healthy after $((SECONDS - start))s: member $(deploy_json_get "$hz" node.member_id)" \
        "mesh ip $(deploy_json_get "$hz" node.mesh_ip)" \
        "peers live $(deploy_json_get "$hz" peers.live)/$(deploy_json_get "$hz" peers.desired)"
      deploy_json_get "$hz" node.member_id >"$DEPLOY_RUN_DIR/member_id"
      return 0
    fi
    if [[ -s $hz ]]; then
      phase="$(deploy_json_get "$hz" phase): $(deploy_json_get "$hz" reason)"
    else
      phase="no answer from $(health_url)"
    fi
    [[ $phase == "$last" ]] || echo "not healthy yet: $phase"
    last=$phase
    if ((SECONDS >= deadline)); then
      echo "not healthy after ${MESH_VERIFY_TIMEOUT}s: $phase"
      return 1
    fi
    sleep "$MESH_VERIFY_INTERVAL" # polling a remote service's answer, with a deadline
  done
}

# step_apply: apply the prepared compose (devnet: write it and reboot through the KMS gate).
step_apply() {
  local hash
  hash=$(deploy_state_get COMPOSE_HASH)
  if [[ $PROVIDER == devnet ]]; then
    local out
    remember_old_compose "$(deploy_shell_value "$(cat "$DEPLOY_RUN_DIR/facts")" NODE_COMPOSE_HASH)" "$hash"
    out=$("$ATTESTMESH" devnet node update "$NODE" --compose-file "$(compose_file)") || {
      echo "$out"
      return 1
    }
    echo "$out"
    [[ $out == *"nothing changed"* ]] || deploy_changed apply
  else
    local cvm current token
    cvm=$(deploy_state_get CVM_ID)
    phala_cli cvms get "$cvm" --json >"$DEPLOY_RUN_DIR/cvm.json" || return 1
    current=$(deploy_json_get "$DEPLOY_RUN_DIR/cvm.json" compose_hash)
    [[ $current == 0x* ]] || current=0x$current
    if [[ $current == "$hash" ]]; then
      echo "CVM $cvm already runs compose $hash"
      return 0
    fi
    remember_old_compose "$current" "$hash"
    token=$(deploy_state_get COMMIT_TOKEN) || deploy_fail "no commit token from the prepare step"
    PHALA_COMMIT_TOKEN=$token
    # The hash is on the cluster's allowlist already (our step): nothing for the CLI to send on chain.
    deploy_changed apply
    phala_cli deploy --cvm-id "$cvm" --commit --token "$PHALA_COMMIT_TOKEN" --compose-hash "$hash" \
      --transaction-hash already-registered --json || return 1
    deploy_state_clear COMMIT_TOKEN
  fi
}

# remember_old_compose CURRENT NEW: before the node leaves compose CURRENT for NEW, record CURRENT for the
# retire step (once: a re-run after the apply sees NEW as current and keeps the first record).
remember_old_compose() {
  if [[ -n $1 && $1 != "$2" ]] && ! deploy_state_get OLD_COMPOSE_HASH >/dev/null; then
    deploy_state_set OLD_COMPOSE_HASH "$1"
    echo "leaving compose $1"
  fi
}

# compose_users HASH: the other nodes (devnet: the lab's, stopped ones too) or CVMs (phala: this account's)
# whose compose hash is HASH, space-separated; exit 1 when that cannot be read.
compose_users() {
  if [[ $PROVIDER == devnet ]]; then
    local pairs
    pairs=$(devnet_fact LAB_NODE_COMPOSE_HASHES) || return 1
    python3 - "$1" "$NODE" "$pairs" <<'EOF'
import sys
want, me = sys.argv[1].lower(), sys.argv[2]
pairs = (pair.partition("=") for pair in sys.argv[3].split())
print(" ".join(name for name, _, hash in pairs if name != me and hash.lower() == want))
EOF
  else
    phala_cli cvms list --json >"$DEPLOY_RUN_DIR/cvms.json" || return 1
    python3 - "$DEPLOY_RUN_DIR/cvms.json" "$1" "$NODE" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))
items = items.get("items", items) if isinstance(items, dict) else items
want, me = sys.argv[2].lower().removeprefix("0x"), sys.argv[3]
print(" ".join(
    str(c.get("name")) for c in items
    if c.get("name") != me and str(c.get("compose_hash") or "").lower().removeprefix("0x") == want
))
EOF
  fi
}

# step_retire: after the node is back healthy with its identity, take the compose hash it left off the
# allowlist, unless another node still runs it (it would drop to boot_gate, and its next boot be refused) or
# KEEP_OLD_COMPOSE=1.
step_retire() {
  local old users out
  if ! old=$(deploy_state_get OLD_COMPOSE_HASH); then
    echo "no compose to retire: the node ran this one already"
    return 0
  fi
  if [[ ${KEEP_OLD_COMPOSE:-0} == 1 ]]; then
    echo "compose $old stays allowlisted (KEEP_OLD_COMPOSE=1)"
    return 0
  fi
  users=$(compose_users "$old") || {
    echo "compose $old stays allowlisted: cannot tell which nodes still run it"
    return 0
  }
  if [[ -n $users ]]; then
    echo "compose $old stays allowlisted: still the compose of $users (the last node's update retires it)"
    return 0
  fi
  out=$("$ATTESTMESH" chain disallow-compose --compose-hash "$old") || return 1
  echo "$out"
  [[ $out == *"nothing changed"* ]] || deploy_changed retire
}

# step_restart: restart the node's CVM (a tag is pulled again: pull_policy always).
step_restart() {
  deploy_changed restart
  if [[ $PROVIDER == devnet ]]; then
    "$ATTESTMESH" devnet node reboot "$NODE" || return 1
  else
    local cvm
    cvm=$(deploy_state_get CVM_ID) || deploy_fail "no CVM recorded for $NODE (run all first)"
    phala_cli cvms restart "$cvm" || return 1
  fi
}

step_status() {
  local hash url
  echo "provider $PROVIDER  cluster $ATTESTMESH_CLUSTER  chain $ATTESTMESH_CHAIN_ID"
  if [[ $PROVIDER == devnet ]]; then
    "$ATTESTMESH" devnet env "$NODE" | grep '^NODE_' || return 1
    hash=$(devnet_fact NODE_COMPOSE_HASH)
  else
    local cvm
    cvm=$(deploy_state_get CVM_ID) || deploy_fail "no CVM recorded for $NODE"
    phala_cli cvms get "$cvm" --json >"$DEPLOY_RUN_DIR/cvm.json" || return 1
    hash=$(deploy_json_get "$DEPLOY_RUN_DIR/cvm.json" compose_hash)
    [[ $hash == 0x* ]] || hash=0x$hash
    echo "cvm $cvm status $(deploy_json_get "$DEPLOY_RUN_DIR/cvm.json" status) app $(deploy_state_get APP_ID)"
  fi
  if [[ -n $hash ]]; then
    "$ATTESTMESH" chain status --compose-hash "$hash" || return 1
  fi
  url=$(health_url)
  if [[ -n $url ]]; then "$ATTESTMESH" health "$url" || true; fi
}

# --- verbs ---------------------------------------------------------------------------------------------

# member_id_before: record the node's member id before a change (identity must carry over).
remember_member_id() {
  local id
  fetch_health "$DEPLOY_RUN_DIR/health.json" || true # an unhealthy node still tells its member id
  id=$(deploy_json_get "$DEPLOY_RUN_DIR/health.json" node.member_id)
  if [[ -n $id ]]; then
    deploy_state_set MEMBER_ID "$id"
    echo "member id before: $id"
  else
    echo "member id before: unknown (the node does not answer)"
  fi
}

check_identity() {
  local before after
  before=$(deploy_state_get MEMBER_ID) || {
    echo "no member id recorded before the change"
    return 0
  }
  after=$(cat "$DEPLOY_RUN_DIR/member_id")
  if [[ $before != "$after" ]]; then
    echo "member id changed: $before -> $after"
    return 1
  fi
  echo "identity carried over: member $after"
}

load_chain
case $VERB in
all)
  if [[ $PROVIDER == devnet ]]; then
    deploy_step prepare step_prepare || deploy_fail "prepare"
    deploy_step app step_app || deploy_fail "app contract / app id approval"
    deploy_step allowlist step_allowlist || deploy_fail "allowlist"
    deploy_step boot step_boot_devnet || deploy_fail "boot"
  else
    deploy_step app step_app || deploy_fail "app contract / app id approval"
    deploy_step create step_create_phala || deploy_fail "create"
    deploy_step allowlist step_allowlist || deploy_fail "allowlist"
    deploy_step restart step_restart_if_needed || deploy_fail "restart"
  fi
  deploy_step fund step_fund || deploy_fail "fund"
  deploy_step mesh-verify step_mesh_verify || deploy_fail "mesh-verify"
  deploy_finish "no transaction, no boot, no restart"
  ;;
update)
  if ! deploy_state_get MEMBER_ID >/dev/null; then
    deploy_step identity remember_member_id || deploy_fail "identity"
  fi
  deploy_step prepare step_prepare || deploy_fail "prepare"
  deploy_step allowlist step_allowlist || deploy_fail "allowlist"
  deploy_step apply step_apply || deploy_fail "apply (denied at the boot gate? the allowlist step must come first)"
  deploy_step mesh-verify step_mesh_verify || deploy_fail "mesh-verify"
  deploy_step identity-check check_identity || deploy_fail "identity"
  deploy_step retire step_retire || deploy_fail "retire"
  deploy_state_clear MEMBER_ID OLD_COMPOSE_HASH
  deploy_finish "no transaction, no boot, no restart"
  ;;
restart)
  deploy_step restart step_restart || deploy_fail "restart"
  deploy_finish "no transaction, no boot, no restart"
  ;;
mesh-verify)
  deploy_step mesh-verify step_mesh_verify || deploy_fail "mesh-verify"
  ;;
status)
  deploy_step status step_status || deploy_fail "status"
  ;;
esac
