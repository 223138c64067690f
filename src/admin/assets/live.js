// The live tree: one event stream from /api/live/events (a snapshot, then deltas), rows kept by
// actor path and updated in place, ages computed against the server's clock.
'use strict';

const TOKEN_KEY = 'actord-admin-token';
const view = { actors: new Map(), order: [], pipelines: [], skew: 0 };
const rows = new Map();

const $ = (sel) => document.querySelector(sel);

function serverNow() { return Date.now() + view.skew; }
function syncClock(now) { const t = Date.parse(now); if (!Number.isNaN(t)) view.skew = t - Date.now(); }

function ago(ts) {
  if (!ts) return '–';
  const s = Math.max(0, Math.round((serverNow() - Date.parse(ts)) / 1000));
  return human(s) + ' ago';
}
function until(ts) {
  const s = Math.max(0, Math.round((Date.parse(ts) - serverNow()) / 1000));
  return 'in ' + human(s);
}
function human(s) {
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}
function rate(n) {
  if (!n) return '0/s';
  if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M/s';
  if (n >= 1e3) return (n / 1e3).toFixed(1) + 'k/s';
  return (Math.round(n * 10) / 10) + '/s';
}
function bytes(n) {
  if (!n) return '';
  const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function badge(state) { return el('span', 'badge s-' + state, state.replace('_', ' ')); }
function set(td, ...children) { td.replaceChildren(...children); }

// ---- actions ------------------------------------------------------------------------------

function notice(text, ok) {
  const n = $('#notice');
  n.textContent = text;
  n.className = ok ? 'ok' : 'err';
}

async function act(url) {
  const headers = { 'X-Actord-Request': 'live-view' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers['Authorization'] = 'Bearer ' + token;
  try {
    const r = await fetch(url, { method: 'POST', headers });
    const text = (await r.text()).trim();
    notice(r.ok ? text : r.status + ': ' + text + (r.status === 401 ? ' (set the admin token above)' : ''), r.ok);
  } catch (e) {
    notice('request failed: ' + e, false);
  }
}

function button(label, cls, url, confirmText) {
  const b = el('button', cls, label);
  b.type = 'button';
  b.addEventListener('click', () => {
    if (confirmText && !window.confirm(confirmText)) return;
    act(url);
  });
  return b;
}

// ---- pipelines ----------------------------------------------------------------------------

function pipelineState(p) {
  if (p.status !== 'running') return p.status;
  return p.up ? 'up' : 'degraded';
}

function renderPipelines() {
  const body = $('#pipelines tbody');
  const out = view.pipelines.map((p) => {
    const tr = el('tr');
    tr.dataset.pipeline = p.name;
    const state = el('td', 'state');
    state.append(badge(pipelineState(p)));
    if (p.paused) state.append(' ', badge('paused'));
    if (p.not_up && p.not_up.length) state.append(el('div', 'sub', p.not_up.join('; ')));
    const err = el('td', 'err');
    if (p.last_error) {
      err.append(el('div', '', p.last_error.message),
        el('div', 'sub', p.last_error.path + ' · ' + ago(p.last_error.at)));
    }
    const actions = el('td', 'actions');
    const enc = encodeURIComponent(p.name);
    actions.append(
      button('stop', 'stop', `/api/pipelines/${enc}/stop`, `Stop ${p.name}? It stays stopped until started.`),
      ' ', button('start', 'start', `/api/pipelines/${enc}/start`),
      ' ', p.paused
        ? button('resume', 'resume', `/api/pipelines/${enc}/resume`)
        : button('pause', 'pause', `/api/pipelines/${enc}/pause`,
          `Pause ${p.name}? In-flight batches finish; nothing new is read until resumed.`));
    for (const s of p.schedules || []) {
      actions.append(' ', button('run ' + s.name + ' now', 'run-now',
        `/api/pipelines/${enc}/run?entry=${encodeURIComponent(s.name)}`));
    }
    tr.append(el('td', 'path', p.name), state,
      el('td', 'num throughput', rate(p.records_per_second)),
      el('td', 'num lag', p.consumer_lag === null || p.consumer_lag === undefined ? '–' : String(p.consumer_lag)),
      el('td', 'num dlq', String(p.dlq_records)), err, actions);
    return tr;
  });
  body.replaceChildren(...out);
}

// ---- actors -------------------------------------------------------------------------------

function makeRow(a) {
  const tr = el('tr');
  tr.dataset.path = a.path;
  const cells = {};
  for (const name of ['name', 'state', 'restarts', 'budget', 'progress', 'rate', 'pending', 'counters', 'error', 'actions']) {
    cells[name] = el('td', name);
    tr.append(cells[name]);
  }
  cells.name.classList.add('path');
  for (const n of ['restarts', 'budget', 'rate', 'pending']) cells[n].classList.add('num');
  if (a.path !== '/') {
    cells.actions.append(button('restart', 'restart',
      '/api/actors/restart?path=' + encodeURIComponent(a.path)));
  }
  tr.cells_ = cells;
  return tr;
}

function fillRow(tr, a) {
  const c = tr.cells_;
  c.name.textContent = '  '.repeat(a.depth) + a.name;
  c.name.title = a.path + ' (' + a.kind + ')';
  const state = [badge(a.state)];
  if (a.backing_off_until) state.push(el('div', 'sub', 'restart ' + until(a.backing_off_until)));
  if (a.unhealthy) state.push(el('div', 'sub err', a.unhealthy));
  set(c.state, ...state);
  c.restarts.textContent = String(a.restarts);
  c.budget.textContent = a.budget_left === undefined ? '' : a.budget_left === null ? '∞' : String(a.budget_left);
  if (a.restart_budget) {
    const b = a.restart_budget;
    c.budget.title = 'own budget: ' + (b.max_restarts === null ? 'unlimited' : b.left + ' of ' + b.max_restarts) + ' per ' + b.within_seconds + ' s';
  }
  c.progress.textContent = a.kind === 'worker' ? ago(a.last_progress) : '';
  const b = bytes(a.bytes_per_second);
  c.rate.textContent = a.kind === 'worker' ? rate(a.records_per_second) + (b ? ' · ' + b : '') : '';
  c.pending.textContent = a.pending ? String(a.pending) : '';
  const counters = Object.entries(a.counters || {})
    .filter(([k, v]) => v && k !== 'records' && k !== 'bytes')
    .map(([k, v]) => k + '=' + v);
  if (a.counters && a.counters.records) counters.unshift('records=' + a.counters.records);
  c.counters.textContent = counters.join(' ');
  if (a.last_error) {
    set(c.error, el('div', '', a.last_error.message), el('div', 'sub', ago(a.last_error.at) + ' · ' + a.last_error.at));
  } else {
    set(c.error);
  }
}

function renderActors() {
  const body = $('#tree tbody');
  const want = view.order;
  for (const [path, tr] of rows) {
    if (!view.actors.has(path)) { tr.remove(); rows.delete(path); }
  }
  want.forEach((path, i) => {
    const a = view.actors.get(path);
    let tr = rows.get(path);
    if (!tr) { tr = makeRow(a); rows.set(path, tr); }
    fillRow(tr, a);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
}

function render() {
  renderPipelines();
  renderActors();
}

// ---- the event stream ---------------------------------------------------------------------

function applySnapshot(s) {
  syncClock(s.now);
  view.pipelines = s.pipelines;
  view.actors = new Map(s.actors.map((a) => [a.path, a]));
  view.order = s.actors.map((a) => a.path);
  render();
}

function applyDelta(d) {
  syncClock(d.now);
  if (d.pipelines) view.pipelines = d.pipelines;
  for (const a of d.changed) view.actors.set(a.path, a);
  for (const p of d.removed) view.actors.delete(p);
  if (d.order) view.order = d.order;
  else for (const a of d.changed) if (!view.order.includes(a.path)) view.order.push(a.path);
  view.order = view.order.filter((p) => view.actors.has(p));
  render();
}

async function loadInfo() {
  try {
    const info = await (await fetch('/api/info')).json();
    $('#meta').textContent = `${info.version} · config ${info.config} · kafka ${info.kafka.mode}` +
      (info.admin.token_required ? ' · actions need the admin token' : '');
  } catch (e) {
    $('#meta').textContent = 'admin port unreachable';
  }
}

function connect() {
  const conn = $('#conn');
  const es = new EventSource('/api/live/events');
  es.addEventListener('open', () => { conn.className = 'conn live'; conn.title = 'live'; });
  es.addEventListener('snapshot', (e) => applySnapshot(JSON.parse(e.data)));
  es.addEventListener('delta', (e) => applyDelta(JSON.parse(e.data)));
  es.addEventListener('tick', (e) => { syncClock(JSON.parse(e.data).now); render(); });
  // EventSource reconnects by itself; the next snapshot replaces what was shown.
  es.addEventListener('error', () => { conn.className = 'conn down'; conn.title = 'reconnecting'; });
}

function setupToken() {
  const input = $('#token');
  input.value = sessionStorage.getItem(TOKEN_KEY) || '';
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    notice(input.value ? 'token kept for this tab' : 'token forgotten', true);
  });
  $('#reload').addEventListener('click', () => {
    if (window.confirm('Reload the configuration? Pipelines whose settings changed restart.')) act('/api/config/reload');
  });
  $('#token-clear').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = '';
    notice('token forgotten', true);
  });
}

setupToken();
loadInfo();
connect();
