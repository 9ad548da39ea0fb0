// Building view: a floor plan per floor (uploaded here) with the site's devices placed on it,
// coloured live by state (online / stale / offline, flashing while an alarm is active).
// Placing: pick a device from the list, then click its spot on the plan (needs assets.write).
import { api, act, can, el, render, failed, live, debounce } from './common.js';

const q = new URLSearchParams(location.search);
let site = q.get('site') || '';
let floorId = Number(q.get('floor')) || null;
let plans = null; let states = new Map(); let alarming = new Map(); let picked = null;

function go() {
  const p = new URLSearchParams(); if (site) p.set('site', site); if (floorId) p.set('floor', String(floorId));
  history.replaceState(null, '', `?${p}`);
}

async function loadStates() {
  const [fleet, alarms] = await Promise.all([api('/api/v1/dashboard/fleet'), api(`/api/v1/dashboard/alarms?site=${encodeURIComponent(site)}`)]);
  states = new Map(fleet.devices.filter((d) => d.site === site).map((d) => [d.device, d.state]));
  alarming = new Map();
  for (const a of alarms.alarms) if (!alarming.has(a.device)) alarming.set(a.device, a);
}

function pin(d) {
  const a = alarming.get(d.device);
  const cls = [`s-${states.get(d.device) || 'unknown'}`, a ? 'alarm' : '', picked === d.device ? 'sel' : ''].filter(Boolean).join(' ');
  return [el('div.pin', { class: cls, 'data-device': d.device, style: `left:${d.x * 100}%;top:${d.y * 100}%`,
    title: `${d.device}: ${states.get(d.device) || 'never seen'}${a ? ` · ${a.severity}: ${a.summary}` : ''}`,
    onclick: (e) => { e.stopPropagation(); if (placing()) { picked = d.device; draw(); } else location.assign(`/alarms?site=${encodeURIComponent(site)}`); } }),
  el('div.pin-label', { style: `left:${d.x * 100}%;top:${d.y * 100}%` }, d.device)];
}

const placing = () => can('assets.write') && picked !== null;

function planView(f) {
  if (!f.plan) return el('p.muted', {}, 'No plan for this floor yet.', can('assets.write') ? ' Upload one below.' : '');
  const img = el('img', { src: f.plan.url, alt: `plan of ${f.building} ${f.code}`, width: f.plan.width, height: f.plan.height });
  const wrap = el('div.plan-wrap', { id: 'plan', class: placing() ? 'placing' : '', onclick: (e) => {
    if (!placing()) return;
    const r = img.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)); const y = Math.min(1, Math.max(0, (e.clientY - r.top) / r.height));
    const device = picked; picked = null;
    act(() => api(`/api/v1/floors/${f.id}/placements/${encodeURIComponent(device)}`, { method: 'PUT', body: { x, y } }), `${device} placed`).then(load);
  } }, img, f.devices.map(pin));
  return wrap;
}

function editor(f) {
  if (!can('assets.write')) return null;
  const placed = new Set(plans.floors.flatMap((x) => x.devices.map((d) => d.device)));
  const all = [...states.keys()].sort();
  const upload = el('input', { type: 'file', accept: 'image/png,image/jpeg', id: 'upload', onchange: async (e) => {
    const file = e.target.files[0]; if (!file) return;
    await act(() => api(`/api/v1/floors/${f.id}/plan`, { method: 'PUT', body: file, headers: { 'Content-Type': file.type } }), 'Plan uploaded');
    load();
  } });
  return el('section.card', {}, el('h3', {}, 'Edit this floor'),
    el('p', {}, el('label', {}, 'Plan image (PNG or JPEG): ', upload)),
    f.plan ? [el('p.small.muted', {}, picked ? `Click on the plan to put ${picked} there.` : 'Pick a device, then click its place on the plan. Placed devices can be picked again to move them.'),
      el('div.device-list', { id: 'devices' }, all.map((d) => el('button', { class: picked === d ? 'sel' : '', 'data-device': d, onclick: () => { picked = picked === d ? null : d; draw(); } },
        placed.has(d) ? `${d} ✓` : d))),
      picked && f.devices.some((d) => d.device === picked) ? el('button', { onclick: () => { const d = picked; picked = null; act(() => api(`/api/v1/floors/${f.id}/placements/${encodeURIComponent(d)}`, { method: 'DELETE' }), `${d} removed`).then(load); } }, `Take ${picked} off the plan`) : null] : null);
}

function addFloor() {
  if (!can('assets.write')) return null;
  const form = el('form.toolbar', { onsubmit: async (e) => {
    e.preventDefault();
    const body = { building: form.building.value.trim(), floor: form.floor.value.trim() };
    const lvl = form.level.value.trim(); if (lvl) body.level = Number(lvl);
    await act(() => api(`/api/v1/sites/${encodeURIComponent(site)}/locations`, { method: 'POST', body }), 'Floor added');
    load();
  } }, el('input', { name: 'building', placeholder: 'building code', required: true, size: 10 }), el('input', { name: 'floor', placeholder: 'floor code', required: true, size: 8 }),
  el('input', { name: 'level', placeholder: 'level', size: 4, inputmode: 'numeric' }), el('button', { type: 'submit' }, 'Add floor'));
  return el('section.card', {}, el('h3', {}, 'Add a building floor'), form);
}

function draw() {
  const floor = plans.floors.find((f) => f.id === floorId) || plans.floors[0] || null;
  floorId = floor ? floor.id : null; go();
  render(el('h1', {}, 'Buildings ', el('span.muted.small', {}, site)),
    el('div.toolbar', {}, el('select', { id: 'site', onchange: (e) => { site = e.target.value; floorId = null; load(); } }, window.SITES.map((s) => el('option', { value: s, selected: s === site }, s))),
      plans.floors.map((f) => el('button', { class: f.id === floorId ? 'primary' : '', 'data-floor': f.id, onclick: () => { floorId = f.id; picked = null; draw(); } }, `${f.building_name} · ${f.name}`))),
    floor ? el('div.cols', {}, el('div', {}, planView(floor)), el('div', {}, editor(floor), addFloor()))
      : el('div', {}, el('p.muted', {}, 'This site has no floors in the ledger yet.'), addFloor()));
}

async function load() {
  try {
    if (!window.SITES) window.SITES = (await api('/api/v1/sites')).map((s) => s.id);
    if (!site) site = window.SITES[0] || '';
    if (!site) { render(el('p.muted', {}, 'No sites yet.')); return; }
    [plans] = await Promise.all([api(`/api/v1/sites/${encodeURIComponent(site)}/floorplans`), loadStates()]);
    draw();
  } catch (e) { failed(e); }
}

const refreshStates = debounce(async () => { await loadStates(); if (plans) draw(); }, 300);
live({ hello: refreshStates, alarm: (ev) => { if (ev.site === site) refreshStates(); }, agent: refreshStates });
setInterval(refreshStates, 30000);
load();
