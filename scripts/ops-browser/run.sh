#!/usr/bin/env bash
# The operations console in headless Chromium: start `paymux serve` (its sandboxes, a demo
# merchant, SQLite) on a free loopback port with a throwaway data directory, create operators with
# `paymux operator create`, then run ops.mjs against it — it makes payments, plants reconciliation
# exceptions in the WeChat sandbox's bill, runs `paymux reconcile` and works the console — and last
# `paymux ledger audit` on the books.
#
#   scripts/ops-browser/run.sh [path/to/paymux]
#
# Needs Node.js >= 20 and Chromium (apt-get install chromium; CHROMIUM names another binary).
# playwright-core is pinned by package.json + package-lock.json beside this script and installed
# into PAYMUX_OPS_BROWSER_DIR (default ~/.cache/paymux-ops-browser), reused while the lockfile is
# unchanged. Screenshots: OPS_SCREENSHOTS (default target/ops-screenshots).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/paymux}"
cache="${PAYMUX_OPS_BROWSER_DIR:-${HOME:-/tmp}/.cache/paymux-ops-browser}"
shots="${OPS_SCREENSHOTS:-$root/target/ops-screenshots}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

for tool in node npm curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "FAIL: '$tool' not found" >&2; exit 1; }
done
[ -x "$CHROMIUM" ] || { echo "FAIL: no Chromium at $CHROMIUM (apt-get install chromium)" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

lock_hash="$(sha256sum "$here/package-lock.json" | cut -c1-16)"
if [ ! -f "$cache/.lock-$lock_hash" ]; then
  rm -rf "$cache" && mkdir -p "$cache"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$cache/.lock-$lock_hash"
fi

# Run from beside its node_modules (ES modules resolve packages from the script's folder).
cp "$here/ops.mjs" "$cache/ops.mjs"

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The same settings for the server and the commands run beside it (`paymux reconcile` reaches the
# server's mounted sandboxes at http://<listen>).
export PAYMUX_DATA_DIR="$work/data"
export PAYMUX_LISTEN="127.0.0.1:$port"
export PAYMUX_LOG_FORMAT=text
export PAYMUX_RECONCILE_SCHEDULE=off
unset PAYMUX_DATABASE_URL PAYMUX_REDIS_URL PAYMUX_CONFIG PAYMUX_PUBLIC_BASE_URL
"$bin" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/serve.log" >&2; echo "FAIL: paymux serve exited" >&2; exit 1; fi
  sleep 0.1
done
cred() { sed -n "s/^  $1 *= *//p" "$work/serve.log" | head -n1; }
"$bin" operator create --name "Olga Operator" --role operator >"$work/operator.json"
"$bin" operator create --name "Vic Viewer" --role viewer >"$work/viewer.json"
"$bin" operator create --name "Ada Admin" --role admin >"$work/admin.json"

PAYMUX_URL="http://127.0.0.1:$port" PAYMUX_KEY_ID="$(cred key_id)" PAYMUX_KEY_SECRET="$(cred key_secret)" \
PAYMUX_BIN="$bin" OPERATOR_FILE="$work/operator.json" VIEWER_FILE="$work/viewer.json" ADMIN_FILE="$work/admin.json" \
SCREENSHOT_DIR="$shots" \
  node "$cache/ops.mjs" || { tail -n 50 "$work/serve.log" >&2; exit 1; }
# No operator token reached the server's log.
for f in operator viewer admin; do
  token="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/$f.json")"
  if grep -qF "$token" "$work/serve.log"; then echo "FAIL: an operator token is in the server's log" >&2; exit 1; fi
done
"$bin" ledger audit
