// The one-code cashier in headless Chromium (playwright-core driving the system's Chromium)
// against a running `paymux serve` with its sandboxes — started by run.sh beside this file.
//
// For the WeChat, Alipay and UnionPay QuickPass User-Agents on a 375×740 screen: open a static
// code, enter an amount, go through the wallet's OAuth / userAuth step and the sandbox's stand-in
// of the wallet's payment sheet, see success; then a payment link /p/{token} opened and paid in
// WeChat. The payments are `succeeded` in the merchant API (run.sh then runs `paymux ledger
// audit`). Then the clear pages — another app, our own wallet (no channel yet), a disabled code, a
// fixed-amount code sent another amount, a paid link, a tampered /p/ link — each creating nothing.
// Screenshots go to SCREENSHOT_DIR.
//
// Env: PAYMUX_URL, PAYMUX_KEY_ID, PAYMUX_KEY_SECRET, SCREENSHOT_DIR, CHROMIUM (/usr/bin/chromium).

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = need('PAYMUX_URL');
const KEY_ID = need('PAYMUX_KEY_ID');
const KEY_SECRET = need('PAYMUX_KEY_SECRET');
const SHOTS = need('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const VIEWPORT = { width: 375, height: 740 };

const UA = {
  wechat:
    'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 ' +
    'Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.49.2600(0x28003133) WeChat/arm64 Weixin ' +
    'NetType/WIFI Language/zh_CN',
  alipay:
    'Mozilla/5.0 (Linux; U; Android 14; zh-CN; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) ' +
    'Version/4.0 Chrome/120.0 Mobile Safari/537.36 NebulaSDK/1.8.100112 Nebula ' +
    'AliApp(AP/10.5.86.8000) AlipayClient/10.5.86.8000 Language/zh-Hans',
  unionpay:
    'Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240105.004; wv) AppleWebKit/537.36 (KHTML, ' +
    'like Gecko) Version/4.0 Chrome/120.0 Mobile Safari/537.36 (com.unionpay.mobilepay) ' +
    '(cordova 7.0.0) (updebug 0) (version 1003) (UnionPay/1.0 CloudPay) (clientVersion 203) ' +
    '(language zh_CN) (languageFamily zh_CN) (upHtml) (walletMode 00)',
  ours:
    'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 ' +
    'Mobile Safari/537.36 PaymuxWallet/2.3.1',
  unknown:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like ' +
    'Gecko) Version/17.4 Mobile/15E148 Safari/604.1',
};

const STAND_IN = /\/sandbox\/(wechat|alipay|unionpay)\/sandbox\/wallet/;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAIL: set ${name}`);
    process.exit(2);
  }
  return v;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`  ok  ${what}`);
}

/** A signed merchant API request (PAYMUX-HMAC-SHA256, as scripts/paymux-curl.sh). */
async function api(method, pathAndQuery, body) {
  const text = body === undefined ? '' : JSON.stringify(body);
  const ts = Math.floor(Date.now() / 1000).toString();
  const nonce = crypto.randomBytes(16).toString('hex');
  const bodyHash = crypto.createHash('sha256').update(text).digest('hex');
  const signature = crypto
    .createHmac('sha256', KEY_SECRET)
    .update(`${method}\n${pathAndQuery}\n${ts}\n${nonce}\n${bodyHash}\n`)
    .digest('hex');
  const headers = {
    authorization: `PAYMUX-HMAC-SHA256 key_id=${KEY_ID},timestamp=${ts},nonce=${nonce},signature=${signature}`,
  };
  if (text) headers['content-type'] = 'application/json';
  const r = await fetch(BASE + pathAndQuery, { method, headers, body: text || undefined });
  const json = await r.json();
  if (r.status >= 400) throw new Error(`${method} ${pathAndQuery}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

const payments = async () => (await api('GET', '/v1/payments?limit=100')).data;

async function newPage(browser, ua, lang) {
  const context = await browser.newContext({
    userAgent: ua,
    viewport: VIEWPORT,
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    locale: lang.startsWith('en') ? 'en-US' : 'zh-CN',
    extraHTTPHeaders: { 'accept-language': lang },
  });
  return context.newPage();
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Nothing wider than the phone's screen. */
async function fitsNarrowScreen(page, what) {
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= VIEWPORT.width, `${what}: fits a ${VIEWPORT.width} px screen (${width} px)`);
}

async function journey(browser, wallet, lang, codeUrl, amount, expectLarge) {
  console.log(`${wallet}: pay ${amount} at ${codeUrl}`);
  const page = await newPage(browser, UA[wallet], lang);
  const opened = await page.goto(codeUrl);
  check(opened.status() === 200, `${wallet}: the code's page opens`);
  await page.waitForSelector('#pay-form');
  await fitsNarrowScreen(page, `${wallet} code page`);
  await shot(page, `${wallet}-1-code`);
  if (expectLarge) {
    await page.click('#large-toggle');
    check(await page.evaluate(() => document.body.classList.contains('large')), `${wallet}: large text on`);
    await page.reload();
    check(await page.evaluate(() => document.body.classList.contains('large')), `${wallet}: large text remembered`);
    await fitsNarrowScreen(page, `${wallet} code page, large text`);
    await shot(page, `${wallet}-1-code-large`);
  }
  if (await page.$('#amount-input')) await page.fill('#amount-input', amount);
  // Pay → OAuth / userAuth redirect → pay page → (no bridge: sandbox) the wallet stand-in's sheet.
  await Promise.all([page.waitForURL(STAND_IN), page.click('#pay')]);
  await page.waitForSelector('#pay');
  check((await page.textContent('#total')).includes(amount), `${wallet}: the wallet sheet shows ¥${amount}`);
  await shot(page, `${wallet}-2-wallet`);
  await Promise.all([page.waitForURL(/\/c\/[^/]+\/r\//), page.click('#pay')]);
  await page.waitForSelector('#status[data-status="succeeded"]', { timeout: 30000 });
  check(true, `${wallet}: the result page shows success`);
  await fitsNarrowScreen(page, `${wallet} result page`);
  await shot(page, `${wallet}-3-result`);
  await page.context().close();
}

/** A payment link opened in a wallet app: the payment's page, pay, the wallet, the result. */
async function linkJourney(browser, wallet, lang, payUrl, amount) {
  console.log(`${wallet}: pay the link ${payUrl}`);
  const page = await newPage(browser, UA[wallet], lang);
  const opened = await page.goto(payUrl);
  check(opened.status() === 200, `${wallet}: the link's page opens`);
  await page.waitForSelector('#pay-form');
  check((await page.textContent('#amount')).includes(amount), `${wallet}: the link shows ¥${amount}`);
  await fitsNarrowScreen(page, `${wallet} link page`);
  await shot(page, `link-${wallet}-1-page`);
  await Promise.all([page.waitForURL(STAND_IN), page.click('#pay')]);
  await page.waitForSelector('#pay');
  check((await page.textContent('#total')).includes(amount), `${wallet}: the wallet sheet shows ¥${amount}`);
  await shot(page, `link-${wallet}-2-wallet`);
  await Promise.all([page.waitForURL(/\/p\/[^/]+\/r$/), page.click('#pay')]);
  await page.waitForSelector('#status[data-status="succeeded"]', { timeout: 30000 });
  check(true, `${wallet}: the link's result page shows success`);
  await fitsNarrowScreen(page, `${wallet} link result page`);
  await shot(page, `link-${wallet}-3-result`);
  // Opened again: paid, nothing more to pay.
  const again = await page.goto(payUrl);
  check(again.status() === 200 && (await page.$('#paid')) && !(await page.$('#pay-form')), `${wallet}: the paid link says so`);
  await shot(page, `link-${wallet}-4-paid`);
  await page.context().close();
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const open = await api('POST', '/v1/codes', { store_id: 'store-7', terminal_id: 'till-2', description: '人民路店' });
    const fixed = await api('POST', '/v1/codes', { store_id: 'store-8', fixed_amount: 880 });
    const disabled = await api('POST', '/v1/codes', { store_id: 'store-9' });
    await api('POST', `/v1/codes/${disabled.id}/disable`);

    await journey(browser, 'wechat', 'zh-CN,zh;q=0.9', open.url, '12.34', true);
    await journey(browser, 'alipay', 'en-US,en;q=0.8', fixed.url, '8.80', false);
    await journey(browser, 'unionpay', 'zh-CN,zh;q=0.9', open.url, '45.60', false);
    const paidLink = await api('POST', '/v1/payments', {
      merchant_order_no: `paid-link-${Date.now()}`, amount: 1999, currency: 'CNY', subject: '外卖订单', method: 'qr_merchant',
    });
    await linkJourney(browser, 'wechat', 'zh-CN,zh;q=0.9', paidLink.pay_url, '19.99');
    const paid = await payments();
    check(paid.length === 4, 'four payments');
    for (const [wallet, amount, store] of [['wechat', 1234, 'store-7'], ['alipay', 880, 'store-8'], ['unionpay', 4560, 'store-7']]) {
      const p = paid.find((x) => x.wallet === wallet);
      check(p && p.status === 'succeeded' && p.method === 'qr_static', `${wallet}: payment succeeded, qr_static`);
      check(p.amount === amount && p.store_id === store, `${wallet}: amount ${amount}, store ${store}`);
    }
    const l = paid.find((x) => x.id === paidLink.id);
    check(l && l.status === 'succeeded' && l.method === 'qr_merchant' && l.channel_account_id, 'the link: succeeded on one channel account');

    // The clear pages. A link to a payment without wallet, to tamper with.
    const link = await api('POST', '/v1/payments', {
      merchant_order_no: `link-${Date.now()}`, amount: 100, currency: 'CNY', subject: 'Link', method: 'qr_merchant',
    });
    const before = (await payments()).length;

    const other = await newPage(browser, UA.unknown, 'zh-CN');
    let r = await other.goto(open.url);
    check(r.status() === 200 && (await other.$('#apps')) && !(await other.$('#pay-form')), 'another app: the apps that can pay');
    await fitsNarrowScreen(other, 'apps page');
    await shot(other, 'clear-1-unknown-app');

    const ours = await newPage(browser, UA.ours, 'zh-CN');
    r = await ours.goto(open.url);
    check(r.status() === 200 && (await ours.$('#own-wallet')) && (await ours.$('#apps')) && !(await ours.$('#pay-form')),
      'our wallet: cannot pay yet, the apps that can');
    await fitsNarrowScreen(ours, 'our wallet page');
    await shot(ours, 'clear-1b-own-wallet');

    const wx = await newPage(browser, UA.wechat, 'zh-CN');
    r = await wx.goto(disabled.url);
    check(r.status() === 410 && (await wx.$('#disabled')), 'disabled code: says so');
    await shot(wx, 'clear-2-disabled-code');

    r = await wx.goto(fixed.url);
    await wx.waitForSelector('#pay-form');
    // A client-side change of the fixed amount: the server refuses it.
    await wx.evaluate(() => { document.querySelector('input[name=amount]').value = '0.01'; });
    const [resp] = await Promise.all([wx.waitForNavigation(), wx.click('#pay')]);
    check(resp.status() === 422 && (await wx.$('#amount-mismatch')), 'fixed-amount code, other amount: refused');
    await shot(wx, 'clear-3-fixed-amount-mismatch');

    const token = link.pay_url.split('/p/')[1];
    const flipped = token.slice(0, 10) + (token[10] === 'A' ? 'B' : 'A') + token.slice(11);
    r = await wx.goto(`${BASE}/p/${flipped}`);
    check(r.status() === 404 && (await wx.$('#error')), 'tampered /p/ token: clear page');
    await shot(wx, 'clear-4-tampered-link');

    check((await payments()).length === before, 'the clear pages created nothing');
  } finally {
    await browser.close();
  }
  console.log(`PASS: cashier in headless Chromium; screenshots in ${SHOTS}`);
}

main().catch((e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
