// The operations console in headless Chromium (playwright-core driving the system's Chromium)
// against a running `paymux serve` with its sandboxes — started by run.sh beside this file, which
// also created the operators (`paymux operator create`).
//
// Setup through the merchant API and the WeChat sandbox's faults: payments "booked yesterday" by the
// sandbox (`clock_offset_secs`), two of them listed with another amount in the bill
// (`bill_overrides`), a failed one; then `paymux reconcile --date <yesterday>` → two open
// `amount_mismatch` exceptions.
//
// In Chromium, as the operator on a laptop screen (English): log in with the token, see the
// dashboard's chart and figures (equal to the JSON API's), open the run's report and download its
// CSV, find the exception in the queue, assign it to me, comment, resolve it, see it resolved —
// confirmed through the JSON API and the audit log; search a payment; the settlements; log out (the
// token is gone from the tab). As a viewer on a phone screen (Chinese): the other exception's
// buttons are disabled and the API refuses the viewer. A wrong token is refused. The token is never
// in a URL. Screenshots go to SCREENSHOT_DIR.
//
// Env: PAYMUX_URL, PAYMUX_KEY_ID, PAYMUX_KEY_SECRET, PAYMUX_BIN, OPERATOR_FILE, VIEWER_FILE,
// ADMIN_FILE (JSON of `paymux operator create`), SCREENSHOT_DIR, CHROMIUM (/usr/bin/chromium).

import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = need('PAYMUX_URL');
const KEY_ID = need('PAYMUX_KEY_ID');
const KEY_SECRET = need('PAYMUX_KEY_SECRET');
const BIN = need('PAYMUX_BIN');
const OPERATOR = JSON.parse(fs.readFileSync(need('OPERATOR_FILE'), 'utf8'));
const VIEWER = JSON.parse(fs.readFileSync(need('VIEWER_FILE'), 'utf8'));
const ADMIN = JSON.parse(fs.readFileSync(need('ADMIN_FILE'), 'utf8'));
const SHOTS = need('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LAPTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 740 };

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

/** The ops JSON API with an operator's token; returns [status, body]. */
async function ops(token, method, p, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`${BASE}/ops/v1${p}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return [r.status, await r.json()];
}

async function putFaults(faults) {
  const r = await fetch(`${BASE}/sandbox/wechat/sandbox/faults`, {
    method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(faults),
  });
  if (r.status !== 200) throw new Error(`faults: ${r.status} ${await r.text()}`);
}

/** YYYY-MM-DD in Asia/Shanghai, `days` from today. */
function shanghaiDay(days) {
  const d = new Date(Date.now() + 8 * 3600e3 + days * 86400e3);
  return d.toISOString().slice(0, 10);
}

/** Seconds from now to `day` 10:00 Asia/Shanghai. */
function offsetTo(day) {
  return Math.round((Date.parse(`${day}T10:00:00+08:00`) - Date.now()) / 1000);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function newPage(browser, viewport, lang) {
  const context = await browser.newContext({
    viewport,
    deviceScaleFactor: viewport === PHONE ? 2 : 1,
    isMobile: viewport === PHONE,
    hasTouch: viewport === PHONE,
    locale: lang.startsWith('en') ? 'en-US' : 'zh-CN',
    timezoneId: 'Asia/Shanghai',
    extraHTTPHeaders: { 'accept-language': lang },
    acceptDownloads: true,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  page.problems = problems;
  return page;
}

const tokenNotInUrl = (page, token) => check(!page.url().includes(token), `the token is not in the URL (${page.url()})`);

async function login(page, token) {
  const r = await page.goto(`${BASE}/ops/`);
  check(r.status() === 200, 'the console opens');
  const csp = r.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'), 'a strict Content-Security-Policy');
  await page.waitForSelector('#login-view:not([hidden])');
  await page.fill('#token', token);
  await page.click('#login-button');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForSelector('#dash-svg');
  tokenNotInUrl(page, token);
  check((await page.evaluate(() => sessionStorage.getItem('paymux-ops-token'))) === token, 'the token is kept in sessionStorage');
  check((await page.evaluate(() => document.cookie)) === '', 'no cookie');
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const yesterday = shanghaiDay(-1);

  // ---- the day's books: WeChat payments booked yesterday by the sandbox, one failure ----
  await putFaults({ clock_offset_secs: offsetTo(yesterday) });
  const stamp = Date.now();
  const pay = (no, amount, code) => api('POST', '/v1/payments', {
    merchant_order_no: `ops-${stamp}-${no}`, amount, currency: 'CNY', subject: 'Tea', method: 'code_scan', auth_code: code,
  });
  const p1 = await pay(1, 1200, '134567890123456789');
  const p2 = await pay(2, 3400, '134567890123456789');
  const p3 = await pay(3, 5600, '134567890123456789');
  const failed = await pay(4, 700, '134567890123451003');
  const ali = await pay(5, 900, '281234567890123456');
  check([p1, p2, p3, ali].every((p) => p.status === 'succeeded') && failed.status === 'failed', 'four payments succeeded, one failed');
  const otn = (p) => p.id.replaceAll('-', '');
  // The bill lists two of them with other amounts.
  await putFaults({
    clock_offset_secs: offsetTo(yesterday),
    bill_overrides: { [otn(p1)]: { amount_fen: 1100 }, [otn(p2)]: { amount_fen: 3300 } },
  });
  const out = execFileSync(BIN, ['reconcile', '--date', yesterday], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  check(out.includes(`reconciliation of ${yesterday}`), `paymux reconcile --date ${yesterday}`);

  const [, openList] = await ops(OPERATOR.token, 'GET', '/exceptions?status=open');
  const exOf = (p) => openList.data.find((e) => e.out_trade_no === otn(p));
  const ex1 = exOf(p1);
  const ex2 = exOf(p2);
  check(ex1 && ex2 && ex1.class === 'amount_mismatch' && ex2.class === 'amount_mismatch', 'two open amount_mismatch exceptions');
  const [, dash] = await ops(VIEWER.token, 'GET', '/dashboard');
  const wechat = dash.by_channel_account.find((a) => a.channel_account_id === p1.channel_account_id);
  check(wechat && wechat.count === 4 && wechat.succeeded_count === 3 && wechat.failed_count === 1
    && wechat.amount_minor === 1200 + 3400 + 5600 + 700 && wechat.success_rate_bps === 7500,
  'the dashboard API: WeChat 4 payments, 3 succeeded, 75%');

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives each launch a fresh temporary profile (--user-data-dir).
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    // ---- the operator, on a laptop, in English ----
    console.log('operator (laptop, English)');
    const page = await newPage(browser, LAPTOP, 'en-US,en;q=0.9');
    await login(page, OPERATOR.token);
    check((await page.textContent('#who')).includes('Olga Operator'), 'logged in as Olga Operator');
    // The chart: one bar group per channel account with the API's counts.
    const bars = await page.$$eval('#dash-svg g.bar', (gs) => gs.map((g) => [g.getAttribute('data-account'), Number(g.getAttribute('data-count'))]));
    check(bars.length === dash.by_channel_account.length, `the chart has a bar per channel account (${bars.length})`);
    for (const a of dash.by_channel_account) {
      check(bars.some(([id, n]) => id === (a.channel_account_id || '') && n === a.count), `bar of ${a.name || a.kind}: ${a.count} payments`);
    }
    check((await page.$$('#dash-svg rect.bar-ok')).length >= 1 && (await page.$$('#dash-svg rect.bar-failed')).length === 1, 'succeeded and failed parts drawn');
    const wechatRow = await page.$$eval('#dash-accounts tbody tr', (rows) => rows.map((r) => r.textContent));
    check(wechatRow.some((t) => t.includes('wechat_v3') && t.includes('75.00%') && t.includes('109.00')), 'the WeChat row: 109.00 CNY, 75.00%');
    await shot(page, 'ops-1-dashboard');

    // The run's report.
    await page.click('#nav a[data-view="runs"]');
    await page.waitForSelector(`#runs a[href="#run/${ex1.run_id}"]`);
    await shot(page, 'ops-2-runs');
    await page.click(`#runs a[href="#run/${ex1.run_id}"]`);
    await page.waitForSelector('#run-report svg');
    const report = await page.textContent('#run-report');
    check(report.includes(otn(p1)) && report.includes('amount_mismatch'), "the run's report shows the mismatched payment");
    tokenNotInUrl(page, OPERATOR.token);
    await shot(page, 'ops-3-report');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#run-csv')]);
    const csv = fs.readFileSync(await download.path(), 'utf8');
    check(csv.startsWith('class,kind,out_trade_no') && csv.includes(otn(p1)), "the run's items CSV downloads");

    // The exception: find, assign to me, comment, resolve, see it resolved.
    await page.click('#nav a[data-view="exceptions"]');
    await page.selectOption('#ex-filter', 'open');
    await page.waitForSelector(`#exceptions tr[data-id="${ex1.id}"]`);
    await shot(page, 'ops-4-queue');
    await page.click(`#exceptions tr[data-id="${ex1.id}"] a`);
    await page.waitForSelector('#ex-status[data-status="open"]');
    check((await page.textContent('#ex-facts')).includes(otn(p1)), 'the exception shows its out_trade_no');
    await page.click('#ex-assign');
    await page.waitForSelector('#ex-status[data-status="assigned"]');
    check(await page.isDisabled('#ex-assign'), 'assigned to me');
    await page.fill('#ex-comment-text', 'The bill says 11.00; asked WeChat.');
    await page.click('#ex-comment');
    await page.waitForFunction(() => document.querySelector('#ex-comments').textContent.includes('asked WeChat'));
    await page.selectOption('#ex-resolution', 'channel_corrected');
    await page.fill('#ex-note', 'WeChat corrected its bill');
    await page.click('#ex-resolve');
    await page.waitForSelector('#ex-status[data-status="resolved"]');
    check(await page.isDisabled('#ex-resolve'), 'resolved: no more resolving');
    await shot(page, 'ops-5-resolved');
    await page.click('#nav a[data-view="exceptions"]');
    await page.selectOption('#ex-filter', 'mine');
    await page.waitForSelector(`#exceptions tr[data-id="${ex1.id}"] .badge[data-status="resolved"]`);
    check(true, 'the queue shows it resolved under "Assigned to me"');
    await page.selectOption('#ex-filter', 'open');
    await page.waitForSelector(`#exceptions tr[data-id="${ex2.id}"]`);
    check(!(await page.$(`#exceptions tr[data-id="${ex1.id}"]`)), 'no longer among the open ones');

    // The JSON API agrees, and the audit log has each step.
    const [st, got] = await ops(OPERATOR.token, 'GET', `/exceptions/${ex1.id}`);
    check(st === 200 && got.status === 'resolved' && got.resolution === 'channel_corrected'
      && got.note === 'WeChat corrected its bill' && got.assignee_id === OPERATOR.id && got.resolved_by === OPERATOR.id
      && got.comments.length === 1 && got.comments[0].operator_name === 'Olga Operator', 'the JSON API: resolved as channel_corrected, by Olga, one comment');
    const [, audit] = await ops(ADMIN.token, 'GET', `/audit-log?target=exception:${ex1.id}`);
    const actions = audit.data.map((r) => r.action).sort().join(',');
    check(actions === 'exception.assign,exception.comment,exception.resolve', `the audit log: ${actions}`);

    // Payment search by out_trade_no, then the settlements.
    await page.click('#nav a[data-view="payments"]');
    await page.fill('#pay-id', otn(p3));
    await page.click('#pay-search');
    await page.waitForFunction((id) => {
      const rows = document.querySelectorAll('#pay-results tbody tr');
      return rows.length === 1 && rows[0].textContent.includes(id);
    }, p3.id);
    check(true, 'payment search by out_trade_no finds it');
    await page.fill('#pay-id', '');
    await page.selectOption('#pay-status', 'failed');
    await page.click('#pay-search');
    await page.waitForFunction((id) => {
      const rows = document.querySelectorAll('#pay-results tbody tr');
      return rows.length === 1 && rows[0].textContent.includes(id);
    }, failed.id);
    check(true, 'payment search by status finds the failed one');
    await page.fill('#pay-date', shanghaiDay(0));
    await page.click('#pay-search');
    await page.waitForFunction((id) => {
      const rows = document.querySelectorAll('#pay-results tbody tr');
      return rows.length === 1 && rows[0].textContent.includes(id);
    }, failed.id);
    await page.fill('#pay-date', yesterday);
    await page.click('#pay-search');
    await page.waitForFunction(() => {
      const rows = document.querySelectorAll('#pay-results tbody tr');
      return rows.length === 1 && rows[0].querySelector('td.muted');
    });
    check(true, 'payment search by day: made today, none yesterday');
    await shot(page, 'ops-6-payments');
    await page.click('#nav a[data-view="settlements"]');
    await page.fill('#st-date', yesterday);
    await page.click('#st-form button');
    await page.waitForFunction((day) => [...document.querySelectorAll('#settlements tbody tr')].some((r) => r.textContent.includes(day)), yesterday);
    check(true, "yesterday's merchant settlement is listed");
    await shot(page, 'ops-7-settlements');
    check(page.problems.length === 0, `no script errors or policy violations (${page.problems.join(' | ')})`);

    await page.click('#logout');
    await page.waitForSelector('#login-view:not([hidden])');
    check((await page.evaluate(() => sessionStorage.length)) === 0, 'logged out: the tab keeps no token');
    await page.reload();
    await page.waitForSelector('#login-view:not([hidden])');
    check(await page.isHidden('#app'), 'after a reload: still logged out');
    await page.fill('#token', `${OPERATOR.token}x`);
    await page.click('#login-button');
    await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
    check(await page.isHidden('#app'), 'a wrong token is refused');
    await page.context().close();

    // ---- the viewer, on a phone, in Chinese ----
    console.log('viewer (phone, Chinese)');
    const phone = await newPage(browser, PHONE, 'zh-CN,zh;q=0.9');
    await login(phone, VIEWER.token);
    check((await phone.textContent('#who')).includes('查看者'), 'the viewer is shown as 查看者');
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(width <= PHONE.width, `the dashboard fits a ${PHONE.width} px screen (${width} px)`);
    await shot(phone, 'ops-8-phone-dashboard');
    await phone.click('#nav a[data-view="exceptions"]');
    await phone.waitForSelector(`#exceptions tr[data-id="${ex2.id}"]`);
    await phone.click(`#exceptions tr[data-id="${ex2.id}"] a`);
    await phone.waitForSelector('#ex-status[data-status="open"]');
    for (const b of ['#ex-assign', '#ex-comment', '#ex-resolve']) {
      check(await phone.isDisabled(b), `viewer: ${b} disabled`);
    }
    check(await phone.isVisible('#ex-readonly'), 'viewer: told why');
    check(phone.problems.length === 0, `no script errors or policy violations (${phone.problems.join(' | ')})`);
    // What a disabled button would have sent (the browser logs the refusal as a failed load).
    const refused = await phone.evaluate(async (id) => {
      const r = await fetch(`/ops/v1/exceptions/${id}/resolve`, {
        method: 'POST',
        headers: { authorization: `Bearer ${sessionStorage.getItem('paymux-ops-token')}`, 'content-type': 'application/json' },
        body: JSON.stringify({ resolution: 'no_action' }),
      });
      return r.status;
    }, ex2.id);
    check(refused === 403, 'viewer: the API refuses to resolve (403)');
    const pw = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(pw <= PHONE.width, `the exception fits a ${PHONE.width} px screen (${pw} px)`);
    await shot(phone, 'ops-9-phone-viewer-exception');
    await phone.context().close();

    const [, still] = await ops(VIEWER.token, 'GET', `/exceptions/${ex2.id}`);
    check(still.status === 'open', 'the other exception is still open');
  } finally {
    await browser.close();
  }
  console.log(`PASS: operations console in headless Chromium; screenshots in ${SHOTS}`);
}

main().catch((e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
