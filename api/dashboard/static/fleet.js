// Fleet health: agents (status, outbox backlog from their health reports) and devices
// (online / stale / offline, last seen). Agent status and health arrive live.
import { api, el, render, failed, live, debounce, ago } from './common.js';

const site = new URLSearchParams(location.search).get('site') || '';
let data = null;

function draw() {
  const agents = data.agents.filter((a) => !site || a.site === site);
  const devices = data.devices.filter((d) => !site || d.site === site);
  const off = devices.filter((d) => d.state !== 'online').length;
  render(el('h1', {}, 'Fleet health ', el('span.muted.small', {}, `${site || 'all sites'} · ${agents.filter((a) => a.state === 'online').length}/${agents.length} agents online · ${devices.length - off}/${devices.length} devices online`)),
    el('h2', {}, 'Agents'),
    el('table.responsive', { id: 'agents' }, el('thead', {}, el('tr', {}, ['agent', 'state', 'since', 'outbox backlog', 'oldest unacked', 'dropped', 'poll errors', 'publish p99'].map((h) => el('th', {}, h)))),
      el('tbody', {}, agents.map((a) => el('tr', { 'data-agent': `${a.site}/${a.agent}` },
        el('td', {}, `${a.site}/${a.agent}`), el('td', {}, el(`span.badge.s-${a.state}`, {}, a.state), a.reason ? el('div.small.muted', {}, a.reason) : null),
        el('td', {}, ago(a.since_ms)),
        el('td', {}, a.health ? `${a.health.outbox_depth} msgs (${Math.round(a.health.outbox_bytes / 1024)} KiB)` : '—'),
        el('td', {}, a.health ? `${a.health.oldest_unacked_age_s.toFixed(1)} s` : '—'),
        el('td', {}, a.health ? a.health.dropped : '—'), el('td', {}, a.health ? a.health.poll_errors : '—'),
        el('td', {}, a.health ? `${(a.health.publish_p99_s * 1000).toFixed(0)} ms` : '—'))))),
    el('h2', {}, 'Devices'),
    el('table.responsive', { id: 'devices' }, el('thead', {}, el('tr', {}, ['device', 'agent', 'state', 'last seen', 'why'].map((h) => el('th', {}, h)))),
      el('tbody', {}, devices.sort((x, y) => (x.state === 'online') - (y.state === 'online')).map((d) => el('tr', {},
        el('td', {}, `${d.site}/${d.device}`), el('td', {}, d.agent), el('td', {}, el(`span.badge.s-${d.state}`, {}, d.state)),
        el('td', {}, ago(d.last_seen_ms)), el('td.small.muted', {}, d.reason))))));
}

async function load() { try { data = await api('/api/v1/dashboard/fleet'); draw(); } catch (e) { failed(e); } }

function onHealth(ev) {
  const a = data?.agents.find((x) => x.site === ev.site && x.agent === ev.agent);
  if (!a) { reload(); return; }
  a.health = ev; draw();
}
const reload = debounce(load, 300);
live({ hello: reload, agent: reload, health: onHealth });
setInterval(reload, 30000); // "last seen" ages and device staleness are time-based
load();
