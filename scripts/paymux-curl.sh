#!/usr/bin/env bash
# Sends one signed request to the paymux merchant API with curl.
#   PAYMUX_KEY_ID=pk_… PAYMUX_KEY_SECRET=sk_… scripts/paymux-curl.sh POST /v1/payments '{"…":…}'
#   scripts/paymux-curl.sh GET '/v1/payments?merchant_order_no=A1'
# PAYMUX_URL defaults to http://127.0.0.1:8080.
set -euo pipefail
method=${1:?usage: paymux-curl.sh METHOD PATH_AND_QUERY [BODY]}
path=${2:?usage: paymux-curl.sh METHOD PATH_AND_QUERY [BODY]}
body=${3:-}
: "${PAYMUX_KEY_ID:?set PAYMUX_KEY_ID}" "${PAYMUX_KEY_SECRET:?set PAYMUX_KEY_SECRET}"
url=${PAYMUX_URL:-http://127.0.0.1:8080}
ts=$(date +%s)
nonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
body_hash=$(printf '%s' "$body" | openssl dgst -sha256 -r | cut -d' ' -f1)
signature=$(printf '%s\n%s\n%s\n%s\n%s\n' "$method" "$path" "$ts" "$nonce" "$body_hash" \
  | openssl dgst -sha256 -hmac "$PAYMUX_KEY_SECRET" -r | cut -d' ' -f1)
auth="PAYMUX-HMAC-SHA256 key_id=$PAYMUX_KEY_ID,timestamp=$ts,nonce=$nonce,signature=$signature"
# The answer's body on stdout, its HTTP status on stderr.
if [ -n "$body" ]; then
  out=$(curl -sS -w '\n%{http_code}' -X "$method" "$url$path" -H "authorization: $auth" \
    -H 'content-type: application/json' --data-binary "$body")
else
  out=$(curl -sS -w '\n%{http_code}' -X "$method" "$url$path" -H "authorization: $auth")
fi
echo "HTTP ${out##*$'\n'}" >&2
printf '%s\n' "${out%$'\n'*}"
