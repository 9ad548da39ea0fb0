// Inspection rounds: today's rounds, progress per route and missed checkpoints.
import { api, el, render, failed, live, debounce, time, label } from './common.js';

async function load() {
  try {
    const data = await api('/api/v1/dashboard/rounds');
    const STATES = ['done', 'partial', 'missed', 'scheduled'];
    render(el('h1', {}, "Today's inspection rounds"),
      data.routes.length ? el('div.grid', { id: 'routes' }, data.routes.map((r) => {
        const total = STATES.reduce((n, k) => n + (r.states[k] || 0), 0);
        const finished = (r.states.done || 0) + (r.states.partial || 0) + (r.states.missed || 0);
        return el('section.card', {}, el('h3', {}, `${r.route}`, el('span.muted.small', {}, r.site)),
          el('progress', { max: total || 1, value: r.states.done || 0, style: 'width:100%' }),
          el('div.small', {}, `${r.states.done || 0} done · ${r.states.partial || 0} partial · `,
            el('span', { class: r.states.missed ? 'error' : '' }, `${r.states.missed || 0} missed`),
            ` · ${total - finished} to come`));
      })) : null,
      el('h2', {}, 'Rounds'),
      data.rounds.length ? el('table.responsive', { id: 'rounds' }, el('thead', {}, el('tr', {}, ['route', 'site', 'scheduled', 'due', 'state', 'progress', 'missed checkpoints', 'technician'].map((h) => el('th', {}, h)))),
        el('tbody', {}, data.rounds.map((r) => el('tr', {}, el('td', {}, r.route), el('td', {}, r.site), el('td', {}, time(r.scheduled_ms)), el('td', {}, time(r.due_ms)),
          el('td', {}, label(r.state)),
          el('td', {}, el('progress', { max: r.checkpoints || 1, value: r.checked }), ` ${r.checked}/${r.checkpoints}`),
          el('td', {}, r.missed_names.length ? el('span.error', {}, r.missed_names.join(', ')) : '—'),
          el('td', {}, r.technician || '—'))))) : el('p.muted', {}, 'No rounds today. Routes and rounds are set up under /api/v1/routes.'));
  } catch (e) { failed(e); }
}
const reload = debounce(load, 500);
live({ hello: reload, workorder: reload });
setInterval(reload, 60000);
load();
