// The paymux operations console (served as /ops/console.js): calls /ops/v1 with the operator's
// bearer token, kept in this tab's sessionStorage only (never in a URL or a cookie). Everything
// shown is built with DOM calls and textContent — no HTML from data, no inline code (the page's
// Content-Security-Policy allows neither).
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('console-data').textContent);
  var L = DATA.labels;
  var TOKEN_KEY = 'paymux-ops-token';
  var token = null;
  var me = null;

  function $(id) { return document.getElementById(id); }

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) e.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }

  function yuan(fen) {
    if (fen === null || fen === undefined) return '';
    var neg = fen < 0, a = Math.abs(fen);
    var s = Math.floor(a / 100) + '.' + String(a % 100).padStart(2, '0');
    return (neg ? '-' : '') + s;
  }

  function rate(bps) {
    if (bps === null || bps === undefined) return '—';
    return (bps / 100).toFixed(2) + '%';
  }

  var SHANGHAI = new Intl.DateTimeFormat('en-CA', { timeZone: 'Asia/Shanghai', year: 'numeric', month: '2-digit', day: '2-digit' });
  var SHANGHAI_TIME = new Intl.DateTimeFormat(DATA.lang, {
    timeZone: 'Asia/Shanghai', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  function today() { return SHANGHAI.format(new Date()); }
  function when(t) { return t ? SHANGHAI_TIME.format(new Date(t)) : ''; }
  function nextDay(d) {
    var t = new Date(d + 'T00:00:00Z');
    t.setUTCDate(t.getUTCDate() + 1);
    return t.toISOString().slice(0, 10);
  }
  function short(id) { return id ? String(id).slice(0, 8) + '…' : ''; }
  function lab(prefix, v) { return L[prefix + v] || v; }

  // ---- the API ----

  function ApiError(status, body) {
    this.status = status;
    this.body = body || {};
    this.message = (body && (body.detail || body.title)) || ('HTTP ' + status);
  }

  function api(method, path, body) {
    var headers = { authorization: 'Bearer ' + token, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    return fetch('/ops/v1' + path, {
      method: method, headers: headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (r) {
      if (r.status === 401 && token) { logout(L.session_ended); }
      var ct = r.headers.get('content-type') || '';
      var parsed = ct.indexOf('json') >= 0 ? r.json() : r.text();
      return parsed.then(function (b) {
        if (!r.ok) throw new ApiError(r.status, typeof b === 'object' ? b : null);
        return b;
      });
    });
  }

  function fetchText(path) {
    return fetch('/ops/v1' + path, {
      headers: { authorization: 'Bearer ' + token }, cache: 'no-store', credentials: 'omit',
    }).then(function (r) {
      if (!r.ok) throw new ApiError(r.status, null);
      return r.text();
    });
  }

  function qs(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== '' && params[k] !== null && params[k] !== undefined) {
        parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(params[k]));
      }
    });
    return parts.length ? '?' + parts.join('&') : '';
  }

  function showError(e) {
    var msg = e && e.message ? e.message : String(e);
    $('error').textContent = msg;
  }

  // ---- log in, log out ----

  function showLogin(message) {
    $('app').hidden = true;
    $('logout').hidden = true;
    $('who').textContent = '';
    $('login-view').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function logout(message) {
    token = null;
    me = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ }
    if (location.hash) history.replaceState(null, '', location.pathname);
    showLogin(message);
  }

  function start(t) {
    token = t;
    return api('GET', '/me').then(function (op) {
      me = op;
      try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* kept in memory only */ }
      $('login-view').hidden = true;
      $('app').hidden = false;
      $('logout').hidden = false;
      $('who').textContent = op.name + ' · ' + lab('role_', op.role);
      document.body.setAttribute('data-role', op.role);
      route();
    });
  }

  $('login-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var t = $('token').value.trim();
    $('token').value = '';
    if (!t) return;
    start(t).catch(function (e) {
      token = null;
      showLogin(e.status === 401 ? L.login_failed : e.message);
    });
  });
  $('logout').addEventListener('click', function () { logout(''); });

  // ---- views ----

  var views = {};

  function route() {
    if (!token) return;
    var h = location.hash.replace(/^#/, '') || 'dashboard';
    var parts = h.split('/');
    var name = parts[0], arg = parts[1];
    if (!views[name]) { name = 'dashboard'; arg = undefined; }
    $('error').textContent = '';
    Array.prototype.forEach.call(document.querySelectorAll('section[data-view]'), function (s) {
      s.hidden = s.getAttribute('data-view') !== name;
    });
    var navName = { run: 'runs', exception: 'exceptions' }[name] || name;
    Array.prototype.forEach.call(document.querySelectorAll('#nav a'), function (a) {
      a.classList.toggle('active', a.getAttribute('data-view') === navName);
    });
    Promise.resolve(views[name](arg)).catch(showError);
  }
  window.addEventListener('hashchange', route);

  function table(target, columns, rows, hrefOf) {
    clear(target);
    var head = el('tr');
    columns.forEach(function (c) { head.appendChild(el('th', { class: c.num ? 'num' : null }, c.label)); });
    target.appendChild(el('thead', null, head));
    var body = el('tbody');
    rows.forEach(function (r) {
      var href = hrefOf ? hrefOf(r) : null;
      var tr = el('tr', { 'data-href': href, 'data-id': r.id || null });
      columns.forEach(function (c) {
        var v = c.value(r);
        tr.appendChild(el('td', { class: c.num ? 'num' : null }, v));
      });
      if (href) tr.addEventListener('click', function () { location.hash = href; });
      body.appendChild(tr);
    });
    if (!rows.length) body.appendChild(el('tr', null, el('td', { colspan: columns.length, class: 'muted' }, L.no_data)));
    target.appendChild(body);
  }

  function link(href, text) {
    var a = el('a', { href: href }, text);
    a.addEventListener('click', function (ev) { ev.stopPropagation(); });
    return a;
  }

  function badge(status, text, id) {
    return el('span', { class: 'badge', 'data-status': status, id: id || null }, text);
  }

  // Dashboard.
  $('dash-date').value = today();
  $('dash-form').addEventListener('submit', function (ev) { ev.preventDefault(); views.dashboard().catch(showError); });

  views.dashboard = function () {
    var date = $('dash-date').value || today();
    return api('GET', '/dashboard' + qs({ date: date })).then(function (d) {
      var totals = clear($('dash-totals'));
      if (!d.totals.length) totals.appendChild(el('p', { class: 'muted' }, L.no_data));
      d.totals.forEach(function (t) {
        [[L.count, t.count], [L.amount + ' (' + t.currency + ')', yuan(t.amount_minor)],
          [L.succeeded, t.succeeded_count], [L.success_rate, rate(t.success_rate_bps)]].forEach(function (c) {
          totals.appendChild(el('div', { class: 'card' }, c[0], el('b', null, c[1])));
        });
      });
      drawChart($('dash-chart'), d.by_channel_account);
      var fig = [
        { label: L.count, num: true, value: function (r) { return r.count; } },
        { label: L.amount, num: true, value: function (r) { return yuan(r.amount_minor) + ' ' + r.currency; } },
        { label: L.succeeded, num: true, value: function (r) { return r.succeeded_count; } },
        { label: L.failed, num: true, value: function (r) { return r.failed_count; } },
        { label: L.closed, num: true, value: function (r) { return r.closed_count; } },
        { label: L.pending, num: true, value: function (r) { return r.pending_count; } },
        { label: L.success_rate, num: true, value: function (r) { return rate(r.success_rate_bps); } },
      ];
      table($('dash-accounts'), [
        { label: L.channel_account, value: function (r) { return r.name || L.unrouted; } },
        { label: L.kind, value: function (r) { return r.kind || L.unrouted; } },
      ].concat(fig), d.by_channel_account);
      table($('dash-kinds'), [
        { label: L.kind, value: function (r) { return r.kind || L.unrouted; } },
      ].concat(fig), d.by_channel_kind);
    });
  };

  /** Stacked bars per channel account: succeeded, failed, the rest; the success rate above. */
  function drawChart(target, rows) {
    clear(target);
    if (!rows.length) return;
    var barW = 48, gap = 72, left = 46, top = 28, plotH = 200, bottom = 48;
    var width = Math.max(360, left + rows.length * (barW + gap) + gap / 2);
    var height = top + plotH + bottom;
    var max = Math.max.apply(null, rows.map(function (r) { return r.count; }).concat([1]));
    // Drawn at its natural size; narrower screens scale it down (CSS max-width).
    var s = svg('svg', { width: width, height: height, viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': L.volume_title, id: 'dash-svg' });
    s.appendChild(svg('line', { x1: left, y1: top + plotH, x2: width - 8, y2: top + plotH, class: 'axis' }));
    s.appendChild(svg('line', { x1: left, y1: top, x2: left, y2: top + plotH, class: 'axis' }));
    s.appendChild(svg('text', { x: left - 6, y: top + 4, 'text-anchor': 'end' }, String(max)));
    s.appendChild(svg('text', { x: left - 6, y: top + plotH, 'text-anchor': 'end' }, '0'));
    rows.forEach(function (r, i) {
      var x = left + gap / 2 + i * (barW + gap);
      var y = top + plotH;
      var parts = [
        ['bar-ok', r.succeeded_count],
        ['bar-failed', r.failed_count],
        ['bar-other', r.count - r.succeeded_count - r.failed_count],
      ];
      var g = svg('g', { class: 'bar', 'data-account': r.channel_account_id || '', 'data-count': r.count });
      parts.forEach(function (p) {
        if (p[1] <= 0) return;
        var h = (p[1] / max) * plotH;
        y -= h;
        var rect = svg('rect', { x: x, y: y.toFixed(1), width: barW, height: h.toFixed(1), class: p[0] });
        rect.appendChild(svg('title', {}, p[1]));
        g.appendChild(rect);
      });
      g.appendChild(svg('text', { x: x + barW / 2, y: y - 6, 'text-anchor': 'middle' }, rate(r.success_rate_bps)));
      var name = (r.name || r.kind || L.unrouted);
      if (name.length > 16) name = name.slice(0, 15) + '…';
      g.appendChild(svg('text', { x: x + barW / 2, y: top + plotH + 16, 'text-anchor': 'middle' }, name));
      g.appendChild(svg('text', { x: x + barW / 2, y: top + plotH + 32, 'text-anchor': 'middle' },
        r.count + ' · ' + yuan(r.amount_minor)));
      s.appendChild(g);
    });
    target.appendChild(s);
    target.appendChild(el('div', { class: 'legend' },
      el('span', null, el('i', { class: 'bar-ok' }), L.succeeded),
      el('span', null, el('i', { class: 'bar-failed' }), L.failed),
      el('span', null, el('i', { class: 'bar-other' }), L.pending + ' / ' + L.closed)));
  }

  // Payments.
  $('pay-form').addEventListener('submit', function (ev) { ev.preventDefault(); searchPayments().catch(showError); });
  views.payments = function () { if (!$('pay-results').firstChild) return searchPayments(); };

  function searchPayments() {
    var date = $('pay-date').value;
    var q = {
      id: $('pay-id').value.trim(),
      merchant_order_no: $('pay-order').value.trim(),
      merchant_id: $('pay-merchant').value.trim(),
      status: $('pay-status').value,
      from: date ? date + 'T00:00:00+08:00' : '',
      to: date ? nextDay(date) + 'T00:00:00+08:00' : '',
      limit: 100,
    };
    $('pay-message').textContent = L.loading;
    return api('GET', '/payments' + qs(q)).then(function (page) {
      $('pay-message').textContent = page.has_more ? L.more : '';
      table($('pay-results'), [
        { label: L.payment_id, value: function (p) { return p.id; } },
        { label: L.merchant_order_no, value: function (p) { return p.merchant_order_no; } },
        { label: L.merchant, value: function (p) { return short(p.merchant_id); } },
        { label: L.amount, num: true, value: function (p) { return yuan(p.amount) + ' ' + p.currency; } },
        { label: L.status, value: function (p) { return badge(p.status, lab('s_', p.status)); } },
        { label: L.method, value: function (p) { return p.method + (p.wallet ? ' · ' + p.wallet : ''); } },
        { label: L.channel_trade_no, value: function (p) { return p.channel_trade_no || ''; } },
        { label: L.created_at, value: function (p) { return when(p.created_at); } },
      ], page.data);
    }, function (e) { $('pay-message').textContent = ''; throw e; });
  }

  // Reconciliation runs and a run's report.
  views.runs = function () {
    return api('GET', '/reconciliation/runs?limit=200').then(function (page) {
      $('runs-more').textContent = page.has_more ? L.more : '';
      table($('runs'), [
        { label: L.day, value: function (r) { return r.day; } },
        { label: L.channel_account, value: function (r) { return short(r.channel_account_id); } },
        { label: L.status, value: function (r) { return badge(r.status, r.status); } },
        { label: L.channel_records, num: true, value: function (r) { return r.channel_records; } },
        { label: L.platform_records, num: true, value: function (r) { return r.platform_records; } },
        { label: L.channel_net, num: true, value: function (r) { return yuan(r.channel_net_minor); } },
        { label: L.exceptions, num: true, value: function (r) { return r.summary && r.summary.exceptions !== undefined ? r.summary.exceptions : ''; } },
        { label: '', value: function (r) { return link('#run/' + r.id, L.open_report); } },
      ], page.data, function (r) { return 'run/' + r.id; });
    });
  };

  var currentRun = null;
  views.run = function (id) {
    currentRun = id;
    var facts = clear($('run-facts'));
    var report = clear($('run-report'));
    report.appendChild(el('p', { class: 'muted' }, L.loading));
    return api('GET', '/reconciliation/runs/' + encodeURIComponent(id) + '?limit=1').then(function (run) {
      $('run-title').textContent = L.report + ' · ' + run.day;
      [[L.day, run.day], [L.channel_account, run.channel_account_id], [L.status, run.status],
        [L.channel_records, run.channel_records], [L.platform_records, run.platform_records],
        [L.channel_net, yuan(run.channel_net_minor)]].forEach(function (f) {
        facts.appendChild(el('dt', null, f[0]));
        facts.appendChild(el('dd', null, f[1]));
      });
      return fetchText('/reconciliation/runs/' + encodeURIComponent(id) + '/report/report.html');
    }).then(function (html) {
      clear(report);
      // The report is our own page; only its body's elements are shown (its inline style is
      // replaced by the console's, and nothing in it can run).
      // (The style element is cut out before parsing: even parsing it is a policy violation.)
      html = html.replace(/<style[^>]*>[\s\S]*?<\/style>/gi, '').replace(/\sstyle="[^"]*"/gi, '');
      var doc = new DOMParser().parseFromString(html, 'text/html');
      Array.prototype.forEach.call(doc.querySelectorAll('script, style, link, iframe, object'), function (n) { n.remove(); });
      Array.prototype.forEach.call(doc.querySelectorAll('[style]'), function (n) { n.removeAttribute('style'); });
      Array.prototype.forEach.call(doc.body.childNodes, function (n) { report.appendChild(document.importNode(n, true)); });
      $('run-csv').disabled = false;
    }, function (e) {
      clear(report);
      if (e.status === 404) {
        report.appendChild(el('p', { class: 'muted', id: 'no-report' }, L.no_report));
        $('run-csv').disabled = true;
      } else { throw e; }
    });
  };

  $('run-csv').addEventListener('click', function () {
    if (!currentRun) return;
    fetchText('/reconciliation/runs/' + encodeURIComponent(currentRun) + '/report/items.csv').then(function (csv) {
      var url = URL.createObjectURL(new Blob([csv], { type: 'text/csv' }));
      var a = el('a', { href: url, download: 'reconciliation-' + currentRun + '.csv' });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    }).catch(showError);
  });

  // The exception queue.
  $('ex-filter').addEventListener('change', function () { views.exceptions().catch(showError); });

  function assigneeText(id) {
    if (!id) return L.nobody;
    return me && id === me.id ? L.me : short(id);
  }

  views.exceptions = function () {
    var f = $('ex-filter').value;
    var q = { limit: 200 };
    if (f === 'mine') q.assignee = me.id;
    else if (f !== 'all') q.status = f;
    return api('GET', '/exceptions' + qs(q)).then(function (page) {
      $('ex-more').textContent = page.has_more ? L.more : '';
      table($('exceptions'), [
        { label: L.day, value: function (x) { return x.day; } },
        { label: L.class, value: function (x) { return x.class; } },
        { label: 'out_trade_no', value: function (x) { return link('#exception/' + x.id, x.out_trade_no); } },
        { label: L.ours, num: true, value: function (x) { return yuan(x.platform_amount_minor); } },
        { label: L.theirs, num: true, value: function (x) { return yuan(x.channel_amount_minor); } },
        { label: L.status, value: function (x) { return badge(x.status, lab('x_', x.status)); } },
        { label: L.assignee, value: function (x) { return assigneeText(x.assignee_id); } },
      ], page.data, function (x) { return 'exception/' + x.id; });
    });
  };

  var currentException = null;
  DATA.resolutions.forEach(function (r) {
    $('ex-resolution').appendChild(el('option', { value: r }, lab('r_', r)));
  });

  function renderException(x) {
    currentException = x;
    var st = $('ex-status');
    st.textContent = lab('x_', x.status);
    st.setAttribute('data-status', x.status);
    var facts = clear($('ex-facts'));
    [['out_trade_no', x.out_trade_no], [L.class, x.class], [L.day, x.day],
      [L.channel_account, x.channel_account_id], [L.ours, yuan(x.platform_amount_minor)],
      [L.theirs, yuan(x.channel_amount_minor)], [L.channel_trade_no, x.channel_trade_no || ''],
      [L.assignee, assigneeText(x.assignee_id)],
      [L.resolution, x.resolution ? lab('r_', x.resolution) : L.nobody],
      [L.note, x.note || ''], [L.resolved_by, x.resolved_by ? assigneeText(x.resolved_by) : ''],
    ].forEach(function (f) {
      facts.appendChild(el('dt', null, f[0]));
      facts.appendChild(el('dd', { 'data-fact': f[0] === 'out_trade_no' ? 'out_trade_no' : null }, f[1]));
    });
    var ul = clear($('ex-comments'));
    (x.comments || []).forEach(function (c) {
      ul.appendChild(el('li', null, el('b', null, c.operator_name), ' · ', when(c.at), ': ', c.text));
    });
    if (!(x.comments || []).length) ul.appendChild(el('li', { class: 'muted' }, L.no_data));
    if (x.resolution) $('ex-resolution').value = x.resolution;
    var viewer = !me || me.role === 'viewer';
    var resolved = x.status === 'resolved';
    $('ex-readonly').hidden = !viewer;
    $('ex-assign').disabled = viewer || resolved || x.assignee_id === me.id;
    $('ex-comment').disabled = viewer;
    $('ex-comment-text').disabled = viewer;
    $('ex-resolve').disabled = viewer || resolved;
    $('ex-resolution').disabled = viewer || resolved;
    $('ex-note').disabled = viewer || resolved;
  }

  function loadException(id) {
    return api('GET', '/exceptions/' + encodeURIComponent(id)).then(renderException);
  }

  views.exception = function (id) {
    $('ex-message').textContent = '';
    return loadException(id);
  };

  function act(promise) {
    var msg = $('ex-message');
    msg.className = '';
    msg.textContent = L.loading;
    return promise.then(function () {
      return loadException(currentException.id);
    }).then(function () {
      msg.className = 'ok';
      msg.textContent = L.done;
    }, function (e) {
      msg.className = 'error';
      msg.textContent = e.message;
    });
  }

  $('ex-assign').addEventListener('click', function () {
    act(api('POST', '/exceptions/' + currentException.id + '/assign', { operator_id: me.id }));
  });
  $('ex-comment-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var text = $('ex-comment-text').value;
    act(api('POST', '/exceptions/' + currentException.id + '/comments', { text: text }).then(function () {
      $('ex-comment-text').value = '';
    }));
  });
  $('ex-resolve-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var body = { resolution: $('ex-resolution').value };
    var note = $('ex-note').value.trim();
    if (note) body.note = note;
    act(api('POST', '/exceptions/' + currentException.id + '/resolve', body));
  });

  // Settlements.
  $('st-form').addEventListener('submit', function (ev) { ev.preventDefault(); views.settlements().catch(showError); });
  views.settlements = function () {
    return api('GET', '/settlements' + qs({ date: $('st-date').value, limit: 200 })).then(function (page) {
      $('st-more').textContent = page.has_more ? L.more : '';
      table($('settlements'), [
        { label: L.day, value: function (s) { return s.day; } },
        { label: L.merchant, value: function (s) { return s.merchant_id; } },
        { label: L.gross, num: true, value: function (s) { return yuan(s.gross_minor); } },
        { label: L.refunds, num: true, value: function (s) { return yuan(s.refunds_minor); } },
        { label: L.fees, num: true, value: function (s) { return yuan(s.fees_minor); } },
        { label: L.net, num: true, value: function (s) { return yuan(s.net_minor); } },
        { label: L.carried, num: true, value: function (s) { return yuan(s.carried_minor); } },
        { label: L.payout, num: true, value: function (s) { return yuan(s.payout_minor) + ' ' + s.currency; } },
      ], page.data);
    });
  };

  // Start: a token kept by this tab, or the login form.
  var kept = null;
  try { kept = sessionStorage.getItem(TOKEN_KEY); } catch (e) { /* private mode */ }
  if (kept) {
    start(kept).catch(function () { logout(L.session_ended); });
  } else {
    showLogin('');
  }
})();
