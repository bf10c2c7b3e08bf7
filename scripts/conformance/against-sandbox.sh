#!/usr/bin/env bash
# Start `paymux sandbox` on a free loopback port with a throwaway data directory, then run the
# unmodified public SDKs (run.sh) against each channel sandbox with the keys it generated.
#
#   scripts/conformance/against-sandbox.sh [path/to/paymux] [wechat|alipay|all]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-$here/../../target/debug/paymux}"
which_sdk="${2:-all}"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

PAYMUX_DATA_DIR="$work/data" PAYMUX_LOG_FORMAT=text "$bin" sandbox --listen "127.0.0.1:$port" >"$work/sandbox.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:$port/wechat/sandbox/account" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/sandbox.log" >&2; echo "FAIL: paymux sandbox exited" >&2; exit 1; fi
  sleep 0.1
done

# Key material out of the sandboxes' account files, as a merchant would configure it.
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]], end="")' "$1" "$2"; }
status=0
if [ "$which_sdk" = all ] || [ "$which_sdk" = wechat ]; then
  acct="$work/data/sandbox/wechat/account.json"
  field "$acct" merchant_private_key >"$work/wx_merchant.pem"
  field "$acct" platform_public_key >"$work/wx_platform.pem"
  SANDBOX_URL="http://127.0.0.1:$port/wechat" \
  WX_MCHID="$(field "$acct" mchid)" WX_APPID="$(field "$acct" appid)" \
  WX_MERCHANT_KEY="$work/wx_merchant.pem" WX_MERCHANT_SERIAL="$(field "$acct" merchant_serial)" \
  WX_PLATFORM_PUBLIC_KEY="$work/wx_platform.pem" WX_PLATFORM_SERIAL="$(field "$acct" platform_serial)" \
  WX_APIV3_KEY="$(field "$acct" api_v3_key)" \
    "$here/run.sh" wechat || status=1
fi
if [ "$which_sdk" = all ] || [ "$which_sdk" = alipay ]; then
  acct="$work/data/sandbox/alipay/account.json"
  if [ ! -f "$acct" ]; then
    echo "FAIL: no Alipay sandbox account at $acct" >&2
    status=1
  else
    field "$acct" app_private_key >"$work/ali_app.pem"
    field "$acct" alipay_public_key >"$work/ali_public.pem"
    SANDBOX_URL="http://127.0.0.1:$port/alipay" \
    ALIPAY_APP_ID="$(field "$acct" app_id)" \
    ALIPAY_APP_PRIVATE_KEY="$work/ali_app.pem" ALIPAY_PUBLIC_KEY="$work/ali_public.pem" \
      "$here/run.sh" alipay || status=1
  fi
fi
if [ "$status" != 0 ]; then
  echo "--- sandbox log ---" >&2
  tail -50 "$work/sandbox.log" >&2
fi
exit "$status"
