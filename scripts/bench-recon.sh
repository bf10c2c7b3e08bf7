#!/usr/bin/env bash
# The reconciliation benchmark of docs/performance.md, on a quiet machine:
#   scripts/bench-recon.sh [OUT]        (default OUT: bench-recon-<UTC date>.log; appended to)
# 1. release build of `paymux-recon-bench`; the machine (nproc, memory, CPU, load average)
# 2. RECORDS (1000000) payments of one day on PostgreSQL — a fresh database created on the server of
#    PG_URL (default postgres://postgres@127.0.0.1:55432/postgres; nothing is installed or started:
#    give a running server, or PG_URL= to skip) — seeded, reconciled, reconciled again, audited
# 3. SQLITE_RECORDS (100000) payments on SQLite (SQLITE_RECORDS=0 skips it)
# Each run prints its seeding time, the reconciliation's wall time per stage, records/s and the
# reconciling process's peak RSS (VmHWM), and fails unless the planted classes come out exactly, the
# rerun posts nothing and the audit is clean. Data directories go under WORK_DIR (default /tmp).
# Settings: RECORDS, SQLITE_RECORDS, PLANTED (10), PG_URL, WORK_DIR, SKIP_BUILD=1.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${1:-$ROOT/bench-recon-$STAMP.log}
RECORDS=${RECORDS:-1000000}
SQLITE_RECORDS=${SQLITE_RECORDS:-100000}
PLANTED=${PLANTED:-10}
PG_URL=${PG_URL-postgres://postgres@127.0.0.1:55432/postgres}
WORK_DIR=${WORK_DIR:-/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$CARGO_TARGET_DIR/release/paymux-recon-bench
exec > >(tee -a "$OUT") 2>&1

run() { echo "\$ $*"; "$@"; local rc=$?; echo "(exit $rc)"; return $rc; }

echo "# paymux reconciliation benchmark, $STAMP"
[ -n "${SKIP_BUILD:-}" ] || run cargo build --release -p paymux --bin paymux-recon-bench || exit 1
run nproc
run free -h
run sh -c "lscpu | grep -E 'Model name|^CPU\(s\)'"
run uptime
status=0
if [ -n "$PG_URL" ]; then
  db_url="${PG_URL%/*}/paymux_recon_bench_$(echo "$STAMP" | tr 'A-Z' 'a-z')"
  run "$BENCH" --records "$RECORDS" --planted "$PLANTED" --database-url "$db_url" \
    --data-dir "$WORK_DIR/paymux-recon-bench-pg-$STAMP" || status=1
fi
if [ "$SQLITE_RECORDS" -gt 0 ]; then
  run uptime
  run "$BENCH" --records "$SQLITE_RECORDS" --planted "$PLANTED" \
    --data-dir "$WORK_DIR/paymux-recon-bench-sqlite-$STAMP" || status=1
fi
echo "log: $OUT"
exit $status
