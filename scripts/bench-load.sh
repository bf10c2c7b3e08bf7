#!/usr/bin/env bash
# The whole load measurement of docs/performance.md, on a quiet machine:
#   scripts/bench-load.sh [OUT]        (default OUT: bench-load-<UTC date>.log; appended to)
# 1. release build; the machine (nproc, memory, CPU, versions)
# 2. openssl speed -seconds 3 rsa2048
# 3. for one node, then two nodes behind nginx (deploy/local): B2C WeChat code scans against the
#    RSA bound, then payment creation + status query at each rate of CREATE_RATES (operations/s; 2
#    requests each), the full mix, and one-code payers (static codes paid through the cashier, each
#    wallet in turn) at each rate of ONE_CODE_RATES; every run followed by the post-run audit
# 4. 60 s sustained at the best creation rate that had zero errors and p99 <= 50 ms, and 60 s of
#    code scans, each with its audit
# Reports (JSON, Markdown, SVG) go to REPORT_DIR (default docs/bench/<date>). Settings: CODE_SCAN_RATES
# ("800 1000 1200 1400"), CREATE_RATES ("5000 6000 7500 9000"), ONE_CODE_RATES ("100 200"), RUN_SECONDS (20), SUSTAIN_SECONDS (60),
# CONCURRENCY (1024), SKIP_BUILD=1 to use the binaries as they are.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${1:-$ROOT/bench-load-$STAMP.log}
REPORT_DIR=${REPORT_DIR:-$ROOT/docs/bench/$STAMP}
CODE_SCAN_RATES=${CODE_SCAN_RATES:-800 1000 1200 1400}
CREATE_RATES=${CREATE_RATES:-5000 6000 7500 9000}
ONE_CODE_RATES=${ONE_CODE_RATES:-100 200}
RUN_SECONDS=${RUN_SECONDS:-20}
SUSTAIN_SECONDS=${SUSTAIN_SECONDS:-60}
CONCURRENCY=${CONCURRENCY:-1024}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
mkdir -p "$REPORT_DIR"
exec > >(tee -a "$OUT") 2>&1

run() { echo "\$ $*"; "$@"; local rc=$?; echo "(exit $rc)"; return $rc; }

echo "# paymux load measurement, $STAMP"
[ -n "${SKIP_BUILD:-}" ] || run cargo build --release -p paymux -p paymux-loadtest || exit 1
run nproc
run free -h
run sh -c "lscpu | grep -E 'Model name|^CPU\(s\)|MHz'"
run uname -sr
run openssl version
run openssl speed -seconds 3 rsa2048

LT="$BIN/paymux-loadtest"
best_create=""
for nodes in 1 2; do
  run deploy/local/up.sh "$nodes" || exit 1
  # shellcheck disable=SC1091
  . "${PAYMUX_LOCAL_DIR:-/tmp/paymux-local}/env"
  common=(--url "$LOCAL_URL" --credentials "$LOCAL_MERCHANTS" --server-pid "$LOCAL_NODE_PIDS"
          --sandbox-url "$LOCAL_SANDBOX_URL" --concurrency "$CONCURRENCY" --warmup 5 --duration "$RUN_SECONDS")
  for rate in $CODE_SCAN_RATES; do
    run "$LT" run "${common[@]}" --mix code_scan --wallets wechat --password-pct 0 --rate "$rate" \
      --rsa-bound --report "$REPORT_DIR/code-scan-${nodes}node-$rate"
  done
  for rate in $CREATE_RATES; do
    if run "$LT" run "${common[@]}" --mix create_query --rate "$rate" --report "$REPORT_DIR/create-query-${nodes}node-$rate"; then
      p99=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(max(x['latency_ms']['p99'] for x in r['requests_by_kind']))" "$REPORT_DIR/create-query-${nodes}node-$rate.json")
      if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 50 else 1)" "$p99"; then
        best_create="$nodes $rate"
      fi
    fi
  done
  run "$LT" run "${common[@]}" --mix code_scan=40,qr=20,create_query=30,refund=10 --wallets wechat,alipay \
    --rate 500 --report "$REPORT_DIR/mix-${nodes}node-500"
  for rate in $ONE_CODE_RATES; do
    run "$LT" run "${common[@]}" --mix one_code --rate "$rate" --report "$REPORT_DIR/one-code-${nodes}node-$rate"
  done
  run deploy/local/down.sh
done

echo "best creation + query rate with zero errors and p99 <= 50 ms: ${best_create:-none} (nodes rate)"
if [ -n "$best_create" ]; then
  read -r nodes rate <<<"$best_create"
  run deploy/local/up.sh "$nodes" || exit 1
  # shellcheck disable=SC1091
  . "${PAYMUX_LOCAL_DIR:-/tmp/paymux-local}/env"
  run "$LT" run --url "$LOCAL_URL" --credentials "$LOCAL_MERCHANTS" --server-pid "$LOCAL_NODE_PIDS" \
    --concurrency "$CONCURRENCY" --warmup 5 --duration "$SUSTAIN_SECONDS" --mix create_query --rate "$rate" \
    --report "$REPORT_DIR/sustained-create-query-${nodes}node-$rate"
  run "$LT" run --url "$LOCAL_URL" --credentials "$LOCAL_MERCHANTS" --server-pid "$LOCAL_NODE_PIDS" \
    --sandbox-url "$LOCAL_SANDBOX_URL" --concurrency "$CONCURRENCY" --warmup 5 --duration "$SUSTAIN_SECONDS" \
    --mix code_scan --wallets wechat --password-pct 0 --rate "${SUSTAIN_CODE_SCAN_RATE:-1000}" --rsa-bound \
    --report "$REPORT_DIR/sustained-code-scan-${nodes}node"
  run deploy/local/down.sh
fi
echo "reports: $REPORT_DIR; log: $OUT"
