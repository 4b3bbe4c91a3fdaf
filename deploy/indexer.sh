#!/usr/bin/env bash
# deploy/indexer.sh NAME VERB: run, update, register and check the chain's shared indexer (day-2 operations).
#
# Owns the order of the indexer's day-2 steps. The indexer is a stock dstack app, not a cluster member: no
# cluster allowlist gates it (on Phala its own app contract is Phala's stock DstackApp, which the `phala`
# CLI allowlists itself). What sidecars trust is the on-chain IndexerRegistry record (endpoint, code id,
# public key), so the routine registers what the running indexer reports on its /status (the key is read
# there, never scraped from logs), and `setIndexer` is sent only when the record differs: a run killed at
# any step and run again finishes the work without a second transaction. Every step is logged
# (deploy/lib.sh). Must not: hold a secret anywhere but in its environment (the registry owner's key only
# from ATTESTMESH_OWNER_KEY, the Phala API key from PHALA_CLOUD_API_KEY; never on a command line), or decide
# anything the chain, the indexer's /status and /healthz or the provider can answer.
#
# Verbs:
#   all       make the indexer run (devnet: start it; phala: deploy the CVM unless one of this NAME exists),
#             then register, then verify. Re-running changes nothing and says so.
#   update    apply ENV_FILE (and on phala COMPOSE) to the indexer and restart it, then register (a no-op
#             unless its key or endpoint changed), then verify. Re-running changes nothing.
#   register  IndexerRegistry.setIndexer(endpoint, code id, key from /status), only when the record differs.
#   verify    poll until the indexer's /healthz is healthy and the registry names what its /status says
#             (key, code id, endpoint), or VERIFY_TIMEOUT passes; the failure names the mismatch.
#
# Providers (PROVIDER): devnet (default; the lab of `attestmesh devnet`, whose one indexer NAME stands for)
# and phala (the `phala` CLI).
# Settings (environment):
#   ATTESTMESH_OWNER_KEY      the registry owner's key (devnet: the lab's well-known anvil key 0 when unset)
#   ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_INDEXER_REGISTRY  the chain (devnet: from the lab)
#   ENV_FILE                  the indexer's sealed env (KEY=value lines; required by update, and by all on
#                             phala); devnet: ATTESTMESH_INDEXER_KEY_VERSION and the tunables are applied
#   INDEXER_STATUS_URL INDEXER_HEALTH_URL  its /status and /healthz (default: devnet from the lab; phala
#                             https://<app id>-8080.<PHALA_GATEWAY_DOMAIN>/status and .../healthz)
#   INDEXER_ENDPOINT INDEXER_CODE_ID  register and verify these instead of what /status reports
#   VERIFY_TIMEOUT VERIFY_INTERVAL  seconds (default 120 / 2)
#   STATUS_TIMEOUT            seconds register waits for /status to show the key (of ENV_FILE's key version
#                             after an update) (default 300)
#   phala:   COMPOSE (default compose/indexer.yaml), PHALA_CLOUD_API_KEY, PHALA_KMS (default base),
#            PHALA_KMS_CONTRACT, PHALA_NODE_ID, PHALA_INSTANCE_TYPE, PHALA_GATEWAY_DOMAIN, PHALA_CLI (default
#            phala), ATTESTMESH_INDEXER_APP_KEY (owns the indexer's own app contract; default the owner key;
#            given to the CLI as its PRIVATE_KEY environment variable), FORCE=1 (update applies and restarts
#            even when this compose and env file were applied already)
# Exit codes: 0 done, 1 a step failed (the log says which and why), 2 bad usage.

set -euo pipefail

DEPLOY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_ROOT")
# shellcheck source=deploy/lib.sh
source "$DEPLOY_ROOT/lib.sh"
DEPLOY_SECRET_VARS+=" ATTESTMESH_INDEXER_APP_KEY PRIVATE_KEY ETH_RPC_URL"

(($# == 2)) || deploy_usage
NAME=$1
VERB=$2
case $VERB in all | update | register | verify) ;; *) deploy_usage ;; esac
deploy_check_target indexer.sh "$NAME"
deploy_tools
VERIFY_TIMEOUT=${VERIFY_TIMEOUT:-120}
VERIFY_INTERVAL=${VERIFY_INTERVAL:-2}
STATUS_TIMEOUT=${STATUS_TIMEOUT:-300}

deploy_init indexer "$NAME" "$VERB"

# --- small helpers -------------------------------------------------------------------------------------

# env_file_value NAME: the value of NAME in ENV_FILE (empty when absent). Reads that one line only: the file
# holds secrets (the indexer's RPC URL), and no other value of it is ever printed.
env_file_value() {
  python3 - "$ENV_FILE" "$1" <<'EOF'
import sys
value = ""
for raw in open(sys.argv[1]).read().splitlines():
    line = raw.strip()
    if line.startswith("export "):
        line = line[len("export "):].lstrip()
    name, sep, rest = line.partition("=")
    if sep and name.strip() == sys.argv[2]:
        value = rest.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
print(value)
EOF
}

compose_file() { printf '%s\n' "${COMPOSE:-$REPO_ROOT/compose/indexer.yaml}"; }

# fingerprint: what an update applies (the compose file and the sealed env file), as one sha256.
fingerprint() {
  local sum
  sum=$(cat "$(compose_file)" "$ENV_FILE" | sha256sum) || return 1
  printf '%s\n' "${sum%% *}"
}

# phala ARG...: the Phala CLI (`command`: PHALA is "phala" by default, the name of this very function).
phala() {
  deploy_require PHALA_CLOUD_API_KEY
  command "$PHALA" "$@"
}

# phala_deploy ARG...: `phala deploy` that may write to the indexer's own app contract (a stock DstackApp:
# the CLI registers the compose hash there). Its key and RPC URL reach the CLI as its PRIVATE_KEY and
# ETH_RPC_URL environment variables, never as arguments.
phala_deploy() {
  (
    key=${ATTESTMESH_INDEXER_APP_KEY:-${ATTESTMESH_OWNER_KEY:-}}
    if [[ -n $key ]]; then export PRIVATE_KEY=$key; fi
    export ETH_RPC_URL=$ATTESTMESH_RPC_URL
    phala deploy "$@"
  )
}

# --- provider facts ------------------------------------------------------------------------------------

DEVNET_STATUS_URL=""
DEVNET_HEALTH_URL=""

# The chain settings (and on the devnet the indexer's URLs): from the lab, or from the environment.
load_chain() {
  if [[ $PROVIDER == devnet ]]; then
    local facts
    facts=$("$ATTESTMESH" devnet env) || deploy_fail "the devnet lab is not running (attestmesh devnet up)"
    deploy_devnet_gateway "$facts"
    export ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_INDEXER_REGISTRY
    ATTESTMESH_RPC_URL=$(deploy_shell_value "$facts" ATTESTMESH_RPC_URL)
    ATTESTMESH_CHAIN_ID=$(deploy_shell_value "$facts" ATTESTMESH_CHAIN_ID)
    ATTESTMESH_INDEXER_REGISTRY=$(deploy_shell_value "$facts" ATTESTMESH_INDEXER_REGISTRY)
    DEVNET_STATUS_URL=$(deploy_shell_value "$facts" INDEXER_STATUS_URL)
    DEVNET_HEALTH_URL=$(deploy_shell_value "$facts" INDEXER_HEALTH_URL)
    [[ -n $DEVNET_STATUS_URL ]] || deploy_fail "the lab runs no indexer (it was made with --no-indexer)"
    export ATTESTMESH_OWNER_KEY=${ATTESTMESH_OWNER_KEY:-$DEPLOY_DEVNET_OWNER_KEY}
  else
    deploy_require ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_INDEXER_REGISTRY
    export ATTESTMESH_RPC_URL ATTESTMESH_CHAIN_ID ATTESTMESH_INDEXER_REGISTRY
  fi
  deploy_log "chain $ATTESTMESH_CHAIN_ID, indexer registry $ATTESTMESH_INDEXER_REGISTRY"
}

# indexer_url status|healthz: where the indexer's /status or /healthz answers.
indexer_url() {
  local override app_id
  if [[ $1 == status ]]; then override=${INDEXER_STATUS_URL:-}; else override=${INDEXER_HEALTH_URL:-}; fi
  if [[ -n $override ]]; then
    printf '%s\n' "$override"
  elif [[ $PROVIDER == devnet ]]; then
    if [[ $1 == status ]]; then printf '%s\n' "$DEVNET_STATUS_URL"; else printf '%s\n' "$DEVNET_HEALTH_URL"; fi
  else
    app_id=$(deploy_state_get APP_ID) || deploy_fail "no app id recorded for $NAME (run the all verb first)"
    deploy_require PHALA_GATEWAY_DOMAIN
    printf 'https://%s-8080.%s/%s\n' "${app_id#0x}" "$PHALA_GATEWAY_DOMAIN" "$1"
  fi
}

# status_shows_key URL FILE [VERSION]: the indexer's /status into FILE (empty when it does not answer);
# 0 iff it shows a public key (of key version VERSION when given). Read with the operator CLI, so a lab in
# gateway mode is read through its gateway (ATTESTMESH_CA_FILE, ATTESTMESH_CONNECT_TO), as on Phala.
status_shows_key() {
  "$ATTESTMESH" indexer status "$1" >"$2" 2>/dev/null || return 1
  [[ -z ${3:-} ]] && return 0
  python3 - "$2" "$3" <<'EOF'
import json, sys
path, version = sys.argv[1], sys.argv[2]
sys.exit(0 if str(json.load(open(path)).get("key_version")) == version else 1)
EOF
}

# endpoint_args: --endpoint / --code-id when INDEXER_ENDPOINT / INDEXER_CODE_ID override /status.
endpoint_args() {
  if [[ -n ${INDEXER_ENDPOINT:-} ]]; then printf '%s\n' --endpoint "$INDEXER_ENDPOINT"; fi
  if [[ -n ${INDEXER_CODE_ID:-} ]]; then printf '%s\n' --code-id "$INDEXER_CODE_ID"; fi
}

# --- steps ---------------------------------------------------------------------------------------------

# step_start_devnet: the lab's indexer runs (started when it does not), not registered here.
step_start_devnet() {
  local out
  out=$("$ATTESTMESH" devnet indexer start --no-register) || {
    echo "$out"
    return 1
  }
  echo "$out"
  [[ $out == *"nothing changed"* ]] || deploy_changed start
}

# step_apply_devnet: ENV_FILE's values applied to the lab's indexer and the indexer restarted with them
# (nothing is done when it already runs with them); not registered here.
step_apply_devnet() {
  local out
  out=$("$ATTESTMESH" devnet indexer update --env-file "$ENV_FILE") || {
    echo "$out"
    return 1
  }
  echo "$out"
  if [[ $out != *"nothing changed"* ]]; then
    deploy_changed apply
    deploy_changed restart
  fi
}

# step_deploy_phala: the indexer's CVM, unless one of this name exists (found by name: a run killed after
# `phala deploy` and before recording the CVM finds it and creates no second one).
step_deploy_phala() {
  local cvm found app fp
  if cvm=$(deploy_state_get CVM_ID); then
    echo "CVM $cvm already deployed (app $(deploy_state_get APP_ID))"
    return 0
  fi
  phala cvms list --json >"$DEPLOY_RUN_DIR/cvms.json" || return 1
  found=$(
    python3 - "$DEPLOY_RUN_DIR/cvms.json" "$NAME" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))
items = items.get("items", items) if isinstance(items, dict) else items
for cvm in items:
    if cvm.get("name") == sys.argv[2]:
        print(cvm.get("vm_uuid") or cvm.get("id"), cvm.get("app_id") or "")
        break
EOF
  ) || return 1
  read -r cvm app <<<"$found" || true
  if [[ -n $cvm ]]; then
    echo "CVM $cvm named $NAME exists already (a previous run created it)"
  else
    deploy_require ENV_FILE PHALA_KMS_CONTRACT
    fp=$(fingerprint) || return 1
    local extra=()
    if [[ -n ${PHALA_NODE_ID:-} ]]; then extra+=(--node-id "$PHALA_NODE_ID"); fi
    if [[ -n ${PHALA_INSTANCE_TYPE:-} ]]; then extra+=(--instance-type "$PHALA_INSTANCE_TYPE"); fi
    echo "a stock dstack app (Phala's DstackApp), not a cluster member: no cluster allowlist step"
    deploy_changed deploy
    phala_deploy --name "$NAME" --compose "$(compose_file)" -e "$ENV_FILE" --kms "${PHALA_KMS:-base}" \
      --kms-contract "$PHALA_KMS_CONTRACT" "${extra[@]}" --json >"$DEPLOY_RUN_DIR/deploy.json" || return 1
    cat "$DEPLOY_RUN_DIR/deploy.json"
    cvm=$(deploy_json_get "$DEPLOY_RUN_DIR/deploy.json" vm_uuid)
    app=$(deploy_json_get "$DEPLOY_RUN_DIR/deploy.json" app_id)
    # It boots with these files: an update with the same ones has nothing to apply.
    deploy_state_set APPLIED "$fp"
    deploy_state_set RESTARTED "$fp"
  fi
  if [[ -z $cvm || -z $app ]]; then
    echo "phala did not report the CVM id and app id of $NAME"
    return 1
  fi
  deploy_state_set APP_ID "$app"
  deploy_state_set CVM_ID "$cvm" # last: its presence means this step is done
  echo "CVM $cvm app $app"
}

# phala_cvm: the CVM recorded by the all verb.
phala_cvm() {
  deploy_state_get CVM_ID || deploy_fail "no CVM recorded for $NAME (run the all verb first)"
}

# step_prepare_phala: the compose hash the update brings, learned without touching the CVM (prepare only).
step_prepare_phala() {
  local cvm hash
  cvm=$(phala_cvm) || return 1
  phala deploy --cvm-id "$cvm" --compose "$(compose_file)" -e "$ENV_FILE" --prepare-only --json \
    >"$DEPLOY_RUN_DIR/prepare.json" || return 1
  hash=$(deploy_json_get "$DEPLOY_RUN_DIR/prepare.json" compose_hash)
  [[ $hash == 0x* ]] || hash=0x$hash
  if [[ ! $hash =~ ^0x[0-9a-fA-F]{64}$ ]]; then
    echo "phala deploy --prepare-only reported no compose hash"
    return 1
  fi
  echo "compose hash of the update: $hash"
  echo "the indexer's app contract is Phala's stock DstackApp (the CLI allowlists the hash there when it" \
    "applies the update); the cluster allowlist does not gate the indexer: no allowlist step"
}

# step_apply_phala: the compose and sealed env applied to the CVM (skipped when this run's files were).
step_apply_phala() {
  local cvm fp
  cvm=$(phala_cvm) || return 1
  fp=$(fingerprint) || return 1
  if [[ $(deploy_state_get APPLIED || true) == "$fp" && -z ${FORCE:-} ]]; then
    echo "CVM $cvm already has this compose and env file (applied by an earlier run; FORCE=1 applies again)"
    return 0
  fi
  deploy_changed apply
  phala_deploy --cvm-id "$cvm" --compose "$(compose_file)" -e "$ENV_FILE" --json >"$DEPLOY_RUN_DIR/apply.json" ||
    return 1
  cat "$DEPLOY_RUN_DIR/apply.json"
  deploy_state_clear RESTARTED
  deploy_state_set APPLIED "$fp"
}

# step_restart_phala: the CVM restarted, so that it runs what was applied (once per applied update).
step_restart_phala() {
  local cvm fp
  cvm=$(phala_cvm) || return 1
  fp=$(fingerprint) || return 1
  if [[ $(deploy_state_get RESTARTED || true) == "$fp" && -z ${FORCE:-} ]]; then
    echo "CVM $cvm was restarted with this compose and env file already"
    return 0
  fi
  deploy_changed restart
  phala cvms restart "$cvm" || return 1
  deploy_state_set RESTARTED "$fp"
}

# step_register: wait until /status shows the indexer's key (after an update: of ENV_FILE's key version,
# so the key of an indexer still on its way down is never registered), then register it; the transaction
# is sent only when the registry record differs.
step_register() {
  local url version="" deadline out args
  url=$(indexer_url status) || return 1
  if [[ $DEPLOY_VERB == update ]]; then
    version=$(env_file_value ATTESTMESH_INDEXER_KEY_VERSION) || return 1
    version=${version:-1}
  fi
  deadline=$((SECONDS + STATUS_TIMEOUT))
  until status_shows_key "$url" "$DEPLOY_RUN_DIR/status.json" "$version"; do
    if ((SECONDS >= deadline)); then
      echo "$url showed no public key${version:+ of key version $version} within ${STATUS_TIMEOUT}s" \
        "(last answer: key version $(deploy_json_get "$DEPLOY_RUN_DIR/status.json" key_version), key" \
        "$(deploy_json_get "$DEPLOY_RUN_DIR/status.json" public_key))"
      return 1
    fi
    sleep "$VERIFY_INTERVAL" # polling a remote service's answer, with a deadline
  done
  echo "the indexer shows key $(deploy_json_get "$DEPLOY_RUN_DIR/status.json" public_key)" \
    "(v$(deploy_json_get "$DEPLOY_RUN_DIR/status.json" key_version))"
  mapfile -t args < <(endpoint_args)
  out=$("$ATTESTMESH" indexer register --status-url "$url" "${args[@]}") || {
    echo "$out"
    return 1
  }
  echo "$out"
  [[ $out == *"nothing changed"* ]] || deploy_changed register
}

# step_verify: healthy, and the registry names what /status says, within VERIFY_TIMEOUT.
step_verify() {
  local status health args
  status=$(indexer_url status) || return 1
  health=$(indexer_url healthz) || return 1
  mapfile -t args < <(endpoint_args)
  "$ATTESTMESH" indexer verify --status-url "$status" --health-url "$health" "${args[@]}" \
    --wait "$VERIFY_TIMEOUT" --interval "$VERIFY_INTERVAL"
}

# --- verbs ---------------------------------------------------------------------------------------------

register() { deploy_step register step_register || deploy_fail "register"; }

verify() {
  deploy_step verify step_verify ||
    deploy_fail "verify: the indexer is not healthy or the registry does not name it (the step names the" \
      "mismatch; \`deploy/indexer.sh $NAME register\` writes the record)"
}

load_chain
case $VERB in
all)
  if [[ $PROVIDER == devnet ]]; then
    deploy_step start step_start_devnet || deploy_fail "start"
  else
    deploy_step deploy step_deploy_phala || deploy_fail "deploy"
  fi
  register
  verify
  ;;
update)
  deploy_require ENV_FILE
  [[ -f $ENV_FILE ]] || deploy_fail "ENV_FILE is not a file: $ENV_FILE"
  if [[ $PROVIDER == devnet ]]; then
    deploy_step apply step_apply_devnet || deploy_fail "apply"
  else
    deploy_step prepare step_prepare_phala || deploy_fail "prepare"
    deploy_step apply step_apply_phala || deploy_fail "apply"
    deploy_step restart step_restart_phala || deploy_fail "restart"
  fi
  register
  verify
  ;;
register) register ;;
verify) verify ;;
esac
deploy_finish "no transaction, no deploy, no restart"
