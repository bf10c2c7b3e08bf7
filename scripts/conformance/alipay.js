#!/usr/bin/env node
// Alipay open API (gateway.do, "OpenAPI 2.0") conformance: drives the unmodified
// npm SDK `alipay-sdk` (pinned in package.json) against the paymux sandbox.
//
// Env: SANDBOX_URL (the gateway is SANDBOX_URL + ALIPAY_GATEWAY_PATH, default
//      "/gateway.do"), ALIPAY_APP_ID, ALIPAY_APP_PRIVATE_KEY (PEM path, PKCS#1
//      or PKCS#8), ALIPAY_PUBLIC_KEY (PEM path, SPKI "BEGIN PUBLIC KEY").
// Optional: PAYMUX_CONFORMANCE_DEPS = dir holding node_modules with the SDKs.
//
// exec() only verifies the response `sign` when called with
// { validateSign: true }, which every call here does. exec() does NOT throw on
// business failures (code != 10000); the codes are asserted here.
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
  console.error(`FAIL alipay: ${msg}`);
  process.exit(1);
}

function env(name) {
  const v = process.env[name];
  if (!v) die(`environment variable ${name} is required`);
  return v;
}

function readPem(name) {
  const p = env(name);
  let text;
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch (e) {
    return die(`${name}=${p}: ${e.message}`);
  }
  // The SDK re-wraps keys line by line and only strips the BEGIN/END lines when
  // they are the very first/last line: a trailing newline would break it.
  return text.trim();
}

const base = env('SANDBOX_URL').replace(/\/+$/, '');
const gatewayPath = process.env.ALIPAY_GATEWAY_PATH || '/gateway.do';
const GATEWAY = base + (gatewayPath.startsWith('/') ? gatewayPath : `/${gatewayPath}`);
const APP_ID = env('ALIPAY_APP_ID');
const appKey = readPem('ALIPAY_APP_PRIVATE_KEY');
const alipayPub = readPem('ALIPAY_PUBLIC_KEY');
if (!/-----BEGIN (RSA )?PRIVATE KEY-----/.test(appKey)) die('ALIPAY_APP_PRIVATE_KEY is not a PEM private key');
if (!/-----BEGIN PUBLIC KEY-----/.test(alipayPub)) {
  die('ALIPAY_PUBLIC_KEY must be an SPKI PEM ("BEGIN PUBLIC KEY"); the SDK cannot take PKCS#1 public keys or certificates here');
}

const { AlipaySdk } = sdkRequire('alipay-sdk');

const sdk = new AlipaySdk({
  appId: APP_ID,
  privateKey: appKey,
  // Without this the SDK assumes PKCS#1 and mangles a "BEGIN PRIVATE KEY" PEM.
  keyType: appKey.includes('BEGIN RSA PRIVATE KEY') ? 'PKCS1' : 'PKCS8',
  alipayPublicKey: alipayPub,
  gateway: GATEWAY,
  endpoint: base, // only used by the OpenAPI v3 curl() API, not by exec()
  signType: 'RSA2',
  camelcase: false, // keep wire field names (trade_status, not tradeStatus)
  timeout: 10000,
});

const runId = `${Date.now().toString(36)}${crypto.randomBytes(3).toString('hex')}`.toUpperCase();
const precreateNo = `PMXAQ${runId}`;
const payNo = `PMXAP${runId}`;
const refundReq = `PMXAR${runId}`;
const TOTAL = '1.01';
const REFUND = '0.51';

function describe(err) {
  const raw = err && err.responseDataRaw ? ` raw=${err.responseDataRaw}` : '';
  return `${(err && err.name) || 'Error'}: ${(err && err.message) || err}${raw}`;
}

async function call(method, bizContent) {
  let res;
  try {
    res = await sdk.exec(method, { bizContent }, { validateSign: true });
  } catch (err) {
    die(`${method}: SDK rejected the response: ${describe(err)}`);
  }
  if (!res || res.code !== '10000') {
    die(`${method}: expected code 10000, got ${JSON.stringify(res)}`);
  }
  return res;
}

function check(cond, step, msg) {
  if (!cond) die(`${step}: ${msg}`);
}

function ok(name, detail) {
  console.log(`ok   alipay ${name}${detail ? `: ${detail}` : ''}`);
}

(async () => {
  let m = 'alipay.trade.precreate';
  let r = await call(m, {
    out_trade_no: precreateNo,
    total_amount: TOTAL,
    subject: 'paymux conformance precreate',
  });
  check(r.out_trade_no === precreateNo, m, `out_trade_no mismatch: ${JSON.stringify(r)}`);
  check(typeof r.qr_code === 'string' && r.qr_code.length > 0, m, `missing qr_code: ${JSON.stringify(r)}`);
  ok(m, `out_trade_no=${precreateNo} qr_code=${r.qr_code}`);

  m = 'alipay.trade.pay';
  r = await call(m, {
    out_trade_no: payNo,
    scene: 'bar_code',
    auth_code: '281234567890123456',
    total_amount: TOTAL,
    subject: 'paymux conformance barcode',
    product_code: 'FACE_TO_FACE_PAYMENT',
  });
  check(r.out_trade_no === payNo, m, `out_trade_no mismatch: ${JSON.stringify(r)}`);
  check(typeof r.trade_no === 'string' && r.trade_no, m, `missing trade_no: ${JSON.stringify(r)}`);
  ok(m, `code=10000 out_trade_no=${payNo} trade_no=${r.trade_no}`);
  const tradeNo = r.trade_no;

  m = 'alipay.trade.query';
  r = await call(m, { out_trade_no: payNo });
  check(r.out_trade_no === payNo, m, `out_trade_no mismatch: ${JSON.stringify(r)}`);
  check(r.trade_no === tradeNo, m, `trade_no ${r.trade_no} != pay's ${tradeNo}`);
  check(r.trade_status === 'TRADE_SUCCESS', m, `expected trade_status TRADE_SUCCESS, got ${r.trade_status}`);
  check(r.total_amount === TOTAL, m, `total_amount ${r.total_amount} != ${TOTAL}`);
  ok(m, 'trade_status=TRADE_SUCCESS');

  m = 'alipay.trade.refund';
  r = await call(m, {
    out_trade_no: payNo,
    refund_amount: REFUND,
    out_request_no: refundReq,
    refund_reason: 'paymux conformance',
  });
  check(r.out_trade_no === payNo, m, `out_trade_no mismatch: ${JSON.stringify(r)}`);
  check(r.fund_change === 'Y', m, `expected fund_change Y, got ${r.fund_change}`);
  check(r.refund_fee === REFUND, m, `expected refund_fee ${REFUND} (cumulative), got ${r.refund_fee}`);
  ok(m, `out_request_no=${refundReq} fund_change=Y refund_fee=${r.refund_fee}`);

  m = 'alipay.trade.fastpay.refund.query';
  r = await call(m, { out_trade_no: payNo, out_request_no: refundReq });
  check(r.out_request_no === refundReq, m, `out_request_no mismatch: ${JSON.stringify(r)}`);
  check(r.refund_amount === REFUND, m, `refund_amount ${r.refund_amount} != ${REFUND}`);
  check(r.refund_status === 'REFUND_SUCCESS', m, `expected refund_status REFUND_SUCCESS, got ${r.refund_status}`);
  ok(m, 'refund_status=REFUND_SUCCESS');

  console.log('PASS alipay: 5 steps');
})().catch((err) => die(`unexpected: ${describe(err)}`));
