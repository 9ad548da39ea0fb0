// On call: who is on call now per rotation (and the sites it covers), and every open page
// with its escalation state (step, round, next escalation). Live: refetched on alarms.
import { api, act, can, el, me, render, failed, live, debounce, ago, time, duration } from './common.js';

async function load() {
  try {
    const [data, shifts, rotations] = await Promise.all([api('/api/v1/dashboard/oncall'),
      // 503 until the alerting service has started on this database: say so, show the pages anyway
      api('/api/v1/alerting/oncall').catch((e) => { if (e.status === 401) throw e; return { on_call: [], note: e.message }; }),
      api('/api/v1/alerting/rotations?shifts=1').catch(() => ({ rotations: {} }))]);
    const covers = (r) => (rotations.rotations[r]?.sites || []).join(', ') || 'every site';
    data.on_call = shifts.on_call; data.note = shifts.note;
    render(el('h1', {}, 'On call'), data.note ? el('p.muted', {}, data.note) : null,
      el('table.responsive', { id: 'oncall' }, el('thead', {}, el('tr', {}, ['sites', 'rotation', 'on call', 'since', 'until'].map((h) => el('th', {}, h)))),
        el('tbody', {}, data.on_call.map((s) => el('tr', {}, el('td', {}, covers(s.rotation)), el('td', {}, s.rotation), el('td', {}, s.name || s.person, s.override ? ' (override)' : ''),
          el('td', {}, time(s.since_ms)), el('td', {}, time(s.until_ms)))))),
      el('h2', {}, 'Open pages'),
      data.incidents.length ? el('table.responsive', { id: 'pages' }, el('thead', {}, el('tr', {}, ['page', 'site', 'state', 'escalation', 'opened', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, data.incidents.map((i) => el('tr', {},
          el('td', {}, el(`span.badge.sev-${i.severity}`, {}, i.severity), ' ', i.title),
          el('td', {}, `${i.site}${i.building && i.building !== i.site ? `/${i.building}` : ''}`),
          el('td', {}, i.state, i.acked_by ? ` by ${i.acked_by}` : ''),
          el('td', {}, `step ${i.step + 1}, round ${i.round + 1}`, i.next_ms && i.state !== 'acked' ? ` · next in ${duration(i.next_ms - data.now_ms)}` : '', i.policy ? ` · ${i.policy}` : ''),
          el('td', {}, ago(i.created_ms)),
          el('td', {}, can('alarm.ack') && i.state !== 'acked' ? el('button', { onclick: () => act(() => api(`/api/v1/alerting/incidents/${encodeURIComponent(i.id)}/ack`, { method: 'POST', body: { by: me.user } }), 'Page acknowledged').then(load) }, 'Acknowledge') : null)))))
        : el('p.muted', {}, 'No open pages.'));
  } catch (e) { failed(e); }
}
const reload = debounce(load, 500);
live({ hello: reload, alarm: reload, alarm_handling: reload, sla: reload });
setInterval(reload, 15000);
load();
