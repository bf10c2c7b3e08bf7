#!/usr/bin/env node
// WeChat Pay API v3 conformance: drives the unmodified npm SDK
// `wechatpay-axios-plugin` (pinned in package.json) against the paymux sandbox.
//
// Env: SANDBOX_URL, WX_MCHID, WX_APPID, WX_MERCHANT_KEY (PEM path),
//      WX_MERCHANT_SERIAL, WX_PLATFORM_PUBLIC_KEY (PEM path: SPKI public key or
//      X.509 certificate), WX_PLATFORM_SERIAL (e.g. PUB_KEY_ID_0114...),
//      WX_APIV3_KEY (32 bytes; checked for length, not used by these calls).
// Optional: PAYMUX_CONFORMANCE_DEPS = dir holding node_modules with the SDKs.
//
// Every 2xx response is verified by the SDK itself (Wechatpay-* headers,
// RSA-SHA256 over "timestamp\nnonce\nbody\n"); a failed verification or a
// non-2xx status rejects the SDK promise, which fails the step here.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const crypto = require('crypto');

function sdkRequire(name) {
  const deps = process.env.PAYMUX_CONFORMANCE_DEPS;
  if (deps) return createRequire(path.join(path.resolve(deps), 'package.json'))(name);
  return require(name);
}

function die(msg) {
  console.error(`FAIL wechat: ${msg}`);
  process.exit(1);
}

function env(name) {
  const v = process.env[name];
  if (!v) die(`environment variable ${name} is required`);
  return v;
}

function readPem(name) {
  const p = env(name);
  try {
    return fs.readFileSync(p, 'utf8');
  } catch (e) {
    return die(`${name}=${p}: ${e.message}`);
  }
}

function describe(err) {
  if (err && err.response) {
    const body = typeof err.response.data === 'string' ? err.response.data : JSON.stringify(err.response.data);
    return `${err.code || 'ERR'} HTTP ${err.response.status}: ${err.message} body=${body}`;
  }
  return `${(err && err.code) || 'ERR'}: ${(err && err.message) || err}`;
}

function check(cond, step, msg) {
  if (!cond) die(`${step}: ${msg}`);
}

const SANDBOX_URL = env('SANDBOX_URL').replace(/\/+$/, '') + '/';
const MCHID = env('WX_MCHID');
const APPID = env('WX_APPID');
const MERCHANT_SERIAL = env('WX_MERCHANT_SERIAL');
const PLATFORM_SERIAL = env('WX_PLATFORM_SERIAL');
const APIV3_KEY = env('WX_APIV3_KEY');
if (Buffer.byteLength(APIV3_KEY) !== 32) die('WX_APIV3_KEY must be exactly 32 bytes');
const merchantKey = readPem('WX_MERCHANT_KEY');
const platformKey = readPem('WX_PLATFORM_PUBLIC_KEY');
if (MERCHANT_SERIAL === PLATFORM_SERIAL) die('WX_MERCHANT_SERIAL must differ from WX_PLATFORM_SERIAL (the SDK rejects it)');

const { Wechatpay } = sdkRequire('wechatpay-axios-plugin');

const wxpay = new Wechatpay({
  baseURL: SANDBOX_URL,
  mchid: MCHID,
  serial: MERCHANT_SERIAL,
  privateKey: merchantKey,
  // `{serial: key}`: the response's Wechatpay-Serial must be a key of this map.
  // A PUB_KEY_ID_... serial with an SPKI public key is just another entry.
  certs: { [PLATFORM_SERIAL]: platformKey },
  timeout: 10000,
});

const runId = `${Date.now().toString(36)}${crypto.randomBytes(3).toString('hex')}`.toUpperCase();
const nativeNo = `PMXN${runId}`;
const codepayNo = `PMXC${runId}`;
const refundNo = `PMXR${runId}`;
const TOTAL = 101;
const REFUND = 51;

async function step(name, fn) {
  let res;
  try {
    res = await fn();
  } catch (err) {
    die(`${name}: SDK rejected the call: ${describe(err)}`);
  }
  return res;
}

function ok(name, detail) {
  console.log(`ok   wechat ${name}${detail ? `: ${detail}` : ''}`);
}

(async () => {
  // 1. Native order -> code_url
  let name = 'native create POST /v3/pay/transactions/native';
  let res = await step(name, () => wxpay.v3.pay.transactions.native.post({
    appid: APPID,
    mchid: MCHID,
    description: 'paymux conformance native',
    out_trade_no: nativeNo,
    notify_url: 'https://example.com/paymux/wechat/notify',
    amount: { total: TOTAL, currency: 'CNY' },
  }));
  check(res.status === 200, name, `expected HTTP 200, got ${res.status}`);
  check(res.data && typeof res.data.code_url === 'string' && res.data.code_url.length > 0, name,
    `missing code_url in ${JSON.stringify(res.data)}`);
  ok(name, `out_trade_no=${nativeNo} code_url=${res.data.code_url}`);

  // 2. Query the native order -> NOTPAY
  name = 'query native GET /v3/pay/transactions/out-trade-no/{out_trade_no}';
  res = await step(name, () => wxpay.v3.pay.transactions.outTradeNo._out_trade_no_.get({
    out_trade_no: nativeNo,
    params: { mchid: MCHID },
  }));
  check(res.data.out_trade_no === nativeNo, name, `out_trade_no mismatch: ${JSON.stringify(res.data)}`);
  check(res.data.trade_state === 'NOTPAY', name, `expected trade_state NOTPAY, got ${res.data.trade_state}`);
  ok(name, `trade_state=${res.data.trade_state}`);

  // 3. Code (micropay) payment with the test auth_code
  name = 'codepay POST /v3/pay/transactions/codepay';
  res = await step(name, () => wxpay.v3.pay.transactions.codepay.post({
    appid: APPID,
    mchid: MCHID,
    description: 'paymux conformance codepay',
    out_trade_no: codepayNo,
    payer: { auth_code: '134567890123456789' },
    amount: { total: TOTAL, currency: 'CNY' },
    scene_info: { store_info: { out_id: 'PMX-STORE-1' }, device_ip: '127.0.0.1' },
  }));
  check(res.status >= 200 && res.status < 300, name, `expected 2xx, got ${res.status}`);
  ok(name, `HTTP ${res.status} out_trade_no=${codepayNo} trade_state=${res.data && res.data.trade_state}`);

  // 4. Query by out_trade_no -> SUCCESS
  name = 'query codepay GET /v3/pay/transactions/out-trade-no/{out_trade_no}';
  res = await step(name, () => wxpay.v3.pay.transactions.outTradeNo._out_trade_no_.get({
    out_trade_no: codepayNo,
    params: { mchid: MCHID },
  }));
  check(res.data.out_trade_no === codepayNo, name, `out_trade_no mismatch: ${JSON.stringify(res.data)}`);
  check(res.data.trade_state === 'SUCCESS', name, `expected trade_state SUCCESS, got ${res.data.trade_state}`);
  check(res.data.amount && res.data.amount.total === TOTAL, name, `amount.total != ${TOTAL}: ${JSON.stringify(res.data.amount)}`);
  check(typeof res.data.transaction_id === 'string' && res.data.transaction_id, name, 'missing transaction_id');
  ok(name, `trade_state=SUCCESS transaction_id=${res.data.transaction_id}`);

  // 5. Refund part of it
  name = 'refund POST /v3/refund/domestic/refunds';
  res = await step(name, () => wxpay.v3.refund.domestic.refunds.post({
    out_trade_no: codepayNo,
    out_refund_no: refundNo,
    reason: 'paymux conformance',
    amount: { refund: REFUND, total: TOTAL, currency: 'CNY' },
  }));
  check(res.data.out_refund_no === refundNo, name, `out_refund_no mismatch: ${JSON.stringify(res.data)}`);
  check(['SUCCESS', 'PROCESSING'].includes(res.data.status), name, `unexpected refund status ${res.data.status}`);
  check(typeof res.data.refund_id === 'string' && res.data.refund_id, name, 'missing refund_id');
  ok(name, `out_refund_no=${refundNo} refund_id=${res.data.refund_id} status=${res.data.status}`);

  // 6. Refund query
  name = 'refund query GET /v3/refund/domestic/refunds/{out_refund_no}';
  res = await step(name, () => wxpay.v3.refund.domestic.refunds._out_refund_no_.get({
    out_refund_no: refundNo,
  }));
  check(res.data.out_refund_no === refundNo, name, `out_refund_no mismatch: ${JSON.stringify(res.data)}`);
  check(['SUCCESS', 'PROCESSING'].includes(res.data.status), name, `unexpected refund status ${res.data.status}`);
  check(res.data.amount && res.data.amount.refund === REFUND, name, `amount.refund != ${REFUND}: ${JSON.stringify(res.data.amount)}`);
  ok(name, `status=${res.data.status}`);

  console.log('PASS wechat: 6 steps');
})().catch((err) => die(`unexpected: ${describe(err)}`));
