// Shared by every dashboard view: the caller, JSON fetches, the live stream, small DOM helpers.
export const me = JSON.parse(document.getElementById('principal')?.textContent || '{}');
export const can = (permission) => (me.can || []).includes(permission);
export const app = document.getElementById('app');

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// fetch + JSON with the session cookie. A 401 means the session ended: back to the login page.
export async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined && !(body instanceof Blob)) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  } else if (body !== undefined) {
    init.body = body;
  }
  // Routes written before sign-in existed name the actor in this header; the server trusts the session.
  if (method !== 'GET' && me.user) init.headers['X-Vigil-User'] = me.user;
  const r = await fetch(path, init);
  if (r.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, 'not logged in');
  }
  if (!r.ok) {
    let detail = `${method} ${path}: HTTP ${r.status}`;
    try { const j = await r.json(); if (j.detail) detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail); } catch { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  if (raw || r.status === 204) return r;
  return r.json();
}

// Live events from /api/v1/stream. handlers: { alarm(ev), workorder(ev), ..., hello(ev) }.
// EventSource reconnects by itself; on each (re)connect `hello` arrives and views refetch.
export function live(handlers) {
  const dot = document.getElementById('live');
  const es = new EventSource('/api/v1/stream');
  const types = new Set([...Object.keys(handlers), 'hello', 'resync']);
  for (const type of types) {
    es.addEventListener(type, (msg) => {
      const ev = JSON.parse(msg.data);
      if (type === 'hello' && dot) {
        dot.className = 'live ' + (ev.live ? 'on' : 'off');
        dot.title = ev.live ? 'live: connected to the bus' : 'connected, but the API has no bus feed';
      }
      if (type === 'resync' && handlers.hello) handlers.hello(ev);
      if (handlers[type]) handlers[type](ev);
    });
  }
  es.onerror = () => { if (dot) { dot.className = 'live off'; dot.title = 'reconnecting…'; } };
  window.addEventListener('pagehide', () => es.close());
  return es;
}

// el('div.card', {onclick}, child, ...): a tiny hyperscript; strings become text (never HTML).
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split('.');
  const node = document.createElement(tag || 'div');
  if (classes.length) node.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className += (node.className ? ' ' : '') + v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function toast(text, bad = false) {
  const t = el('div.toast', { class: bad ? 'bad' : '', role: 'status' }, text);
  document.body.append(t);
  setTimeout(() => t.remove(), bad ? 6000 : 2500);
}

// Run an action; show its error instead of failing silently.
export async function act(fn, done) {
  try { const r = await fn(); if (done) toast(done); return r; } catch (e) { if (e.status !== 401) toast(e.message, true); return undefined; }
}

export function ago(ms, now = Date.now()) {
  const s = Math.round((now - ms) / 1000);
  if (s < 0) return 'in the future';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

export function duration(ms) {
  const neg = ms < 0; let s = Math.abs(Math.round(ms / 1000));
  const d = Math.floor(s / 86400); s %= 86400; const h = Math.floor(s / 3600); s %= 3600; const m = Math.floor(s / 60); s %= 60;
  const txt = d ? `${d}d ${h}h` : h ? `${h}h ${String(m).padStart(2, '0')}m` : `${m}m ${String(s).padStart(2, '0')}s`;
  return neg ? `-${txt}` : txt;
}

export const time = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
export const label = (s) => String(s ?? '').replaceAll('_', ' ');

export function render(...nodes) { app.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false)); }

export function failed(e) { render(el('p.error', {}, `Could not load: ${e.message}`)); }

// A debounced refetch: many live events in a burst cause one reload of the view's data.
export function debounce(fn, ms = 250) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

document.getElementById('logout')?.addEventListener('click', async () => {
  try { await fetch('/api/v1/auth/logout', { method: 'POST', credentials: 'same-origin' }); } finally { location.assign('/login'); }
});
