// Equipment page: a trend of its metrics from the store (downsampled there, refetched on zoom
// and pan), the normal band and anomaly markers drawn on it, its ledger details and work orders.
import { api, el, render, failed, live, debounce, label, time, ago } from './common.js';

const eqId = Number(location.pathname.split('/').pop());
const q = new URLSearchParams(location.search);
const RANGES = { '1 h': 3600e3, '24 h': 86400e3, '7 d': 7 * 86400e3, '30 d': 30 * 86400e3 };
const SEV_COLOR = { critical: '#f85149', major: '#f0883e', minor: '#d29922', warning: '#d29922', info: '#58a6ff' };
const state = { metric: q.get('metric') || '', device: q.get('device') || '', end: null, span: RANGES['24 h'] };
let uPlot = null; let plot = null; let trend = null; let eq = null; let orders = [];

async function loadLib() {
  try { uPlot = (await import('/static/vendor/uplot/dist/uPlot.esm.js')).default; } catch {
    uPlot = null; // the page still shows the numbers; the chart needs `npm install` (make demo does it)
  }
}

function drawHooks() {
  return {
    // Anomaly spans under the series (the normal band is a uPlot band between two series).
    drawClear: [(u) => {
      const { ctx } = u; const { left, top, width, height } = u.bbox;
      ctx.save();
      for (const a of trend.anomalies) {
        const x0 = Math.max(left, u.valToPos(a.started_ms / 1000, 'x', true));
        const x1 = Math.min(left + width, u.valToPos((a.cleared_ms || trend.end_ms) / 1000, 'x', true));
        if (x1 < left || x0 > left + width) continue;
        ctx.fillStyle = (SEV_COLOR[a.severity] || '#f85149') + '33';
        ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
        ctx.fillStyle = SEV_COLOR[a.severity] || '#f85149';
        ctx.fillRect(x0, top, Math.max(2, x1 - x0), 4 * devicePixelRatio);
      }
      ctx.restore();
    }],
  };
}

function chart(box) {
  if (!uPlot) { box.replaceChildren(el('p.muted', {}, 'The chart library is not installed (run `npm install`); figures below.')); return; }
  if (plot) plot.destroy();
  const band = trend.band || { low: trend.t.map(() => null), high: trend.t.map(() => null), kind: 'none' };
  const data = [trend.t.map((t) => t / 1000), trend.mean, trend.min, trend.max, band.high, band.low];
  const width = Math.max(300, box.clientWidth - 16);
  plot = new uPlot({
    width, height: Math.min(360, Math.round(width * 0.55)),
    series: [{}, { label: `${trend.metric} mean`, stroke: '#4ea1ff', width: 2 },
      { label: 'min', stroke: '#4ea1ff55', width: 1 }, { label: 'max', stroke: '#4ea1ff55', width: 1 },
      { label: `normal high (${band.kind})`, stroke: '#2ea04399', width: 1, dash: [4, 4] },
      { label: 'normal low', stroke: '#2ea04399', width: 1, dash: [4, 4] }],
    bands: [{ series: [4, 5], fill: 'rgba(46,160,67,0.14)' }],
    axes: [{ stroke: '#8b98a5', grid: { stroke: '#2a3542' } }, { stroke: '#8b98a5', grid: { stroke: '#2a3542' } }],
    scales: { x: { time: true, min: trend.start_ms / 1000, max: trend.end_ms / 1000 } },
    cursor: { drag: { x: true, y: false } },
    hooks: { ...drawHooks(), setSelect: [(u) => {
      // Zoom: the selected range is fetched again, so the store downsamples it at a finer step.
      if (u.select.width < 5) return;
      const a = u.posToVal(u.select.left, 'x') * 1000; const b = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
      u.setSelect({ width: 0, height: 0 }, false);
      state.end = Math.round(b); state.span = Math.max(60e3, Math.round(b - a));
      loadTrend();
    }] },
  }, data, box);
  box.dataset.points = String(trend.t.length);
}

function controls() {
  const pan = (f) => () => { state.end = (state.end || trend.end_ms) + f * state.span / 2; loadTrend(); };
  return el('div.toolbar', {},
    trend.devices.length > 1 ? el('select', { onchange: (e) => { state.device = e.target.value; state.metric = ''; loadTrend(); } },
      trend.devices.map((d) => el('option', { value: d, selected: d === trend.device }, d))) : null,
    el('select', { id: 'metric', onchange: (e) => { state.metric = e.target.value; loadTrend(); } },
      trend.metrics.map((m) => el('option', { value: m, selected: m === trend.metric }, m))),
    Object.entries(RANGES).map(([name, span]) => el('button', { 'data-range': name, onclick: () => { state.span = span; state.end = null; loadTrend(); } }, name)),
    el('button', { title: 'earlier', onclick: pan(-1) }, '◀'), el('button', { title: 'later', onclick: pan(1) }, '▶'),
    el('span.muted.small', {}, `${time(trend.start_ms)} – ${time(trend.end_ms)} · step ${Math.round(trend.step_ms / 1000)} s · ${trend.t.length} points · drag on the chart to zoom`));
}

function details() {
  const kv = (k, v) => [el('dt', {}, k), el('dd', {}, v || '—')];
  return el('section.card', {}, el('h3', {}, 'Ledger'),
    el('dl.kv', {}, kv('code', eq.code), kv('name', eq.name), kv('kind', eq.kind), kv('site', eq.site_id), kv('brick class', eq.brick_class),
      kv('manufacturer', eq.manufacturer), kv('model', eq.model), kv('serial', eq.serial), kv('installed', eq.install_date),
      kv('warranty end', eq.warranty_end), kv('criticality', eq.criticality), kv('responsible', eq.responsible),
      kv('devices', (eq.devices || []).map((d) => d.device).join(', '))));
}

function history() {
  return el('section.card', {}, el('h3', {}, 'Work orders'),
    orders.length ? el('table.responsive', {}, el('thead', {}, el('tr', {}, ['#', 'title', 'state', 'priority', 'opened'].map((h) => el('th', {}, h)))),
      el('tbody', {}, orders.map((w) => el('tr', {}, el('td', {}, el('a', { href: `/work-orders?focus=${w.id}` }, `#${w.id}`)), el('td', {}, w.title),
        el('td', {}, label(w.state)), el('td', {}, w.priority), el('td', {}, ago(w.created_ms))))))
      : el('p.muted', {}, 'No work orders for this equipment.'));
}

function anomalies() {
  return el('section.card', {}, el('h3', {}, 'Anomalies in this range'),
    trend.anomalies.length ? el('ul', {}, trend.anomalies.map((a) => el('li', {}, el(`span.badge.sev-${a.severity}`, {}, a.severity), ' ',
      `${label(a.fault)}: ${a.summary} (${time(a.started_ms)}${a.cleared_ms ? ` – ${time(a.cleared_ms)}` : ', still open'})`)))
      : el('p.muted', {}, 'None.'),
    el('p.small.muted', {}, trend.band ? (trend.band.kind === 'daily'
      ? 'Normal band (green): for each hour of the day, the usual lows and highs of the last two weeks.'
      : 'Normal band (green): the usual range of this view (too little history for a daily band).')
      : 'Too little data for a normal band.'));
}

function draw() {
  const box = el('div.chart', { id: 'chart' });
  render(el('h1', {}, eq.name || eq.code, ' ', el('span.muted.small', {}, `${eq.kind} · ${eq.site_id}`)),
    trend.error ? el('p.muted', {}, trend.error) : [controls(), box],
    el('div.cols', {}, el('div', {}, trend.error ? null : anomalies(), history()), details()));
  if (!trend.error) chart(box);
}

async function loadTrend() {
  try {
    const p = new URLSearchParams();
    if (state.metric) p.set('metric', state.metric);
    if (state.device) p.set('device', state.device);
    const end = state.end || Date.now();
    p.set('start', String(Math.round(end - state.span))); p.set('end', String(Math.round(end)));
    const t0 = performance.now();
    trend = await api(`/api/v1/dashboard/equipment/${eqId}/trend?${p}`);
    trend.fetch_ms = performance.now() - t0;
    state.metric = trend.metric; state.device = trend.device;
    // A young installation has little history: start on the last hour rather than a near-empty day.
    if (!state.settled && !state.end && trend.t.length < 20 && state.span > RANGES['1 h']) {
      state.settled = true; state.span = RANGES['1 h']; await loadTrend(); return;
    }
    state.settled = true;
  } catch (e) {
    if (e.status !== 404) { failed(e); return; }
    trend = { error: e.message };
  }
  draw();
}

async function load() {
  try {
    [eq, orders] = await Promise.all([api(`/api/v1/equipment/${eqId}`),
      api(`/api/v1/dashboard/work-orders?equipment_id=${eqId}`).then((d) => d.work_orders)]);
    await loadLib();
    await loadTrend();
  } catch (e) { failed(e); }
}

const refreshOrders = debounce(async () => {
  orders = (await api(`/api/v1/dashboard/work-orders?equipment_id=${eqId}`)).work_orders; if (trend) draw();
}, 300);
live({ workorder: refreshOrders, alarm: (ev) => { if (trend && ev.device === trend.device && ev.site === trend.site && !state.end) loadTrend(); } });
window.addEventListener('resize', debounce(() => { if (trend && !trend.error) chart(document.getElementById('chart')); }, 300));
load();
