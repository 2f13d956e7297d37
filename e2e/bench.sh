#!/usr/bin/env bash
# The scale benchmark: e2e/bench.sh COMPANIES DEVELOPERS
#   1. builds the release operator,
#   2. times `enclave plan` on COMPANIES x DEVELOPERS tenants (one file per
#      company, then one file of every document; summary and --output yaml),
#      printing wall time and peak RSS,
#   3. runs bench::tenants_converge_resync_and_go_at_scale through
#      e2e/run-tests.sh (which installs and starts the real control plane,
#      OpenBao, PostgreSQL and moto) with that size and the release
#      operator: baseline, convergence, one resync, deletion, in one table.
# The resync it measures is asked for with SIGHUP once everything converged
# (a timed one would start while the last tenants still converge). The
# convergence and resync rows are printed before the deletion starts.
# ENCLAVE_BENCH_BASELINE=SECONDS skips the baseline (and the deletion of its
# namespaces) and compares with that all-Ready time from an earlier run at
# the same size: at 1,000 x 10 the baseline phase takes 40 minutes.
# ENCLAVE_BENCH_RECONCILES=N runs the operator with N reconciles in flight
# per kind (controller.maxConcurrentReconciles; default 8, as many as the
# baseline's applies in flight). Not a test: it prints numbers. The suite
# runs the same benchmark at 2 x 3 as a smoke check.
set -euo pipefail

companies=${1:?usage: e2e/bench.sh COMPANIES DEVELOPERS}
developers=${2:?usage: e2e/bench.sh COMPANIES DEVELOPERS}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

echo "==> cargo build --release (the operator under test)" >&2
cargo build --release --quiet -p enclave-operator --bin enclave
enclave="$ROOT/target/release/enclave"

tenants=$(mktemp -d)
trap 'rm -rf "$tenants"' EXIT
python3 e2e/bench/tenants.py "$companies" "$developers" "$tenants/files"
python3 e2e/bench/tenants.py "$companies" "$developers" "$tenants/single" --single-file
echo
echo "enclave plan on $companies companies x $developers developers"
printf '%-34s %-8s %10s %12s\n' input output "wall time" "peak RSS"
for input in files single/tenants.yaml; do
  for output in summary yaml; do
    /usr/bin/time -f '%e %M' -o "$tenants/time" "$enclave" plan -f "$tenants/$input" --output "$output" >/dev/null
    read -r wall rss <"$tenants/time"
    printf '%-34s %-8s %8s s %8s MiB\n' "$([ "$input" = files ] && echo "$companies files" || echo "one file")" "$output" "$wall" "$((rss / 1024))"
  done
done
echo

ENCLAVE_BENCH_SIZE="${companies}x${developers}" ENCLAVE_TEST_OPERATOR_BIN="$enclave" ENCLAVE_SKIP_LINT=1 \
  e2e/run-tests.sh -E 'test(=bench::tenants_converge_resync_and_go_at_scale)' --no-capture 2>&1 |
  grep --line-buffered -v 'enclave::audit'
