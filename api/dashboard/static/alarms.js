// Alarm console: active alarms, worst first, live. Acknowledge, assign, silence (console only),
// open a work order. A new critical alarm flashes (and beeps, where the browser allows sound).
import { api, act, can, el, render, failed, live, debounce, ago, label, toast } from './common.js';

const params = new URLSearchParams(location.search);
let site = params.get('site') || '';
let alarms = new Map(); // id -> alarm
const fresh = new Map(); // id -> when it arrived: new critical alarms flash for FLASH_MS
const FLASH_MS = 6000;
let audio = null;

function beep() {
  try {
    audio = audio || new AudioContext();
    const o = audio.createOscillator(); const g = audio.createGain();
    o.frequency.value = 880; g.gain.value = 0.08; o.connect(g).connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.35);
  } catch { /* no sound allowed before a user gesture: the flash still shows */ }
}

function actions(a) {
  const out = [];
  if (can('alarm.ack')) {
    if (!a.acked_by) out.push(el('button.primary', { 'data-act': 'ack', onclick: () => act(() => api(`/api/v1/dashboard/alarms/${encodeURIComponent(a.id)}/ack`, { method: 'POST' }), 'Acknowledged').then(reload) }, 'Acknowledge'));
    out.push(el('button', { 'data-act': 'assign', onclick: () => {
      const who = prompt('Assign to (empty to unassign):', a.assignee || '');
      if (who !== null) act(() => api(`/api/v1/dashboard/alarms/${encodeURIComponent(a.id)}/assign`, { method: 'POST', body: { assignee: who } }), 'Assigned').then(reload);
    } }, a.assignee ? 'Reassign' : 'Assign'));
    out.push(a.silenced
      ? el('button', { 'data-act': 'unsilence', onclick: () => act(() => api(`/api/v1/dashboard/alarms/${encodeURIComponent(a.id)}/silence`, { method: 'POST', body: { minutes: 0 } })).then(reload) }, 'Unsilence')
      : el('button', { 'data-act': 'silence', onclick: () => act(() => api(`/api/v1/dashboard/alarms/${encodeURIComponent(a.id)}/silence`, { method: 'POST', body: { minutes: 60 } }), 'Silenced for 1 h').then(reload) }, 'Silence 1 h'));
  }
  if (a.work_order) {
    out.push(el('a.btn', { href: `/work-orders?focus=${a.work_order.id}`, 'data-act': 'wo-link' }, `Work order #${a.work_order.id}${a.work_order.state ? ` (${label(a.work_order.state)})` : ''}`));
  } else if (can('workorder.create')) {
    out.push(el('button', { 'data-act': 'work-order', onclick: async () => {
      const r = await act(() => api(`/api/v1/dashboard/alarms/${encodeURIComponent(a.id)}/work-order`, { method: 'POST' }));
      if (r) { toast(`${r.created ? 'Opened' : 'Linked'} work order #${r.work_order.id}`); reload(); }
    } }, 'Open work order'));
  }
  return out;
}

function item(a) {
  const cls = [`sev-${a.severity}`, a.acked_by ? 'acked' : '', a.silenced ? 'silenced' : '', (fresh.get(a.id) || 0) > Date.now() - FLASH_MS ? 'flash' : ''].filter(Boolean).join(' ');
  const where = a.equipment_id ? el('a', { href: `/equipment/${a.equipment_id}` }, a.device) : a.device;
  return el('article.alarm', { class: cls, 'data-id': a.id, 'data-severity': a.severity },
    el('div', {},
      el('div.title', {}, el(`span.badge.sev-${a.severity}`, {}, a.severity), ' ', label(a.fault), ' — ', where),
      el('div', {}, a.summary),
      el('div.meta', {}, `${a.site} · started ${ago(a.started_ms)} · updated ${ago(a.updated_ms)}`,
        a.acked_by ? ` · acked by ${a.acked_by}` : ' · not acknowledged',
        a.assignee ? ` · assigned to ${a.assignee}` : '',
        a.silenced ? ` · silenced until ${new Date(a.silenced_until_ms).toLocaleTimeString()}` : '')),
    el('div.meta', {}, a.state),
    el('div.actions', {}, actions(a)));
}

function draw() {
  const list = [...alarms.values()].sort((x, y) => (y.severity_rank - x.severity_rank) || (y.updated_ms - x.updated_ms));
  const sites = [...new Set(list.map((a) => a.site))].sort();
  const picker = el('select', { id: 'site', onchange: (e) => { site = e.target.value; history.replaceState(null, '', site ? `?site=${encodeURIComponent(site)}` : location.pathname); load(); } },
    el('option', { value: '' }, 'all sites'), [...new Set([...sites, site].filter(Boolean))].map((s) => el('option', { value: s, selected: s === site }, s)));
  const unacked = list.filter((a) => !a.acked_by).length;
  render(el('h1', {}, 'Alarms ', el('span.muted.small', { id: 'count' }, `${list.length} active · ${unacked} not acknowledged`)),
    el('div.toolbar', {}, picker),
    list.length ? el('div.alarms', { id: 'alarms' }, list.map(item)) : el('p.muted', { id: 'alarms' }, 'No active alarms.'));
}

async function load() {
  try {
    const data = await api(`/api/v1/dashboard/alarms${site ? `?site=${encodeURIComponent(site)}` : ''}`);
    alarms = new Map(data.alarms.map((a) => [a.id, a]));
    draw();
  } catch (e) { failed(e); }
}
const reload = debounce(load, 200);

function onAlarm(ev) {
  if (site && ev.site !== site) return;
  if (ev.state === 'cleared') { alarms.delete(ev.id); draw(); return; }
  const known = alarms.get(ev.id);
  const sevRank = ['info', 'warning', 'minor', 'major', 'critical'].indexOf(ev.severity);
  // Shown at once from the event itself; the debounced reload then adds who handles it.
  alarms.set(ev.id, { ...(known || { acked_by: null, assignee: null, silenced: false, work_order: null, equipment_id: null }),
    id: ev.id, site: ev.site, device: ev.device, state: ev.state, severity: ev.severity, severity_rank: sevRank,
    fault: ev.fault, summary: ev.summary, started_ms: ev.started_ms, updated_ms: ev.ts_ms });
  if (!known && ev.severity === 'critical') {
    fresh.set(ev.id, Date.now());
    document.body.classList.remove('flash-all'); void document.body.offsetWidth; document.body.classList.add('flash-all');
    beep();
  }
  draw();
  reload();
}

live({ hello: reload, alarm: onAlarm, alarm_handling: reload, workorder: (ev) => { if (ev.anomaly_id && alarms.has(ev.anomaly_id)) reload(); } });
load();
