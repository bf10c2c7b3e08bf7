#!/usr/bin/env bash
# Pays one sandbox order through a running `paymux serve` (started with `cargo run --release -- serve`
# in another terminal): a new merchant with sandbox channel accounts (`paymux merchant create`), a
# payment by a customer's WeChat payment code, signed with the merchant's key
# (scripts/paymux-curl.sh), the payment read back, and the books audited (`paymux ledger audit`).
# Exits non-zero unless the payment succeeded and the audit is clean.
#   scripts/demo-pay.sh
# PAYMUX_URL (default http://127.0.0.1:8080) is the server; PAYMUX_BIN the paymux command (default
# `cargo run --release -q --`, the build `serve` runs), run with the same configuration as the server
# (by default both use ./paymux-data).
set -euo pipefail
cd "$(dirname "$0")/.."
export PAYMUX_URL=${PAYMUX_URL:-http://127.0.0.1:8080}
read -r -a PAYMUX <<<"${PAYMUX_BIN:-cargo run --release -q --}"

if ! curl -fsS -o /dev/null "$PAYMUX_URL/healthz" 2>/dev/null; then
  echo "no paymux answers at $PAYMUX_URL; start it first: cargo run --release -- serve" >&2
  exit 1
fi

creds=$("${PAYMUX[@]}" merchant create --name "Demo shop")
field() { printf '%s\n' "$creds" | sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n 1; }
PAYMUX_KEY_ID=$(field key_id)
PAYMUX_KEY_SECRET=$(field key_secret)
export PAYMUX_KEY_ID PAYMUX_KEY_SECRET
order="demo-$(date +%s)-$$"
echo "merchant $(field merchant_id) (key $PAYMUX_KEY_ID)"
echo
echo "POST /v1/payments: order $order, ¥12.34, the customer's WeChat payment code 134567890123456789"
answer=$(scripts/paymux-curl.sh POST /v1/payments \
  "{\"merchant_order_no\":\"$order\",\"amount\":1234,\"currency\":\"CNY\",\"subject\":\"Coffee\",\"method\":\"code_scan\",\"auth_code\":\"134567890123456789\"}")
echo "$answer"
echo
echo "GET /v1/payments?merchant_order_no=$order"
scripts/paymux-curl.sh GET "/v1/payments?merchant_order_no=$order"
echo
echo "paymux ledger audit"
"${PAYMUX[@]}" ledger audit
case $answer in
  *'"status":"succeeded"'*) echo; echo "paid: the order succeeded at the WeChat sandbox and is posted to the ledger" ;;
  *) echo "the payment did not succeed" >&2; exit 1 ;;
esac
