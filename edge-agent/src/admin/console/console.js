// edge-agent technician's console: plain ES2020, no dependencies, nothing from another origin.
// Server data reaches the page only through textContent and attributes, never as HTML.
'use strict';
(() => {
const $ = (id) => document.getElementById(id);
const VIEWS = ['overview', 'tags', 'tools', 'config'];
const LOST = 'connection to the gateway lost, retrying';
const S = { csrf: '', role: 'viewer', edit: false, auth: false, logged: false, view: '',
  es: null, esRetry: 0, lastEvent: 0, ov: null, tick: 0, timer: 0, startTimer: 0 };

// ---- helpers
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function setText(e, t) {
  t = t == null ? '' : String(t);
  if (e.textContent !== t || e.childElementCount) e.textContent = t;
}
function setCls(e, c) { if (e.className !== c) e.className = c; }
function setAttr(e, k, v) { v = v == null ? '' : String(v); if (e.getAttribute(k) !== v) e.setAttribute(k, v); }
function banner(text) { $('banner').hidden = !text; setText($('banner'), text); }
function report(e) { banner('page error: ' + (e && e.message || e)); }
// Fire and forget: a rejection is shown in the page, never left uncaught.
function bg(p) { if (p && typeof p.catch === 'function') p.catch(report); }
// An event handler that runs at once (so preventDefault counts) and never throws.
const safe = (f) => (...a) => { try { bg(f(...a)); } catch (e) { report(e); } };
const pad = (n) => String(n).padStart(2, '0');
const fin = (v) => typeof v === 'number' && isFinite(v);

// ---- formatting
function fmtDur(s) {
  if (!fin(s)) return '';
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (s < 60) return s + ' s';
  if (s < 3600) return m + ' min ' + pad(s % 60) + ' s';
  if (s < 86400) return h + ' h ' + pad(m) + ' min';
  return d + ' d ' + h + ' h';
}
function fmtAge(ms) {
  if (!fin(ms)) return '';
  if (ms < 1000) return Math.round(ms) + ' ms';
  return ms < 10000 ? (ms / 1000).toFixed(1) + ' s' : fmtDur(ms / 1000);
}
function fmtBytes(b) {
  if (!fin(b)) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(b < 10 ? 2 : 1) : String(Math.round(b))) + ' ' + u[i];
}
function fmtNum(v, digits) {
  if (!fin(v)) return '';
  if (digits != null) return v.toFixed(digits);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a < 0.01 || a >= 1e9 ? v.toPrecision(4) : String(Math.round(v * 1000) / 1000);
}
function fmtValue(v) {
  if (v == null) return '';
  if (typeof v === 'number') return fmtNum(v);
  return typeof v === 'string' ? v : JSON.stringify(v);
}
function fmtTime(ms, withMs) {
  if (!fin(ms)) return '';
  const d = new Date(ms);
  let t = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  if (withMs) t += '.' + String(d.getMilliseconds()).padStart(3, '0');
  if (d.toDateString() !== new Date().toDateString()) {
    t = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + t;
  }
  return t;
}

// ---- API: never throws; answers {ok, status, data, error}; a 401 shows the login view
async function api(method, path, body) {
  const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), 30000);
  const opt = { method, credentials: 'same-origin', signal: ctl.signal };
  if (method === 'POST') {
    opt.headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': S.csrf };
    opt.body = JSON.stringify(body == null ? {} : body);
  }
  let r, data = null;
  try {
    r = await fetch(path, opt);
    if (r.status !== 204) {
      const t = await r.text();
      try { data = t ? JSON.parse(t) : null; } catch (e) { data = null; }
    }
  } catch (e) {
    return { ok: false, status: 0, data: null, error: 'the gateway did not answer' };
  } finally { clearTimeout(timer); }
  if (r.status === 401 && path !== '/api/v1/login') showLogin();
  const error = r.ok ? null : data && typeof data.error === 'string' ? data.error
    : ('HTTP ' + r.status + ' ' + (r.statusText || '')).trim();
  return { ok: r.ok, status: r.status, data, error };
}
const post = (path, body) => api('POST', path, body);

// ---- start-up, session, login
async function start() {
  clearTimeout(S.startTimer);
  const r = await api('GET', '/api/v1/session');
  if (!r.ok) {
    if (r.status === 401) return;
    banner('cannot reach the gateway (' + r.error + '), retrying');
    S.startTimer = setTimeout(safe(start), 3000);
    return;
  }
  banner('');
  applySession(r.data || {});
  S.logged = true;
  document.body.classList.remove('logged-out');
  $('view-login').hidden = true;
  openEvents();
  route();
  clearInterval(S.timer);
  S.timer = setInterval(safe(tick), 1000);
  const o = await api('GET', '/api/v1/overview');
  if (o.ok && o.data && !S.lastEvent) renderOverview(o.data);
}
function applySession(d) {
  S.csrf = d.csrf || '';
  S.role = d.role || 'viewer';
  S.edit = !!d.edit_enabled;
  S.auth = !!d.auth_required;
  setText($('user'), d.user != null ? d.user + ' (' + S.role + ')' : S.role === 'viewer' ? 'viewer' : '');
  $('logout').hidden = !S.auth;
  if (C.loaded) updateEditable();
}
function stop() {
  S.logged = false;
  closeEvents();
  clearInterval(S.timer);
  clearTimeout(S.startTimer);
}
function showLogin() {
  const was = S.logged, lv = $('view-login');
  stop();
  banner('');
  document.body.classList.add('logged-out');
  for (const v of VIEWS) $('view-' + v).hidden = true;
  if (lv.hidden || was) {
    lv.hidden = false;
    $('login-password').value = '';
    $('login-user').focus();
  }
}
async function login(e) {
  e.preventDefault();
  const btn = $('login-submit');
  btn.disabled = true;
  setText($('login-error'), '');
  const r = await post('/api/v1/login', { user: $('login-user').value, password: $('login-password').value });
  btn.disabled = false;
  if (!r.ok) { setText($('login-error'), r.error || 'login failed'); return; }
  $('login-password').value = '';
  await start();
}
async function logout(e) {
  e.preventDefault();
  stop(); // the stream and the polls first, so that nothing asks again once signed out
  const r = await post('/api/v1/logout');
  if (r.ok) showLogin();
  else if (r.status !== 401) { await start(); banner('log out failed: ' + r.error); }
}

// ---- server-sent events
function closeEvents() {
  clearTimeout(S.esRetry);
  if (S.es) { S.es.close(); S.es = null; }
  S.lastEvent = 0;
}
function openEvents() {
  closeEvents();
  const es = new EventSource('/api/v1/events');
  S.es = es;
  es.addEventListener('overview', (ev) => {
    if (S.es !== es) return;
    let d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    S.lastEvent = Date.now();
    banner('');
    safe(renderOverview)(d);
  });
  es.onerror = () => {
    if (S.es !== es) return;
    banner(LOST);
    // EventSource retries by itself after a network error, but gives up on an answer that
    // is not a stream (a 401 once a restart forgot the session, a 503): look at the session.
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      S.es = null;
      S.esRetry = setTimeout(safe(recheck), 3000);
    }
  };
}
async function recheck() {
  if (!S.logged) return;
  const r = await api('GET', '/api/v1/session');
  if (r.status === 401 || !S.logged) return;
  if (r.ok && r.data) applySession(r.data);
  openEvents();
  banner(LOST);
}

// ---- routing and timers
function route() {
  if (!S.logged) return;
  let v = location.hash.slice(1);
  if (!VIEWS.includes(v)) v = 'overview';
  if (v !== S.view) cancelConfirm();
  S.view = v;
  for (const n of VIEWS) {
    $('view-' + n).hidden = n !== v;
    const a = $('nav-' + n);
    a.classList.toggle('active', n === v);
    if (n === v) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (v === 'tags') { bg(refreshTags(true)); bg(refreshHistory(true)); }
  if (v === 'tools') { fillDeviceSelects(); bg(refreshCommands()); }
  if (v === 'config' && !C.dirty) bg(loadConfig());
}
function tick() {
  if (!S.logged) return;
  S.tick++;
  if (S.lastEvent && Date.now() - S.lastEvent > 15000) banner(LOST);
  // Hidden tab: nothing; gateway away: ask every 5 s only.
  if (document.hidden || (!$('banner').hidden && S.tick % 5)) return;
  if (S.view === 'tags') { bg(refreshTags(false)); bg(refreshHistory(false)); }
  if (S.view === 'tools' && S.tick % 2 === 0) bg(refreshCommands());
}

// ---- tables kept row by row
// Rows are found by key in `map` and updated in place; new ones are made with one
// <td data-field> per column; rows no longer listed go. Returns the number of rows.
function syncRows(tbody, map, items, keyOf, attr, cols, fill) {
  const seen = new Set();
  let i = 0;
  for (const it of items) {
    const key = keyOf(it);
    if (seen.has(key)) continue;
    seen.add(key);
    let row = map.get(key);
    if (!row) {
      const tr = el('tr'), cells = {};
      tr.setAttribute(attr, key);
      for (const c of cols) { const td = el('td'); td.dataset.field = c; cells[c] = td; tr.appendChild(td); }
      row = { tr, cells, it };
      map.set(key, row);
    }
    row.it = it;
    if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
    fill(row.cells, it, row.tr);
    i++;
  }
  for (const [k, row] of map) if (!seen.has(k)) { row.tr.remove(); map.delete(k); }
  return i;
}
// One cell: its text, the raw JSON value in data-value, its classes.
function put(td, text, raw, cls) {
  setText(td, text);
  setAttr(td, 'data-value', raw);
  setCls(td, cls || '');
}
// A cell holding one status pill; the span carries its own data-field (e.g. "connected").
function pill(td, text, tone, field, raw) {
  if (!text) { put(td, '', raw); return; }
  let s = td.firstElementChild;
  if (!s) { td.textContent = ''; s = td.appendChild(el('span')); }
  if (field) setAttr(s, 'data-field', field);
  setText(s, text);
  setCls(s, 'pill ' + tone);
  setAttr(td, 'data-value', raw);
}
function title(e, t) { t = t || ''; if (e.title !== t) e.title = t; }

// ---- overview
const NB = new Map(), DEV = new Map(), MACH = new Map();
const NB_COLS = ['name', 'status', 'format', 'url', 'last_error', 'last_puback_age_ms', 'backlog_records',
  'backlog_age_ms', 'replaying', 'evicted_samples', 'runway_s', 'published', 'acked'];
const DEV_COLS = ['name', 'status', 'protocol', 'address', 'last_error', 'scan_ms', 'requests_per_s',
  'block_size', 'samples', 'tags'];
const MACH_COLS = ['name', 'device', 'state', 'reason', 'reason_code', 'work_order', 'product', 'good', 'scrap'];

const fmtRunway = (s) => !fin(s) ? '' : s < 1 ? 'no outage room' : fmtDur(s);
// Plain cells: numbers by their formatter (right-aligned), text with a class; a tone by value.
const NUMF = { last_puback_age_ms: fmtAge, backlog_age_ms: fmtAge, runway_s: fmtRunway,
  scan_ms: (v) => fin(v) ? fmtNum(v, 1) + ' ms' : '', requests_per_s: (v) => fmtNum(v, 1) };
for (const f of ['backlog_records', 'evicted_samples', 'published', 'acked', 'block_size', 'samples', 'tags',
  'reason_code', 'good', 'scrap']) NUMF[f] = (v) => fmtNum(v);
const TXTC = { name: 'strong', url: 'mono', address: 'mono', work_order: 'mono', last_error: 'err-text' };
const pos = (t) => (v) => v > 0 ? t : '';
const TONE = { backlog_records: pos('warn'), backlog_age_ms: pos('warn'), evicted_samples: pos('bad'), scrap: pos('warn'),
  runway_s: (v) => !fin(v) ? '' : v < 3600 ? 'bad' : v < 86400 ? 'warn' : '' };
function fillCells(c, it) {
  for (const f in c) {
    if (f === 'status' || f === 'replaying' || f === 'state') continue;
    const v = it[f], nf = NUMF[f], tone = TONE[f] ? TONE[f](v) : '';
    put(c[f], nf ? nf(v) : v == null ? '' : String(v), v, (nf ? 'num' : TXTC[f] || '') + (tone ? ' ' + tone : ''));
  }
}
function fillNb(c, n, tr) {
  fillCells(c, n);
  pill(c.status, n.connected ? 'connected' : 'disconnected', n.connected ? 'ok' : 'bad', 'connected', !!n.connected);
  setAttr(c.replaying, 'data-value', !!n.replaying);
  tr.classList.toggle('down', !n.connected);
  const td = c.replaying;
  if (!n.replaying) { if (td.firstChild) td.textContent = ''; title(td, ''); return; }
  let s = td.querySelector('span'), p = td.querySelector('progress');
  if (!p || !s) { td.textContent = ''; s = el('span', 'pill warn'); p = el('progress'); td.append(s, p); }
  const tot = Math.max(0, n.replay_total_records || 0), done = Math.max(0, n.replay_done_records || 0);
  p.max = Math.max(tot, 1);
  p.value = Math.min(done, p.max);
  setText(s, 'replaying ' + (tot ? Math.floor(done * 100 / tot) : 0) + ' %');
  title(td, done + ' of ' + tot + ' records sent again');
}
function fillDev(c, d, tr) {
  fillCells(c, d);
  pill(c.status, d.connected ? 'online' : 'offline', d.connected ? 'ok' : 'bad', 'connected', !!d.connected);
  tr.classList.toggle('down', !d.connected);
}
const stateTone = (s) => /run|produc/i.test(s) ? 'ok' : /fault|alarm|down|error|stop|fail|block/i.test(s) ? 'bad' : 'warn';
function fillMach(c, m) {
  fillCells(c, m);
  pill(c.state, m.state || '', stateTone(m.state || ''), null, m.state);
}
function table(id, map, items, attr, cols, fill) {
  const n = syncRows($(id).tBodies[0], map, Array.isArray(items) ? items : [], (x) => String(x.name), attr, cols, fill);
  $(id + '-empty').hidden = n > 0;
}
function renderOverview(d) {
  if (!d || typeof d !== 'object') return;
  S.ov = d;
  const g = d.gateway || {}, st = d.store || {};
  const nr = Array.isArray(g.not_ready) ? g.not_ready.join('; ') : '';
  setText($('gateway-id'), g.id || 'edge-agent');
  setText($('gateway-version'), g.version || '');
  setText($('uptime'), fmtDur(g.uptime_s) || '–');
  const rd = $('ready');
  setText(rd, g.ready ? 'ready' : 'not ready: ' + (nr || 'starting'));
  setCls(rd, 'pill ' + (g.ready ? 'ok' : 'bad'));
  title(rd, rd.textContent);
  const t = (g.id || 'edge-agent') + ' · edge-agent console';
  if (document.title !== t) document.title = t;
  setText($('gw-started'), fmtTime(g.started_ms));
  setText($('gw-config'), g.config_path || '');
  setText($('gw-ready'), g.ready ? 'ready' : nr || 'not ready');
  setCls($('gw-ready'), g.ready ? 'ok-text' : 'err-text');

  const max = st.max_disk_bytes, pct = max > 0 ? Math.min(100, (st.disk_bytes || 0) * 100 / max) : 0;
  setText($('store-disk'), !fin(st.disk_bytes) ? '' : fmtBytes(st.disk_bytes) + ' of ' +
    (max ? fmtBytes(max) + ' (' + pct.toFixed(pct < 10 ? 1 : 0) + ' %)' : 'no quota'));
  setAttr($('store-disk'), 'data-value', st.disk_bytes);
  const bar = $('store-bar');
  bar.style.width = pct.toFixed(2) + '%';
  setCls(bar, 'fill' + (pct >= 95 ? ' bad' : pct >= 80 ? ' warn' : ''));
  setText($('store-records'), fin(st.records) ? st.records.toLocaleString('en-US') : '');
  setText($('store-write'), fin(st.write_bytes_per_s) ? fmtBytes(st.write_bytes_per_s) + '/s' : '');
  setText($('store-samples'), fin(st.samples_per_s) ? fmtNum(st.samples_per_s, 1) + ' samples/s' : '');

  table('northbounds', NB, d.northbounds, 'data-northbound', NB_COLS, fillNb);
  table('devices', DEV, d.devices, 'data-device', DEV_COLS, fillDev);
  table('machines', MACH, d.machines, 'data-machine', MACH_COLS, fillMach);
  fillDeviceSelects();
}

// ---- tags
const T = { offset: 0, limit: 100, seq: 0, busy: false, rows: new Map(), sel: null, devices: '', debounce: 0 };
const TAG_COLS = ['device', 'tag', 'value', 'unit', 'quality', 'source_ts', 'age'];
const tagKey = (t) => t.device + '/' + t.tag;

async function refreshTags(force) {
  if (T.busy && !force) return;
  const seq = ++T.seq, p = new URLSearchParams(), msg = $('tag-msg');
  T.busy = true;
  for (const [k, id] of [['q', 'tag-search'], ['device', 'tag-device'], ['quality', 'tag-quality']]) {
    const v = $(id).value.trim();
    if (v) p.set(k, v);
  }
  p.set('offset', T.offset);
  p.set('limit', T.limit);
  const r = await api('GET', '/api/v1/tags?' + p);
  if (seq !== T.seq) return; // a newer request is on its way
  T.busy = false;
  if (!r.ok || !r.data) {
    if (r.status !== 401) { msg.hidden = false; setText(msg, 'tags: ' + (r.error || 'no answer')); }
    return;
  }
  msg.hidden = true;
  const d = r.data, total = d.total || 0, tags = Array.isArray(d.tags) ? d.tags : [];
  if (total > 0 && T.offset >= total) {
    T.offset = Math.floor((total - 1) / T.limit) * T.limit;
    bg(refreshTags(true));
    return;
  }
  const devs = Array.isArray(d.devices) ? d.devices.map(String) : [], dk = JSON.stringify(devs);
  if (dk !== T.devices) { T.devices = dk; fillSelect($('tag-device'), devs, null, 'all devices'); }
  setText($('tag-count'), total ? (T.offset + 1) + '–' + (T.offset + tags.length) + ' of ' + total : '0 of 0');
  $('tag-prev').disabled = T.offset <= 0;
  $('tag-next').disabled = T.offset + T.limit >= total;
  syncRows($('tag-table').tBodies[0], T.rows, tags, tagKey, 'data-tag', TAG_COLS, fillTag);
}
function fillTag(c, t, tr) {
  const vt = typeof t.value, ql = String(t.quality || '');
  if (!tr.hasAttribute('tabindex')) tr.tabIndex = 0;
  put(c.device, t.device, t.device);
  put(c.tag, t.tag, t.tag, 'strong');
  put(c.value, fmtValue(t.value), t.value == null || vt === 'string' ? t.value : JSON.stringify(t.value),
    vt === 'number' ? 'num' : vt === 'boolean' ? 'num bool' : 'text-val');
  put(c.unit, t.unit || '', t.unit, 'muted');
  put(c.quality, ql, ql, 'q q-' + (/^(good|uncertain|bad)$/.test(ql) ? ql : 'other'));
  put(c.source_ts, fmtTime(t.source_ts_ms, true), t.source_ts_ms, 'mono');
  put(c.age, fmtAge(t.age_ms), t.age_ms, t.age_ms > 10000 ? 'num warn' : 'num');
  tr.classList.toggle('selected', !!T.sel && T.sel.key === tagKey(t));
}
function selectTag(tr) {
  const row = T.rows.get(tr.dataset.tag), panel = $('trend-panel');
  if (!row) return;
  for (const r of T.rows.values()) r.tr.classList.toggle('selected', r === row);
  T.sel = { key: tr.dataset.tag, device: String(row.it.device), tag: String(row.it.tag) };
  panel.classList.remove('empty');
  H.data = null;
  setText($('trend-title'), T.sel.key);
  setText($('trend-msg'), 'loading…');
  drawTrend();
  bg(refreshHistory(true));
  const b = panel.getBoundingClientRect();
  if (b.bottom < 0 || b.top > window.innerHeight) panel.scrollIntoView({ block: 'nearest' });
}

// ---- trend
const H = { seq: 0, busy: false, data: null };
async function refreshHistory(force) {
  const sel = T.sel;
  if (!sel || (H.busy && !force)) return;
  const seq = ++H.seq;
  H.busy = true;
  const r = await api('GET', '/api/v1/history?' + new URLSearchParams({ device: sel.device, tag: sel.tag }));
  if (seq !== H.seq) return;
  H.busy = false;
  if (T.sel !== sel) return;
  if (!r.ok || !r.data) {
    if (r.status === 401) return;
    setText($('trend-msg'), r.status === 404 ? 'the gateway does not know this tag' : 'history: ' + r.error);
    H.data = null;
  } else {
    H.data = r.data;
    setText($('trend-title'), sel.key + (r.data.unit ? ' (' + r.data.unit + ')' : ''));
  }
  drawTrend();
}
function drawTrend() {
  const c = $('trend'), w = c.clientWidth, h = c.clientHeight;
  if (!w || !h) return; // not shown: drawn when it is
  const dpr = window.devicePixelRatio || 1, pw = Math.round(w * dpr), ph = Math.round(h * dpr);
  if (c.width !== pw) c.width = pw;
  if (c.height !== ph) c.height = ph;
  const g = c.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  g.fillStyle = '#6b7785';
  const pts = (H.data && Array.isArray(H.data.points) ? H.data.points : []).filter((p) => Array.isArray(p) && fin(p[0]));
  let n = 0, lo = Infinity, hi = -Infinity, t0 = Infinity, t1 = -Infinity, last = null;
  for (const p of pts) {
    t0 = Math.min(t0, p[0]);
    t1 = Math.max(t1, p[0]);
    if (fin(p[1])) { n++; lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); last = p; }
  }
  c.dataset.points = String(n);
  if (!n) {
    g.textAlign = 'center';
    if (H.data) { g.fillText('no numeric values to draw', w / 2, h / 2); setText($('trend-msg'), 'no numeric values'); }
    return;
  }
  const unit = H.data.unit ? ' ' + H.data.unit : '';
  setText($('trend-msg'), n + ' points · last ' + fmtNum(last[1]) + unit + ' at ' + fmtTime(last[0]));
  const vmin = lo, vmax = hi, mid = (lo + hi) / 2;
  if (lo === hi) { const e = Math.abs(lo) * 0.05 || 1; lo -= e; hi += e; }
  if (t0 === t1) { t0 -= 1000; t1 += 1000; }
  const labels = [fmtNum(vmax), fmtNum(vmin), fmtNum(mid)];
  const left = Math.ceil(Math.max(...labels.map((l) => g.measureText(l).width))) + 10;
  const top = 8, pwid = w - left - 10, phei = h - top - 20;
  if (pwid < 10 || phei < 10) return;
  const x = (t) => left + (t - t0) / (t1 - t0) * pwid, y = (v) => top + (hi - v) / (hi - lo) * phei;
  g.lineWidth = 1;
  g.strokeStyle = '#e3e7ec';
  g.beginPath();
  for (const v of [vmin, vmax, mid]) { const yy = Math.round(y(v)) + 0.5; g.moveTo(left, yy); g.lineTo(left + pwid, yy); }
  g.stroke();
  g.strokeStyle = '#9aa5b1'; // the axes
  g.beginPath();
  g.moveTo(left + 0.5, top);
  g.lineTo(left + 0.5, top + phei + 0.5);
  g.lineTo(left + pwid, top + phei + 0.5);
  g.stroke();
  // value labels (max, min, middle) and time labels (first, last, middle)
  const text = (t, tx, ty, align, base) => { g.textAlign = align; g.textBaseline = base; g.fillText(t, tx, ty); };
  text(labels[0], left - 5, y(vmax), 'right', 'middle');
  text(labels[1], left - 5, y(vmin), 'right', 'middle');
  if (phei > 60 && vmin !== vmax) text(labels[2], left - 5, y(mid), 'right', 'middle');
  const ty = top + phei + 5;
  text(fmtTime(t0), left, ty, 'left', 'top');
  text(fmtTime(t1), left + pwid, ty, 'right', 'top');
  if (pwid > 260) text(fmtTime((t0 + t1) / 2), left + pwid / 2, ty, 'center', 'top');
  // the line: a null point ends a segment; a point alone between gaps is a dot
  g.strokeStyle = g.fillStyle = '#1f6feb';
  g.lineWidth = 1.5;
  g.lineJoin = 'round';
  let seg = [];
  const flush = () => {
    g.beginPath();
    if (seg.length === 1) { g.arc(seg[0][0], seg[0][1], 2, 0, 2 * Math.PI); g.fill(); }
    else if (seg.length) { seg.forEach(([a, b], i) => (i ? g.lineTo(a, b) : g.moveTo(a, b))); g.stroke(); }
    seg = [];
  };
  for (const [t, v] of pts) { if (fin(v)) seg.push([x(t), y(v)]); else flush(); }
  flush();
}

// ---- tools
const D = { probe: '', browse: '', last: null };
// Options of a select, keeping its choice; `all`: a first option "" (the choice stays even
// when gone from the list); `none`: the one option "" when the list is empty.
function fillSelect(sel, names, none, all) {
  const cur = sel.value, opt = (v, t) => { const o = el('option', null, t); o.value = v; return o; };
  if (all && cur && !names.includes(cur)) names = names.concat(cur);
  const opts = names.map((n) => opt(n, n));
  if (all) opts.unshift(opt('', all));
  else if (!opts.length) opts.push(opt('', none));
  sel.replaceChildren(...opts);
  if (names.includes(cur)) sel.value = cur;
}
function fillDeviceSelects() {
  const devs = S.ov && Array.isArray(S.ov.devices) ? S.ov.devices : [];
  const names = (f) => devs.filter((d) => f(String(d.protocol || ''))).map((d) => String(d.name));
  const mb = names((p) => p.startsWith('modbus')), ua = names((p) => p === 'opcua');
  const km = JSON.stringify(mb), ku = JSON.stringify(ua);
  if (km !== D.probe) { D.probe = km; fillSelect($('probe-device'), mb, 'no Modbus device'); }
  if (ku !== D.browse) { D.browse = ku; fillSelect($('browse-device'), ua, 'no OPC UA device'); }
}
function out(id, text, isErr) {
  const o = $(id);
  setText(o, text);
  o.classList.toggle('error', !!isErr);
  if (id === 'browse-toml-output') $('browse-copy').hidden = !text || !!isErr;
}
async function probe(e) {
  e.preventDefault();
  const device = $('probe-device').value, address = $('probe-address').value.trim();
  if (!device) return out('probe-output', 'no Modbus device is configured', true);
  if (!address) return out('probe-output', 'give an address, e.g. hr:100', true);
  const cnt = $('probe-count').value.trim(), type = $('probe-type').value.trim(), btn = $('probe-submit');
  btn.disabled = true;
  out('probe-output', 'reading ' + address + ' from ' + device + '…');
  const r = await post('/api/v1/probe', { device, address, count: cnt ? Number(cnt) : null, type: type || null });
  btn.disabled = false;
  if (r.ok) out('probe-output', r.data && typeof r.data.output === 'string' ? r.data.output : '');
  else if (r.status !== 401) out('probe-output', r.error, true);
}
function treeNode(n, count) {
  const li = el('li'), line = el('div', 'node'), lab = el('label');
  const kids = Array.isArray(n.children) ? n.children : [];
  const tog = el('button', 'tog', kids.length ? '▾' : '');
  tog.type = 'button';
  tog.disabled = !kids.length;
  tog.setAttribute('aria-label', 'fold');
  count.all++;
  if (n.node_class === 'Variable') {
    count.vars++;
    const cb = lab.appendChild(el('input'));
    cb.type = 'checkbox';
    cb.value = String(n.node_id);
  }
  lab.appendChild(el('span', 'bn', String(n.browse_name == null ? n.node_id : n.browse_name)));
  const meta = [n.node_class, n.data_type, n.access].filter((x) => x != null && x !== '').join(' · ');
  if (meta) lab.appendChild(el('span', 'meta', meta));
  lab.appendChild(el('span', 'nid', String(n.node_id)));
  line.append(tog, lab);
  li.appendChild(line);
  if (kids.length) {
    const ul = li.appendChild(el('ul'));
    for (const k of kids) ul.appendChild(treeNode(k, count));
  }
  if (n.truncated) li.appendChild(el('div', 'muted trunc', '… more below: browse from this node'));
  return li;
}
async function browse(e) {
  e.preventDefault();
  const device = $('browse-device').value, msg = $('browse-msg'), btn = $('browse-submit');
  const say = (t, cls) => { setText(msg, t); msg.className = cls; };
  if (!device) return say('no OPC UA device is configured', 'error');
  const node = $('browse-node').value.trim() || null;
  const depth = Math.max(1, parseInt($('browse-depth').value, 10) || 3);
  btn.disabled = true;
  say('browsing ' + device + '…', 'muted');
  const r = await post('/api/v1/browse', { device, node, depth });
  btn.disabled = false;
  if (!r.ok || !r.data || !r.data.tree) {
    if (r.status !== 401) say(r.error || 'the gateway sent no tree', 'error');
    return;
  }
  D.last = { device, node, depth };
  const count = { all: 0, vars: 0 };
  $('browse-tree').replaceChildren(treeNode(r.data.tree, count));
  $('browse-actions').hidden = false;
  say(count.all + ' nodes, ' + count.vars + ' variables: tick the ones to make tags of', 'muted');
  out('browse-toml-output', '');
}
function treeClick(e) {
  const tog = e.target.closest('button.tog');
  if (tog) tog.textContent = tog.closest('li').classList.toggle('collapsed') ? '▸' : '▾';
}
const boxes = (sel) => [...$('browse-tree').querySelectorAll('input[type=checkbox]' + (sel || ''))];
function tickAll() {
  const cbs = boxes(), on = cbs.some((c) => !c.checked);
  for (const c of cbs) c.checked = on;
}
async function browseToml() {
  const nodes = boxes(':checked').map((c) => c.value);
  if (!D.last) return out('browse-toml-output', 'browse a device first', true);
  if (!nodes.length) return out('browse-toml-output', 'tick at least one variable', true);
  out('browse-toml-output', 'asking for TOML…');
  const r = await post('/api/v1/browse/toml', { ...D.last, nodes });
  if (r.ok) out('browse-toml-output', r.data && typeof r.data.toml === 'string' ? r.data.toml : '');
  else if (r.status !== 401) out('browse-toml-output', r.error, true);
}
function copyToml() {
  const o = $('browse-toml-output'), btn = $('browse-copy'), txt = o.textContent;
  if (!txt) return;
  const say = (t) => { btn.textContent = t; setTimeout(() => { btn.textContent = 'copy'; }, 1500); };
  const select = () => { // no clipboard (plain http from afar, or refused): select for Ctrl+C
    const r = document.createRange(), s = window.getSelection();
    r.selectNodeContents(o);
    if (s) { s.removeAllRanges(); s.addRange(r); }
    say('selected: press Ctrl+C');
  };
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(txt).then(() => say('copied'), select);
    else select();
  } catch (e) { select(); }
}
const CMD_COLS = ['at_ms', 'northbound', 'source', 'kind', 'target', 'value', 'outcome', 'answer'];
let cmdBusy = false;
async function refreshCommands() {
  if (cmdBusy) return;
  cmdBusy = true;
  const r = await api('GET', '/api/v1/commands'), msg = $('command-msg');
  cmdBusy = false;
  if (!r.ok || !r.data) {
    if (r.status !== 401) { msg.hidden = false; msg.className = 'error'; setText(msg, 'command log: ' + (r.error || 'no answer')); }
    return;
  }
  const list = Array.isArray(r.data.commands) ? r.data.commands : [], tbody = $('command-log').tBodies[0];
  msg.className = 'empty';
  setText(msg, 'no command received');
  msg.hidden = list.length > 0;
  while (tbody.rows.length > list.length) tbody.deleteRow(-1);
  list.forEach((m, i) => { // newest first, so rows are kept by position
    let tr = tbody.rows[i];
    if (!tr) {
      tr = tbody.appendChild(el('tr'));
      for (const f of CMD_COLS) tr.appendChild(el('td')).dataset.field = f;
    }
    const oc = String(m.outcome || '');
    CMD_COLS.forEach((f, j) => { if (j !== 6) put(tr.cells[j], j ? m[f] : fmtTime(m.at_ms, true), m[f], /^(at_ms|source|target|value)$/.test(f) ? 'mono' : ''); });
    pill(tr.cells[6], oc, oc === 'ok' ? 'ok' : oc === 'refused' ? 'warn' : 'bad', null, oc);
  });
}

// ---- config
const C = { loaded: false, dirty: false, hasPrev: false, editOn: false, editable: false,
  pending: null, errLines: new Set(), lines: -1, busy: false };
const ta = () => $('config-text');
function status(text, tone) { setText($('config-status'), text); setCls($('config-status'), 'status-line' + (tone ? ' ' + tone : '')); }
async function loadConfig() {
  const r = await api('GET', '/api/v1/config');
  if (!r.ok || !r.data) {
    if (r.status !== 401) status(r.error || 'no config in the answer', 'error');
    return false;
  }
  const d = r.data;
  setText($('config-path'), d.path || '');
  ta().value = typeof d.text === 'string' ? d.text : '';
  C.loaded = true;
  C.hasPrev = !!d.has_previous;
  C.editOn = d.edit_enabled == null ? S.edit : !!d.edit_enabled;
  setDirty(false);
  setErrors([]);
  updateEditable();
  return true;
}
function updateEditable() {
  const viewer = S.role === 'viewer', notes = [];
  C.editable = !viewer && C.editOn;
  ta().readOnly = !C.editable;
  if (!C.editOn) notes.push('editing is off in [admin] edit');
  if (viewer) notes.push('read-only user');
  setText($('config-note'), notes.join(' · '));
  // The server takes no POST from a viewer, a check included.
  $('config-check').disabled = C.busy || viewer;
  $('config-apply').disabled = C.busy || !C.editable;
  $('config-rollback').disabled = C.busy || !C.editable || !C.hasPrev;
  $('config-reload').disabled = C.busy;
}
function setDirty(v) { C.dirty = v; $('config-dirty').hidden = !v; }
function renderGutter(force) {
  const text = ta().value;
  let n = 1;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  if (n !== C.lines || force) {
    C.lines = n;
    const f = document.createDocumentFragment();
    for (let i = 1; i <= n; i++) f.appendChild(el('div', C.errLines.has(i) ? 'err' : null, String(i)));
    $('config-gutter').replaceChildren(f);
  }
  syncGutter();
}
function syncGutter() { $('config-gutter').scrollTop = ta().scrollTop; }
function setErrors(errs) {
  C.errLines = new Set();
  $('config-errors').replaceChildren(...(Array.isArray(errs) ? errs : []).map((e) => {
    const li = el('li'), line = Number(e && e.line), col = Number(e && e.column) > 0 ? Number(e.column) : 1;
    const msg = String(e && e.message != null ? e.message : e);
    if (!(line > 0)) { li.textContent = msg; return li; } // an error of no particular line
    C.errLines.add(line);
    li.setAttribute('data-line', line);
    li.setAttribute('data-column', col);
    li.textContent = 'line ' + line + ', column ' + col + ': ' + msg;
    li.tabIndex = 0;
    return li;
  }));
  renderGutter(true);
}
function gotoError(e) {
  const li = e.target.closest('li[data-line]');
  if (!li) return;
  const line = Number(li.dataset.line), col = Number(li.dataset.column) || 1, t = ta(), lines = t.value.split('\n');
  let off = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) off += lines[i].length + 1;
  off = Math.min(off + Math.min(col - 1, (lines[Math.min(line, lines.length) - 1] || '').length), t.value.length);
  t.focus({ preventScroll: true });
  t.setSelectionRange(off, off);
  const fs = parseFloat(getComputedStyle(t).fontSize) || 13, x = (col - 1) * fs * 0.6; // monospace: ~0.6 em a char
  const lh = parseFloat(getComputedStyle(t).lineHeight) || 20;
  t.scrollTop = Math.max(0, (line - 1) * lh - t.clientHeight / 3);
  if (x < t.scrollLeft || x > t.scrollLeft + t.clientWidth - 40) t.scrollLeft = Math.max(0, x - t.clientWidth / 2);
  syncGutter();
  const b = t.getBoundingClientRect();
  if (b.top < 0 || b.top > window.innerHeight - 60) t.scrollIntoView({ block: 'center' });
}
const nErrors = (errs) => (errs.length === 1 ? '1 error' : errs.length + ' errors');
async function busy(fn) {
  C.busy = true;
  updateEditable();
  try { await fn(); } finally { C.busy = false; updateEditable(); }
}
const checkConfig = () => busy(async () => {
  status('checking…');
  const r = await post('/api/v1/config/check', { text: ta().value });
  if (!r.ok || !r.data) { if (r.status !== 401) status(r.error || 'no answer', 'error'); return; }
  const errs = Array.isArray(r.data.errors) ? r.data.errors : [];
  setErrors(errs);
  if (r.data.ok) status('valid', 'ok'); else status('invalid: ' + nErrors(errs), 'error');
});
// apply and rollback: the summary on success, the text reloaded; else the error(s)
const change = (path, body, done, failed) => busy(async () => {
  status(done === 'applied' ? 'applying…' : 'rolling back…');
  if (body.text != null) { // check first: a config with errors is not sent to apply at all
    const c = await post('/api/v1/config/check', body);
    if (c.ok && c.data && c.data.ok === false && Array.isArray(c.data.errors) && c.data.errors.length) {
      setErrors(c.data.errors);
      return status(failed + ': ' + nErrors(c.data.errors), 'error');
    }
    if (c.status === 401) return;
  }
  const r = await post(path, body);
  if (r.ok && r.data && r.data.ok) {
    await loadConfig();
    status(done + ': ' + (r.data.summary || ''), 'ok');
    return;
  }
  if (r.status === 401) return;
  const errs = r.data && Array.isArray(r.data.errors) ? r.data.errors : [];
  if (errs.length) setErrors(errs);
  status(r.data && r.data.error ? r.data.error : errs.length ? failed + ': ' + nErrors(errs) : r.error || failed, 'error');
});
function askConfirm(kind) {
  C.pending = kind;
  setText($('config-confirm-text'), kind === 'apply' ? 'Apply this configuration to the running gateway?'
    : 'Roll back to the previous configuration file and apply it?');
  setText($('config-confirm'), kind === 'apply' ? 'apply now' : 'roll back now');
  $('config-confirm-bar').hidden = false;
  $('config-confirm').focus();
}
function cancelConfirm() { C.pending = null; $('config-confirm-bar').hidden = true; }
function confirmed() {
  const k = C.pending;
  cancelConfirm();
  if (k === 'apply') return change('/api/v1/config/apply', { text: ta().value }, 'applied', 'not applied');
  if (k === 'rollback') return change('/api/v1/config/rollback', {}, 'rolled back', 'not rolled back');
}

// ---- wiring
function on(id, ev, f) { $(id).addEventListener(ev, safe(f)); }
function boot() {
  window.addEventListener('hashchange', safe(route));
  on('login-form', 'submit', login);
  on('logout', 'click', logout);
  const first = () => { T.offset = 0; return refreshTags(true); };
  on('tag-search', 'input', () => { clearTimeout(T.debounce); T.debounce = setTimeout(safe(first), 200); });
  on('tag-search', 'change', () => { clearTimeout(T.debounce); return first(); });
  on('tag-device', 'change', first);
  on('tag-quality', 'change', first);
  on('tag-prev', 'click', () => { T.offset = Math.max(0, T.offset - T.limit); return refreshTags(true); });
  on('tag-next', 'click', () => { T.offset += T.limit; return refreshTags(true); });
  const tb = $('tag-table').tBodies[0];
  tb.addEventListener('click', safe((e) => { const tr = e.target.closest('tr[data-tag]'); if (tr) selectTag(tr); }));
  tb.addEventListener('keydown', safe((e) => {
    const tr = e.target.closest('tr[data-tag]');
    if (tr && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); selectTag(tr); }
  }));
  let raf = 0;
  window.addEventListener('resize', () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(safe(drawTrend)); });
  on('probe-form', 'submit', probe);
  on('browse-form', 'submit', browse);
  on('browse-tree', 'click', treeClick);
  on('browse-all', 'click', tickAll);
  on('browse-toml', 'click', browseToml);
  on('browse-copy', 'click', copyToml);
  on('config-text', 'input', () => { setDirty(true); renderGutter(false); });
  on('config-text', 'scroll', syncGutter);
  on('config-errors', 'click', gotoError);
  on('config-errors', 'keydown', (e) => { if (e.key === 'Enter') gotoError(e); });
  on('config-check', 'click', checkConfig);
  on('config-apply', 'click', () => askConfirm('apply'));
  on('config-rollback', 'click', () => askConfirm('rollback'));
  on('config-confirm', 'click', confirmed);
  on('config-cancel', 'click', cancelConfirm);
  on('config-reload', 'click', async () => { if (await loadConfig()) status(''); });
  renderGutter(true);
  updateEditable();
  safe(start)();
}
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
})();
