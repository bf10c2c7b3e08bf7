#!/usr/bin/env bash
# The one-code cashier in headless Chromium: start `paymux serve` (its sandboxes, a demo merchant,
# SQLite) on a free loopback port with a throwaway data directory, run cashier.mjs against it,
# then `paymux ledger audit` on its books.
#
#   scripts/cashier-browser/run.sh [path/to/paymux]
#
# Needs Node.js >= 20 (the pinned playwright-core) and Chromium (apt-get install chromium chromium-driver; CHROMIUM names
# another binary). playwright-core is pinned by package.json + package-lock.json beside this
# script and installed into PAYMUX_CASHIER_BROWSER_DIR (default ~/.cache/paymux-cashier-browser),
# reused while the lockfile is unchanged. Screenshots: CASHIER_SCREENSHOTS (default
# target/cashier-screenshots).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/paymux}"
cache="${PAYMUX_CASHIER_BROWSER_DIR:-${HOME:-/tmp}/.cache/paymux-cashier-browser}"
shots="${CASHIER_SCREENSHOTS:-$root/target/cashier-screenshots}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

for tool in node npm curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "FAIL: '$tool' not found" >&2; exit 1; }
done
[ -x "$CHROMIUM" ] || { echo "FAIL: no Chromium at $CHROMIUM (apt-get install chromium chromium-driver)" >&2; exit 1; }

lock_hash="$(sha256sum "$here/package-lock.json" | cut -c1-16)"
if [ ! -f "$cache/.lock-$lock_hash" ]; then
  rm -rf "$cache" && mkdir -p "$cache"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$cache/.lock-$lock_hash"
fi

# Run from beside its node_modules (ES modules resolve packages from the script's folder).
cp "$here/cashier.mjs" "$cache/cashier.mjs"

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export PAYMUX_DATA_DIR="$work/data"
unset PAYMUX_DATABASE_URL PAYMUX_REDIS_URL PAYMUX_CONFIG
PAYMUX_LISTEN="127.0.0.1:$port" PAYMUX_LOG_FORMAT=text "$bin" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/serve.log" >&2; echo "FAIL: paymux serve exited" >&2; exit 1; fi
  sleep 0.1
done
cred() { sed -n "s/^  $1 *= *//p" "$work/serve.log" | head -n1; }
PAYMUX_URL="http://127.0.0.1:$port" PAYMUX_KEY_ID="$(cred key_id)" PAYMUX_KEY_SECRET="$(cred key_secret)" \
SCREENSHOT_DIR="$shots" \
  node "$cache/cashier.mjs" || { tail -n 50 "$work/serve.log" >&2; exit 1; }
"$bin" ledger audit
