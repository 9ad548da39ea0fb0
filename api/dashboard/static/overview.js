// Portfolio overview: every site and building with its health, alarms by severity, offline
// devices and agents, and open work orders by SLA state. Refetched (debounced) on live events.
import { api, el, render, failed, live, debounce, label } from './common.js';

const SEVS = ['critical', 'major', 'minor', 'warning', 'info'];

function counts(x) {
  return el('div', {},
    el('div.sevs', {}, SEVS.filter((s) => x.alarms[s]).map((s) => el(`span.badge.sev-${s}`, {}, `${x.alarms[s]} ${s}`)),
      x.alarms_total ? null : el('span.muted.small', {}, 'no active alarms')),
    el('dl.kv', {},
      el('dt', {}, 'devices'), el('dd', { 'data-k': 'devices' }, `${x.devices - x.devices_offline} / ${x.devices} online`,
        x.devices_offline ? el('span.error', {}, ` · ${x.devices_offline} offline`) : null),
      x.agents !== undefined ? [el('dt', {}, 'agents'), el('dd', {}, `${x.agents - x.agents_offline} / ${x.agents} online`)] : null,
      el('dt', {}, 'work orders'), el('dd', {},
        ['on_time', 'at_risk', 'breached'].map((k) => el('span.badge', { class: x.work_orders[k] ? `sla-${k}` : '', title: label(k) }, `${x.work_orders[k]} ${label(k)}`)))));
}

function site(s) {
  return el('section.card', { 'data-site': s.site },
    el('h3', {}, el('span', {}, s.name !== s.site ? `${s.name} (${s.site})` : s.site),
      el(`span.badge.h-${s.health}`, { 'data-health': s.health }, s.health)),
    counts(s),
    s.buildings.length ? el('div', {}, el('h2', {}, 'Buildings'),
      s.buildings.map((b) => el('div.card', { style: 'margin:.4em 0' },
        el('h3', {}, el('a', { href: `/buildings?site=${encodeURIComponent(s.site)}&building=${encodeURIComponent(b.code)}` }, b.name),
          el(`span.badge.h-${b.health}`, {}, b.health)),
        counts(b)))) : null,
    el('p.small', {}, el('a', { href: `/alarms?site=${encodeURIComponent(s.site)}` }, 'alarms'), ' · ',
      el('a', { href: `/work-orders?site=${encodeURIComponent(s.site)}` }, 'work orders'), ' · ',
      el('a', { href: `/buildings?site=${encodeURIComponent(s.site)}` }, 'floor plans'), ' · ',
      el('a', { href: `/fleet?site=${encodeURIComponent(s.site)}` }, 'fleet')));
}

async function load() {
  try {
    const data = await api('/api/v1/dashboard/overview');
    const total = data.sites.reduce((n, s) => n + s.alarms_total, 0);
    render(el('h1', {}, 'Portfolio overview ', el('span.muted.small', { id: 'summary' },
      `${data.sites.length} site(s) · ${total} active alarm(s) · updated ${new Date(data.now_ms).toLocaleTimeString()}`)),
    data.sites.length ? el('div.grid', { id: 'sites' }, data.sites.map(site)) : el('p.muted', {}, 'No sites yet.'));
  } catch (e) { failed(e); }
}

const reload = debounce(load, 300);
live({ hello: reload, alarm: reload, alarm_handling: reload, workorder: reload, sla: reload, agent: reload });
load();
