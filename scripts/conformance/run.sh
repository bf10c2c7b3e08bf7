#!/usr/bin/env bash
# Run unmodified public WeChat Pay v3 and Alipay SDKs against the paymux sandbox.
#
# Each channel's sandbox has its own path prefix, so run once per channel with that prefix
# (`paymux serve`: /sandbox/wechat, /sandbox/alipay; `paymux sandbox`: /wechat, /alipay):
#
#   SANDBOX_URL=http://127.0.0.1:8080/sandbox/wechat WX_MCHID=... scripts/conformance/run.sh wechat
#   SANDBOX_URL=http://127.0.0.1:8080/sandbox/alipay ALIPAY_APP_ID=... scripts/conformance/run.sh alipay
#
# against-sandbox.sh beside this script starts `paymux sandbox` and does both runs with the keys
# the sandbox generated; scripts/test.sh runs it.
#
# Env (see NOTES.md):
#   SANDBOX_URL              the channel sandbox's base URL, prefix included
#   WX_MCHID WX_APPID WX_MERCHANT_KEY WX_MERCHANT_SERIAL
#   WX_PLATFORM_PUBLIC_KEY WX_PLATFORM_SERIAL WX_APIV3_KEY
#   ALIPAY_APP_ID ALIPAY_APP_PRIVATE_KEY ALIPAY_PUBLIC_KEY [ALIPAY_GATEWAY_PATH=/gateway.do]
#   PAYMUX_CONFORMANCE_DIR   SDK cache (default ~/.cache/paymux-conformance)
#
# The SDK versions (and every transitive dependency) are pinned by
# package.json + package-lock.json beside this script; the cache is reused
# while the lockfile is unchanged.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${PAYMUX_CONFORMANCE_DIR:-${HOME:-/tmp}/.cache/paymux-conformance}"
which_sdk="${1:-all}"

case "$which_sdk" in
  wechat|alipay|all) ;;
  *) echo "usage: $0 [wechat|alipay|all]" >&2; exit 2 ;;
esac

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL: '$tool' not found; install Node.js >= 18 (e.g. apt-get install nodejs npm)" >&2
    exit 1
  fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "FAIL: Node.js >= 18 required (alipay-sdk 4.x), found $(node --version)" >&2
  exit 1
fi

if [ -z "${SANDBOX_URL:-}" ]; then
  echo "FAIL: SANDBOX_URL is required (e.g. http://127.0.0.1:8080/sandbox/wechat)" >&2
  exit 1
fi

# Install pinned SDKs into the cache unless the same lockfile is already installed.
stamp="$cache/.lock.sha256"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -d "$cache/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing pinned SDKs into $cache" >&2
  mkdir -p "$cache"
  rm -rf "$cache/node_modules" "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
  printf '%s\n' "$want" >"$stamp"
fi
export PAYMUX_CONFORMANCE_DEPS="$cache"

status=0
if [ "$which_sdk" = all ] || [ "$which_sdk" = wechat ]; then
  node "$here/wechat.js" || status=1
fi
if [ "$which_sdk" = all ] || [ "$which_sdk" = alipay ]; then
  node "$here/alipay.js" || status=1
fi

if [ "$status" -ne 0 ]; then
  echo "FAIL: conformance run failed (see messages above)" >&2
  exit 1
fi
echo "PASS: conformance ($which_sdk)"
