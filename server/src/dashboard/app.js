// The jobctl dashboard: one page, no dependencies. It talks to
// /dashboard/api/* with the operator's token (if the server wants one) in an
// Authorization header: no cookie, so nothing is sent on another site's
// behalf. Actions are JSON POSTs carrying X-Jobctl-Dashboard.
'use strict';

const API = '/dashboard/api/';
const TOKEN_KEY = 'jobctl-dashboard-token';
const STATES = ['SCHEDULED', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const SAMPLE_MS = 2000;
const SAMPLES = 90;

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    // Through the CSSOM: the page's CSP allows no inline style attributes.
    else if (k === 'color') e.style.background = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

function say(message, info) {
  const s = $('status');
  s.textContent = message || '';
  s.className = info ? 'info' : '';
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || ('HTTP ' + status));
    this.status = status;
    this.code = body.code;
  }
}

async function get(path) {
  const res = await fetch(API + path, { headers: headers() });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

async function act(path, body) {
  const res = await fetch(API + path, {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json', 'X-Jobctl-Dashboard': '1' }),
    body: JSON.stringify(body),
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, answer);
  return answer;
}

function failed(e) {
  if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
    showLogin(e.message);
  } else {
    say(e.message || String(e));
  }
}

function showLogin(why) {
  $('login').hidden = false;
  $('view').replaceChildren();
  say(why);
}

function fmtTime(ms) {
  return ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', '') : '';
}

function stateBadge(s) {
  return el('span', { class: 'state ' + s }, s);
}

function bytesView(b) {
  if (!b) return el('span', { class: 'muted' }, '—');
  if (b.text !== undefined) return b.text === '' ? el('span', { class: 'muted' }, '(empty)') : el('pre', {}, b.text);
  return el('pre', {}, 'hex: ' + b.hex);
}

function progressText(p) {
  if (!p) return '';
  let t = p.percent.toFixed(0) + '%';
  if (p.total) t += ` (${p.current}/${p.total})`;
  if (p.message) t += ' ' + p.message;
  return t;
}

// --- routing ---------------------------------------------------------------

let stopView = () => {};

function route() {
  stopView();
  stopView = () => {};
  say('');
  $('login').hidden = true;
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const crumbs = $('crumbs');
  crumbs.replaceChildren(el('a', { href: '#/' }, 'Queues'));
  if (parts[0] === 'queue' && parts[1]) {
    crumbs.append('/ ', el('span', {}, parts[1]));
    stopView = queueView(parts[1], params);
  } else if (parts[0] === 'job' && parts[1]) {
    const queue = parts[1].slice(0, parts[1].lastIndexOf(':'));
    crumbs.append('/ ', el('a', { href: '#/queue/' + enc(queue) }, queue), ' / ', el('span', {}, 'job'));
    stopView = jobView(parts[1]);
  } else {
    stopView = queuesView();
  }
}

// --- queues ------------------------------------------------------------------

const samples = [];

function queuesView() {
  const view = $('view');
  const table = el('table', { id: 'queues' },
    el('thead', {}, el('tr', {},
      el('th', {}, 'Queue'), ...['Scheduled', 'Queued', 'Running', 'Failed', 'Finished'].map((h) => el('th', { class: 'num' }, h)),
      el('th', {}, 'Status'), el('th', {}, 'Actions'))),
    el('tbody', {}));
  const chart = el('div', { id: 'chart' });
  view.replaceChildren(el('h2', {}, 'Queues'), table, el('h2', {}, 'Rates (this replica), all queues'), chart);
  let timer;
  let stopped = false;
  // After an action: the table only (the chart samples on its own clock).
  const refresh = async () => {
    try {
      const { queues } = await get('queues');
      fillQueues(table.tBodies[0], queues, refresh);
      return queues;
    } catch (e) {
      failed(e);
      return null;
    }
  };
  const tick = async () => {
    const queues = await refresh();
    if (queues) {
      sample(queues);
      drawChart(chart);
    }
    if (!stopped) timer = setTimeout(tick, SAMPLE_MS);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function fillQueues(tbody, queues, refresh) {
  if (queues.length === 0) {
    tbody.replaceChildren(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No queues yet: submit a job.')));
    return;
  }
  tbody.replaceChildren(...queues.map((q) => {
    const link = (state, n) => el('td', { class: 'num' },
      el('a', { href: `#/queue/${enc(q.queue)}?state=${state}` }, String(n)));
    const toggle = q.paused
      ? el('button', { class: 'resume', onclick: () => act('resume', { queue: q.queue }).then(refresh, failed) }, 'Resume')
      : el('button', { class: 'pause', onclick: () => act('pause', { queue: q.queue }).then(refresh, failed) }, 'Pause');
    const retry = q.failed > 0
      ? el('button', {
        class: 'requeue-failed',
        onclick: () => act('requeue-failed', { queue: q.queue })
          .then((r) => { say(`re-queued ${r.requeued} dead letters`, true); refresh(); }, failed),
      }, 'Re-queue dead letters')
      : null;
    return el('tr', { dataset: { queue: q.queue } },
      el('td', {}, el('a', { href: '#/queue/' + enc(q.queue) }, q.queue)),
      link('SCHEDULED', q.scheduled), link('QUEUED', q.queued), link('RUNNING', q.running),
      link('FAILED', q.failed), el('td', { class: 'num' }, String(q.finished)),
      el('td', { class: 'queue-status' }, q.paused ? el('span', { class: 'paused' }, 'paused') : 'active'),
      el('td', {}, el('div', { class: 'actions' }, toggle, retry)));
  }));
}

function sample(queues) {
  const sum = (f) => queues.reduce((n, q) => n + f(q), 0);
  samples.push({
    t: Date.now(),
    submitted: sum((q) => q.counters.submitted),
    completed: sum((q) => q.counters.completed),
    failed: sum((q) => q.counters.failed),
    queued: sum((q) => q.queued),
    running: sum((q) => q.running),
  });
  if (samples.length > SAMPLES) samples.shift();
}

const SERIES = [
  ['submitted', '#2f6fde', 'submitted/s'],
  ['completed', '#1f8f4e', 'completed/s'],
  ['failed', '#c8372d', 'failed attempts/s'],
];

function drawChart(box) {
  const s = samples;
  const rates = [];
  for (let i = 1; i < s.length; i++) {
    const dt = Math.max(0.001, (s[i].t - s[i - 1].t) / 1000);
    const r = { t: s[i].t };
    for (const [k] of SERIES) r[k] = Math.max(0, (s[i][k] - s[i - 1][k]) / dt);
    rates.push(r);
  }
  const W = 900;
  const H = 180;
  const pad = 30;
  const max = Math.max(1, ...rates.flatMap((r) => SERIES.map(([k]) => r[k])));
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  const line = (x1, y1, x2, y2, color) => {
    const l = document.createElementNS(ns, 'line');
    Object.entries({ x1, y1, x2, y2, stroke: color, 'stroke-width': 1 }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.append(l);
  };
  line(pad, H - pad, W - 5, H - pad, '#dde1e8');
  line(pad, 5, pad, H - pad, '#dde1e8');
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', 2);
  label.setAttribute('y', 14);
  label.setAttribute('font-size', 11);
  label.setAttribute('fill', '#6b7385');
  label.textContent = max.toFixed(max < 10 ? 1 : 0);
  svg.append(label);
  const x = (i) => pad + (i * (W - pad - 5)) / Math.max(1, SAMPLES - 2);
  const y = (v) => H - pad - (v / max) * (H - pad - 10);
  for (const [k, color] of SERIES) {
    if (rates.length < 1) break;
    const p = document.createElementNS(ns, 'polyline');
    p.setAttribute('fill', 'none');
    p.setAttribute('stroke', color);
    p.setAttribute('stroke-width', 2);
    p.setAttribute('points', rates.map((r, i) => `${x(i)},${y(r[k])}`).join(' '));
    p.dataset.series = k;
    svg.append(p);
  }
  const last = s[s.length - 1] || { queued: 0, running: 0 };
  const legend = el('div', { class: 'legend' },
    SERIES.map(([k, color, name]) => el('span', {}, el('i', { color }), name)),
    el('span', { class: 'muted' }, `now: ${last.queued} queued, ${last.running} running`));
  box.replaceChildren(svg, legend);
}

// --- one queue's jobs -----------------------------------------------------------

function queueView(queue, params) {
  const view = $('view');
  const form = el('form', { class: 'filters', id: 'filters' },
    el('label', {}, 'State', el('select', { name: 'state', id: 'f-state' },
      el('option', { value: '' }, 'any'), STATES.map((s) => el('option', { value: s, selected: params.get('state') === s }, s)))),
    el('label', {}, 'Kind', el('input', { name: 'kind', id: 'f-kind', value: params.get('kind') || '', size: 12 })),
    el('label', {}, 'Label (key=value)', el('input', { name: 'label', id: 'f-label', value: params.get('label') || '', size: 16 })),
    el('label', {}, 'Created after', el('input', { name: 'after', type: 'datetime-local', step: 1, value: params.get('after') || '' })),
    el('label', {}, 'Created before', el('input', { name: 'before', type: 'datetime-local', step: 1, value: params.get('before') || '' })),
    el('label', {}, 'Order', el('select', { name: 'order', id: 'f-order' },
      el('option', { value: 'newest', selected: params.get('order') !== 'oldest' }, 'newest first'),
      el('option', { value: 'oldest', selected: params.get('order') === 'oldest' }, 'oldest first'))),
    el('button', { type: 'submit', id: 'apply' }, 'Apply'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = `#/queue/${enc(queue)}?${q}`;
  });
  const table = el('table', { id: 'jobs' },
    el('thead', {}, el('tr', {}, ['Job', 'Kind', 'State', 'Attempt', 'Progress', 'Labels', 'Created'].map((h) => el('th', {}, h)))),
    el('tbody', {}));
  const more = el('button', { id: 'more', hidden: true }, 'More');
  const note = el('p', { class: 'muted', id: 'scan-note' });
  view.replaceChildren(el('h2', {}, `Jobs of ${queue}`), form, table, el('div', { class: 'actions' }, more), note);
  const query = new URLSearchParams({ queue, page_size: '50' });
  for (const k of ['state', 'kind', 'label', 'order']) if (params.get(k)) query.set(k, params.get(k));
  for (const k of ['after', 'before']) {
    if (params.get(k)) query.set(k, String(new Date(params.get(k)).getTime()));
  }
  let token = '';
  let rows = 0;
  const load = async () => {
    more.hidden = true;
    try {
      const q = new URLSearchParams(query);
      if (token) q.set('page_token', token);
      const page = await get('jobs?' + q);
      for (const j of page.jobs) table.tBodies[0].append(jobRow(j));
      rows += page.jobs.length;
      token = page.next_page_token;
      more.hidden = !token;
      note.textContent = token
        ? `${rows} shown; more may follow (each page looks at a bounded number of jobs)`
        : `${rows} in all`;
      if (rows === 0 && !token) {
        table.tBodies[0].replaceChildren(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No jobs match.')));
      }
    } catch (e) {
      failed(e);
    }
  };
  more.addEventListener('click', load);
  load();
  return () => {};
}

function jobRow(j) {
  return el('tr', { dataset: { job: j.id, state: j.state } },
    el('td', {}, el('a', { href: '#/job/' + enc(j.id), class: 'mono' }, j.id)),
    el('td', {}, j.kind), el('td', {}, stateBadge(j.state)),
    el('td', {}, `${j.attempt}/${j.max_attempts}`),
    el('td', {}, progressText(j.progress)),
    el('td', { class: 'mono' }, Object.entries(j.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')),
    el('td', {}, fmtTime(j.created_at)));
}

// --- one job -------------------------------------------------------------------

function jobView(id) {
  const view = $('view');
  const controller = new AbortController();
  const events = el('tbody', { id: 'events' });
  const bar = el('progress', { id: 'job-progress', max: 100, value: 0 });
  const state = el('span', { id: 'job-state' });
  const progress = el('span', { id: 'job-progress-text' });
  const details = el('dl', { class: 'kv', id: 'job-details' });
  const bodies = el('div', { id: 'job-bodies' });
  const buttons = el('div', { class: 'actions' },
    el('button', { id: 'cancel', class: 'danger', onclick: () => doAct('cancel') }, 'Cancel'),
    el('button', { id: 'requeue', onclick: () => doAct('requeue') }, 'Re-queue'),
    el('button', { id: 'delete', class: 'danger', onclick: () => doAct('delete') }, 'Delete'));
  view.replaceChildren(
    el('h2', { class: 'mono' }, id),
    el('div', {}, state, ' ', bar, ' ', progress),
    buttons,
    el('div', { class: 'grid' }, el('div', { class: 'card' }, details), bodies),
    el('h2', {}, 'Events (live)'),
    el('table', {}, el('thead', {}, el('tr', {}, ['Seq', 'Time', 'Event', 'State', 'Attempt', 'Progress', 'Error'].map((h) => el('th', {}, h)))), events));
  let current = null;
  const show = (job) => {
    current = job;
    state.replaceChildren(stateBadge(job.state));
    state.dataset.state = job.state;
    if (job.progress) bar.value = job.progress.percent;
    progress.textContent = progressText(job.progress) + (job.cancel_requested ? ' (cancel requested)' : '');
    const kv = [
      ['Kind', job.kind], ['Attempt', `${job.attempt} of ${job.max_attempts}`], ['Priority', job.priority],
      ['Worker', job.worker_id], ['Labels', Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')],
      ['Idempotency key', job.idempotency_key], ['Created', fmtTime(job.created_at)], ['Run at', fmtTime(job.run_at)],
      ['Started', fmtTime(job.started_at)], ['Finished', fmtTime(job.finished_at)],
      ['Lease expires', fmtTime(job.lease_expires_at)], ['Kept until', fmtTime(job.expires_at)],
      ['Cancel reason', job.cancel_reason],
    ];
    details.replaceChildren(...kv.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v === undefined ? '' : String(v))]));
    bodies.replaceChildren(
      el('div', { class: 'card' }, el('h2', {}, 'Payload'), bytesView(job.payload)),
      el('div', { class: 'card', id: 'job-result' }, el('h2', {}, 'Result'), bytesView(job.result)),
      el('div', { class: 'card', id: 'job-error' }, el('h2', {}, 'Error'),
        job.error ? el('pre', {}, `${job.error.code ? job.error.code + ': ' : ''}${job.error.message}\n${job.error.details || ''}`) : el('span', { class: 'muted' }, '—')));
    $('cancel').disabled = ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(job.state);
    $('requeue').disabled = job.state !== 'FAILED';
    $('delete').disabled = !['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(job.state);
  };
  const reload = () => get('job?id=' + enc(id)).then(show, failed);
  const doAct = (what) => {
    if (what === 'delete' && !window.confirm('Delete this job and its history?')) return;
    act(what, { job_id: id }).then(() => {
      say(`${what}: done`, true);
      if (what === 'delete') location.hash = '#/queue/' + enc(current ? current.queue : '');
      else reload();
    }, failed);
  };
  reload().then(() => follow(id, (e) => {
    events.append(el('tr', { dataset: { seq: e.seq } },
      el('td', { class: 'num' }, e.seq), el('td', {}, fmtTime(e.time)), el('td', {}, e.kind),
      el('td', {}, stateBadge(e.state)), el('td', { class: 'num' }, e.attempt),
      el('td', {}, progressText(e.progress)), el('td', {}, e.error ? e.error.message : '')));
    if (e.progress) {
      bar.value = e.progress.percent;
      progress.textContent = progressText(e.progress);
    }
    state.replaceChildren(stateBadge(e.state));
    state.dataset.state = e.state;
    if (e.kind === 'STATE_CHANGED' || e.kind === 'CANCEL_REQUESTED') reload();
  }, controller.signal));
  return () => controller.abort();
}

// Server-Sent Events over fetch (so the Authorization header goes along),
// resumed after the last sequence number seen when the stream breaks.
async function follow(id, onEvent, signal) {
  let after = 0;
  while (!signal.aborted) {
    try {
      const res = await fetch(`${API}events?id=${enc(id)}&after=${after}`, { headers: headers(), signal });
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        throw new ApiError(res.status, body);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
          }
          if (type === 'job') {
            const e = JSON.parse(data);
            after = Math.max(after, e.seq);
            onEvent(e);
          } else if (type === 'end') {
            return;
          } else if (type === 'fault') {
            say('event stream: ' + JSON.parse(data).error);
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status < 500) {
        failed(e);
        return;
      }
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// --- start ---------------------------------------------------------------------

async function start() {
  window.removeEventListener('hashchange', route);
  try {
    const me = await get('whoami');
    $('who').textContent = me.auth ? `${me.subject} · namespace ${me.namespace}` : `auth off · namespace ${me.namespace}`;
    window.addEventListener('hashchange', route);
    route();
  } catch (e) {
    failed(e);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    start();
  });
  start();
});
