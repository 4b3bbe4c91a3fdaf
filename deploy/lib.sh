# shellcheck shell=bash
# deploy/lib.sh: the shared part of the deploy routines (sourced by deploy/node.sh and deploy/indexer.sh).
#
# Owns: the run log (every step, with a UTC timestamp, appended to $DEPLOY_LOG_DIR/<routine>-<target>.log
# and echoed to stderr), the redaction of secrets from everything that reaches a log, and small state files
# ($DEPLOY_STATE_DIR/<routine>-<target>/<key>) that let a routine killed at any step be run again and finish
# the work. Must not: print or store a secret (every value of a variable listed in DEPLOY_DEFAULT_SECRET_VARS
# or DEPLOY_SECRET_VARS, every value of the sealed env file ENV_FILE, and the user part of any URL, is
# replaced by <redacted> before anything is written, whatever its letter case), keep state anywhere else, or
# decide anything about a node: that is the routine's job.

DEPLOY_ROOT=${DEPLOY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
DEPLOY_LOG_DIR=${DEPLOY_LOG_DIR:-$DEPLOY_ROOT/logs}
DEPLOY_STATE_DIR=${DEPLOY_STATE_DIR:-$DEPLOY_ROOT/state}
# Variables whose values are secrets (keys, tokens, RPC URLs that embed an API key). DEPLOY_SECRET_VARS
# (from the caller's environment, and appended to by the routines) ADDS names to these; it never replaces
# them, so an operator who names one extra variable does not un-redact the owner key.
DEPLOY_DEFAULT_SECRET_VARS="ATTESTMESH_OWNER_KEY ATTESTMESH_FUNDER_KEY PHALA_CLOUD_API_KEY ATTESTMESH_RPC_URL ATTESTMESH_RPC_URLS ATTESTMESH_INDEXER_RPC_URL"
DEPLOY_SECRET_VARS=${DEPLOY_SECRET_VARS:-}
# The shortest value of the sealed env file (ENV_FILE) that is redacted: every value of that file is
# treated as a secret, but a flag or a number ("true", "2") would otherwise blank every such word in a log.
DEPLOY_ENV_FILE_MIN_SECRET=8

DEPLOY_ROUTINE=""
DEPLOY_TARGET=""
DEPLOY_VERB=""
DEPLOY_LOG=""
DEPLOY_RUN_DIR="" # scratch files of this run (removed on exit)

# The devnet's cluster owner: anvil's well-known development account 0 (public; never a key for a real
# chain). The devnet provider of the routines uses it when ATTESTMESH_OWNER_KEY is not set.
# shellcheck disable=SC2034 # used by the routines that source this file
DEPLOY_DEVNET_OWNER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80

# deploy_init ROUTINE TARGET VERB: open the run log of this routine and target.
deploy_init() {
  DEPLOY_ROUTINE=$1 DEPLOY_TARGET=$2 DEPLOY_VERB=$3
  mkdir -p "$DEPLOY_LOG_DIR" "$(deploy_state_dir)"
  chmod 700 "$DEPLOY_LOG_DIR" "$DEPLOY_STATE_DIR"
  DEPLOY_LOG="$DEPLOY_LOG_DIR/$DEPLOY_ROUTINE-$DEPLOY_TARGET.log"
  touch "$DEPLOY_LOG"
  chmod 600 "$DEPLOY_LOG"
  DEPLOY_RUN_DIR=$(mktemp -d)
  trap 'rm -rf "$DEPLOY_RUN_DIR"' EXIT
  deploy_log "run started (pid $$, provider ${PROVIDER:-devnet})"
}

# deploy_redact: copy stdin to stdout with every secret replaced by <redacted>: the value of every variable
# named in DEPLOY_DEFAULT_SECRET_VARS and DEPLOY_SECRET_VARS (and each comma-separated part of it, and a hex
# value without its 0x), every value of ENV_FILE of at least DEPLOY_ENV_FILE_MIN_SECRET characters, and the
# user part of any URL. Matching ignores letter case (a key printed checksummed or upper-cased is the key).
deploy_redact() {
  local name value script=""
  for name in $DEPLOY_DEFAULT_SECRET_VARS $DEPLOY_SECRET_VARS; do
    value=${!name-}
    [[ ${#value} -ge 4 ]] || continue # an empty or tiny value would redact everything
    script+="${value//\\/\\\\}"$'\n'
  done
  SECRETS=$script SECRETS_ENV_FILE=${ENV_FILE:-} SECRETS_ENV_MIN=$DEPLOY_ENV_FILE_MIN_SECRET python3 -c '
import os, re, sys

def env_file_values(path, shortest):
    """Every value of a KEY=value file (export, quotes and comments as the routines read them)."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return []
    values = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        _, sep, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"'"'":
            value = value[1:-1]
        if sep and len(value) >= shortest:
            values.append(value)
    return values

found = [s for s in os.environ.get("SECRETS", "").split("\n") if s]
if os.environ.get("SECRETS_ENV_FILE"):
    found += env_file_values(os.environ["SECRETS_ENV_FILE"], int(os.environ.get("SECRETS_ENV_MIN", "8")))
secrets = set()
for value in found:
    for part in [value, *value.split(",")]:
        part = part.strip()
        if len(part) >= 4:
            secrets.add(part)
            if part.lower().startswith("0x") and len(part) >= 6:
                secrets.add(part[2:])
ordered = sorted(secrets, key=len, reverse=True)
pattern = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE) if ordered else None
userinfo = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
for line in sys.stdin:
    if pattern is not None:
        line = pattern.sub("<redacted>", line)
    sys.stdout.write(userinfo.sub(r"\1<redacted>@", line))
    sys.stdout.flush()
'
}

# deploy_log MESSAGE...: one timestamped line (UTC) in the run log and on stderr, redacted.
deploy_log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $DEPLOY_ROUTINE $DEPLOY_TARGET $DEPLOY_VERB: $*"
  printf '%s\n' "$line" | deploy_redact | tee -a "$DEPLOY_LOG" >&2
}

# deploy_step NAME COMMAND [ARG...]: run one step; its output (redacted) goes to the run log and stderr,
# framed by "step NAME started" and "step NAME done" / "step NAME failed (exit N)". Returns the exit code.
deploy_step() {
  local name=$1 rc=0 errexit=0
  shift
  deploy_log "step $name started"
  [[ $- == *e* ]] && errexit=1
  set +e
  "$@" 2>&1 | deploy_redact | while IFS= read -r line; do
    printf '%s   | %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$line"
  done | tee -a "$DEPLOY_LOG" >&2
  rc=${PIPESTATUS[0]}
  ((errexit)) && set -e
  if ((rc == 0)); then
    deploy_log "step $name done"
  else
    deploy_log "step $name failed (exit $rc)"
  fi
  return "$rc"
}

# deploy_state_dir: where this routine and target keep their state files.
deploy_state_dir() {
  printf '%s/%s-%s\n' "$DEPLOY_STATE_DIR" "$DEPLOY_ROUTINE" "$DEPLOY_TARGET"
}

# deploy_state_set KEY VALUE: record a fact for a later run (atomic: a killed write leaves the old value).
deploy_state_set() {
  local dir tmp
  dir=$(deploy_state_dir)
  mkdir -p "$dir"
  tmp=$(mktemp "$dir/.$1.XXXXXX")
  printf '%s\n' "$2" >"$tmp"
  mv -f "$tmp" "$dir/$1"
}

# deploy_state_get KEY: print a recorded fact; exit 1 (printing nothing) when there is none.
deploy_state_get() {
  local file
  file="$(deploy_state_dir)/$1"
  [[ -f $file ]] || return 1
  cat "$file"
}

# deploy_state_clear [KEY...]: forget the given facts (all of this routine and target when none is named).
deploy_state_clear() {
  local dir
  dir=$(deploy_state_dir)
  if (($# == 0)); then
    rm -rf "$dir"
  else
    local key
    for key in "$@"; do rm -f "$dir/$key"; done
  fi
}

# deploy_fail MESSAGE...: log the reason and exit 1.
deploy_fail() {
  deploy_log "FAILED: $*"
  exit 1
}

# deploy_require VAR...: fail (listing every one) unless all the named variables are set and not empty.
deploy_require() {
  local name missing=()
  for name in "$@"; do [[ -n ${!name:-} ]] || missing+=("$name"); done
  ((${#missing[@]} == 0)) || deploy_fail "not set: ${missing[*]}"
}

# deploy_changed WHAT: note that this run changed something (a transaction, a boot, a deploy, a restart).
deploy_changed() { printf '%s\n' "$1" >>"$DEPLOY_RUN_DIR/changes"; }

# deploy_finish NOTHING: the run's last line: what it changed, or "nothing changed (NOTHING)".
deploy_finish() {
  if [[ -s $DEPLOY_RUN_DIR/changes ]]; then
    deploy_log "done: changed $(sort -u "$DEPLOY_RUN_DIR/changes" | paste -sd, -)"
  else
    deploy_log "done: nothing changed ($1)"
  fi
}

# deploy_json_get FILE PATH: one value of a JSON document (PATH like node.member_id or items.0.name); empty
# when absent or null; booleans as true/false.
deploy_json_get() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(0)
for key in sys.argv[2].split("."):
    if isinstance(value, list) and key.isdigit():
        value = value[int(key)] if int(key) < len(value) else None
    else:
        value = value.get(key) if isinstance(value, dict) else None
if value is not None:
    print(str(value).lower() if isinstance(value, bool) else value)
EOF
}

# deploy_shell_value TEXT KEY: the value of KEY in shell-quoted KEY=value lines (the CLI's --shell output).
deploy_shell_value() {
  local line
  line=$(grep -m1 "^$2=" <<<"$1") || return 0
  python3 -c 'import shlex, sys; print("".join(shlex.split(sys.argv[1].split("=", 1)[1])))' "$line"
}

# deploy_check_target SCRIPT TARGET: exit 2 (bad usage) unless TARGET is a valid node or indexer name
# (1-24 of [a-z0-9-], no edge hyphen) and PROVIDER (default devnet) a known provider.
deploy_check_target() {
  [[ $2 =~ ^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$ ]] || {
    echo "$1: name must be 1-24 of [a-z0-9-], not starting or ending with '-': $2" >&2
    exit 2
  }
  PROVIDER=${PROVIDER:-devnet}
  case $PROVIDER in devnet | phala) ;; *)
    echo "$1: PROVIDER must be devnet or phala, not $PROVIDER" >&2
    exit 2
    ;;
  esac
}

# deploy_tools: ATTESTMESH (the operator CLI: on PATH, else the checkout's virtualenv; ATTESTMESH_CLI wins)
# and PHALA (the phala CLI; PHALA_CLI wins).
# shellcheck disable=SC2034 # both are used by the routines that source this file
deploy_tools() {
  if [[ -n ${ATTESTMESH_CLI:-} ]]; then
    ATTESTMESH=$ATTESTMESH_CLI
  elif command -v attestmesh >/dev/null 2>&1; then
    ATTESTMESH=attestmesh
  else
    ATTESTMESH=$(dirname "$DEPLOY_ROOT")/.venv/bin/attestmesh
  fi
  PHALA=${PHALA_CLI:-phala}
}

# deploy_devnet_gateway FACTS: in a gateway-mode lab, read nodes and the indexer the way an operator reads
# CVMs, through the lab's gateway: trust the lab CA, and connect to the gateway's address (the root namespace
# has no resolver for the lab's domain). The operator CLI reads both variables; set ones are kept.
deploy_devnet_gateway() {
  [[ $(deploy_shell_value "$1" LAB_TRANSPORT) == gateway ]] || return 0
  export ATTESTMESH_CA_FILE ATTESTMESH_CONNECT_TO
  ATTESTMESH_CA_FILE=${ATTESTMESH_CA_FILE:-$(deploy_shell_value "$1" GATEWAY_CA_FILE)}
  ATTESTMESH_CONNECT_TO=${ATTESTMESH_CONNECT_TO:-$(deploy_shell_value "$1" GATEWAY_ADDRESS)}
}

# deploy_usage: the routine's own header comment (from its second line to "# Exit codes") on stderr; exit 2.
deploy_usage() {
  sed -n '2,/^# Exit codes/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
