// Work-order board: a column per state, SLA countdowns, filters by site, crew and priority,
// and buttons to move an order along its lifecycle (the moves the server says are allowed).
import { api, act, can, el, me, render, failed, live, debounce, duration, label, ago } from './common.js';

const params = new URLSearchParams(location.search);
const filters = { site: params.get('site') || '', crew: params.get('crew') || '', priority: params.get('priority') || '' };
const focus = Number(params.get('focus')) || null;
const COLUMNS = ['new', 'assigned', 'in_progress', 'on_hold', 'resolved', 'closed'];
const VERB = { assigned: 'Assign', in_progress: 'Start', on_hold: 'Hold', resolved: 'Resolve', closed: 'Close', cancelled: 'Cancel', new: 'Unassign' };
let data = null;
let offset = 0; // server clock minus ours, so countdowns use the server's now
const changed = new Set();

async function move(wo, to) {
  if (to === 'assigned') {
    const who = prompt(`Assign work order #${wo.id} to:`, wo.assignee || me.user);
    if (!who) return;
    await act(() => api(`/api/v1/work-orders/${wo.id}/assign`, { method: 'POST', body: { assignee: who } }), `#${wo.id} assigned to ${who}`);
  } else {
    let note = '';
    if (to === 'cancelled' || to === 'on_hold') { note = prompt(`Why ${label(to)}?`, '') ?? null; if (note === null) return; }
    await act(() => api(`/api/v1/work-orders/${wo.id}/transition`, { method: 'POST', body: { to, note } }), `#${wo.id} → ${label(to)}`);
  }
  changed.add(wo.id);
  load();
}

function countdown(wo) {
  if (!wo.sla_due_ms || ['resolved', 'closed', 'cancelled'].includes(wo.state)) return el('span.badge', { class: `sla-${wo.sla}` }, label(wo.sla));
  return el('span.badge.countdown', { class: `sla-${wo.sla}`, 'data-due': wo.sla_due_ms, title: `due ${new Date(wo.sla_due_ms).toLocaleString()}` }, '');
}

function card(wo) {
  const moves = can('workorder.update') ? wo.allowed.map((to) => el('button', { 'data-to': to, onclick: () => move(wo, to) }, VERB[to] || label(to))) : [];
  return el('article.wo', { 'data-id': wo.id, 'data-state': wo.state, class: changed.has(wo.id) || wo.id === focus ? 'changed' : '' },
    el('div.title', {}, `#${wo.id} `, wo.title),
    el('div.meta', {}, el('span.badge', {}, wo.priority), ' ', countdown(wo), ' ', wo.site_id || '',
      wo.equipment_id ? [' · ', el('a', { href: `/equipment/${wo.equipment_id}` }, wo.device || `equipment ${wo.equipment_id}`)] : '',
      wo.assignee ? ` · ${wo.assignee}` : '', wo.crew ? ` (${wo.crew})` : '', ` · ${ago(wo.updated_ms)}`),
    moves.length ? el('div.moves', {}, moves) : null);
}

function select(name, options, all) {
  return el('select', { name, 'aria-label': name, onchange: (e) => {
    filters[name] = e.target.value;
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, '', q.toString() ? `?${q}` : location.pathname);
    load();
  } }, el('option', { value: '' }, all), options.map((o) => el('option', { value: o, selected: o === filters[name] }, o)));
}

function draw() {
  const sites = [...new Set(data.work_orders.map((w) => w.site_id).filter(Boolean).concat(filters.site ? [filters.site] : []))].sort();
  const by = Object.fromEntries(COLUMNS.map((c) => [c, []]));
  for (const w of data.work_orders) if (by[w.state]) by[w.state].push(w);
  render(el('h1', {}, 'Work orders ', el('span.muted.small', {}, `${data.work_orders.filter((w) => !['closed', 'cancelled'].includes(w.state)).length} open`)),
    el('div.toolbar', {}, select('site', sites, 'all sites'), select('crew', data.crews, 'all crews'), select('priority', ['P1', 'P2', 'P3', 'P4'], 'all priorities')),
    el('div.board', { id: 'board' }, COLUMNS.map((c) => el('section.column', { 'data-state': c },
      el('h2', {}, label(c), el('span.muted', {}, String(by[c].length))), by[c].map(card)))));
  tick();
  if (focus) document.querySelector(`.wo[data-id="${focus}"]`)?.scrollIntoView({ block: 'center' });
}

function tick() {
  const now = Date.now() + offset;
  for (const b of document.querySelectorAll('.countdown')) {
    const left = Number(b.dataset.due) - now;
    b.textContent = left >= 0 ? `${duration(left)} left` : `${duration(-left)} over`;
  }
}

async function load() {
  try {
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    data = await api(`/api/v1/dashboard/work-orders${q.toString() ? `?${q}` : ''}`);
    offset = data.now_ms - Date.now();
    draw();
  } catch (e) { failed(e); }
}

const reload = debounce(load, 200);
live({ hello: reload, workorder: (ev) => { changed.add(ev.work_order); reload(); }, sla: reload });
setInterval(tick, 1000);
load();
