// The login form: POST /api/v1/auth/login sets the session cookie; then on to ?next= (same site only).
const form = document.getElementById('login');
const error = document.getElementById('error');

function target() {
  const next = new URLSearchParams(location.search).get('next') || '/';
  // Only a path on this site: never an absolute URL an attacker put in a link.
  return next.startsWith('/') && !next.startsWith('//') ? next : '/';
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  error.textContent = '';
  const body = { user: form.user.value.trim(), password: form.password.value };
  try {
    const r = await fetch('/api/v1/auth/login', { method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    if (r.ok) { location.assign(target()); return; }
    let detail = `login failed (${r.status})`;
    try { const j = await r.json(); if (j.detail) detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail); } catch { /* not JSON */ }
    error.textContent = detail;
  } catch (err) {
    error.textContent = `cannot reach the server: ${err}`;
  }
});
