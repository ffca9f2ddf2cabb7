// The dashboard's shell: who is signed in, hash routing between the pages, live updates from
// the daemon's event stream, and a small read-only hook for browser tests.

import { get, ApiError, SigningIn } from './api.js';
import * as sweepsPage from './sweeps.js';
import * as sweepPage from './sweep.js';
import * as fleetPage from './fleet.js';
import { debounce, esc, tick } from './util.js';

/** For tests and curious people: what the page shows, read-only. */
const hook = {
  charts: {},
  visibleTrials: () => [],
  pageTrials: () => [],
  parallelLines: () => 0,
  brushed: () => ({}),
  /** Whether the page shows its data: for a sweep, the table and every plot drawn. */
  ready: () => pageReady,
  readyAt: null,
  refreshes: 0,
  events: 0,
  live: false,
  page: null,
  me: null,
};
window.__dashboard = hook;

const main = document.getElementById('main');
const ctx = {
  me: null,
  hook,
  setTitle: (t) => {
    document.title = `${t} · spotsweep`;
  },
  toast,
  markReady,
  run: (fn, opts = {}) =>
    Promise.resolve()
      .then(fn)
      .catch((e) => handleError(e, opts)),
};

// ------------------------------------------------------------------ messages
function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const t = document.createElement('div');
  t.className = `toast ${kind}`;
  t.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  t.textContent = message;
  t.addEventListener('click', () => t.remove());
  box.appendChild(t);
  setTimeout(() => t.remove(), kind === 'error' ? 10000 : 4000);
}

function handleError(e, { quiet = false } = {}) {
  if (e instanceof SigningIn) return;
  if (e instanceof ApiError) {
    if (!quiet) toast(e.message, 'error');
    return;
  }
  if (e && e.name === 'AbortError') return;
  // A network failure (the daemon restarting): the event stream's reconnect refetches.
  if (e instanceof TypeError && /fetch|network|load failed/i.test(e.message)) {
    setLive(false);
    return;
  }
  // A bug of the page: said where developers (and the browser tests) look.
  console.error(e);
  if (!quiet) toast(String((e && e.message) || e), 'error');
}

let pageReady = false;

function markReady() {
  if (pageReady) return;
  pageReady = true;
  hook.readyAt = performance.now();
  document.body.dataset.ready = '1';
}

// ------------------------------------------------------------------ routing
let current = null;
let currentKey = null;

function parseRoute() {
  const h = location.hash.replace(/^#/, '') || '/';
  const path = h.split('?')[0];
  const m = /^\/sweeps\/(\d+)\/?$/.exec(path);
  if (m) return { key: 'sweep:' + m[1], page: sweepPage, params: { id: m[1] }, nav: 'sweeps' };
  if (/^\/fleet\/?$/.test(path)) return { key: 'fleet', page: fleetPage, params: {}, nav: 'fleet' };
  if (path !== '/' && path !== '') history.replaceState(null, '', '#/');
  return { key: 'sweeps', page: sweepsPage, params: {}, nav: 'sweeps' };
}

function route() {
  const r = parseRoute();
  if (current && currentKey === r.key) return;
  if (current) current.destroy();
  pageReady = false;
  hook.readyAt = null;
  hook.routeAt = performance.now();
  delete document.body.dataset.ready;
  main.replaceChildren();
  for (const a of document.querySelectorAll('nav [data-nav]')) a.classList.toggle('active', a.dataset.nav === r.nav);
  currentKey = r.key;
  hook.route = r.key;
  hook.page = r.key.split(':')[0];
  current = r.page.mount(main, r.params, ctx);
  ctx.setTitle(current.title);
  window.scrollTo(0, 0);
  refreshPage(current);
}

/** Refetches what a page shows; one at a time per page, a request during one runs after it. */
function refreshPage(page) {
  if (page._busy) {
    page._again = true;
    return page._busy;
  }
  page._busy = (async () => {
    try {
      await page.refresh();
      hook.refreshes++;
      hook.lastRefreshAt = Date.now();
    } catch (e) {
      handleError(e);
      if (!pageReady && !(e instanceof SigningIn)) {
        main.insertAdjacentHTML('afterbegin', `<div class="card notice error">Could not load this page: ${esc(e.message || e)}</div>`);
        markReady();
      }
    } finally {
      page._busy = null;
      page._lastEnd = performance.now();
      if (page._again && page === current) {
        page._again = false;
        refreshPage(page);
      }
    }
  })();
  return page._busy;
}

// A burst of changes becomes one refetch; a page that is costly to draw (thousands of trials)
// asks for a gap between refetches.
let gapTimer = null;
const refreshSoon = debounce(() => {
  const page = current;
  if (!page || gapTimer) return;
  const gap = page.minGap ? page.minGap() : 0;
  const wait = (page._lastEnd || 0) + gap - performance.now();
  if (wait <= 0) return refreshPage(page);
  gapTimer = setTimeout(() => {
    gapTimer = null;
    if (page === current) refreshPage(page);
  }, wait);
}, 150);

// ------------------------------------------------------------------ live updates
let source = null;
let hadError = false;
let reconnectTimer = null;

function setLive(on) {
  hook.live = on;
  const dot = document.querySelector('[data-testid=live]');
  if (dot) {
    dot.classList.toggle('on', on);
    dot.title = on ? 'Live: the page updates as the daemon changes' : 'Reconnecting to the daemon…';
    dot.querySelector('.live-text').textContent = on ? 'live' : 'reconnecting';
  }
}

function connect() {
  clearTimeout(reconnectTimer);
  source = new EventSource('/api/v1/events');
  source.addEventListener('open', () => {
    setLive(true);
    if (hadError) {
      hadError = false;
      refreshSoon();
    }
  });
  source.addEventListener('change', (e) => {
    hook.events++;
    let change;
    try {
      change = JSON.parse(e.data);
    } catch {
      change = { all: true };
    }
    if (current && current.relevant(change)) refreshSoon();
  });
  source.addEventListener('error', () => {
    hadError = true;
    setLive(false);
    // The browser retries on its own unless the answer was not a stream (a 401, say).
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      reconnectTimer = setTimeout(async () => {
        try {
          await get('me'); // a 401 here goes to the sign-in page
        } catch (err) {
          if (err instanceof SigningIn) return;
        }
        connect();
      }, 3000);
    }
  });
}

// ------------------------------------------------------------------ start
function renderIdentity(me) {
  const ext = document.querySelector('nav a.ext');
  if (ext) ext.hidden = me.mlflow_ui === false;
  const who = document.getElementById('who');
  const scope = me.scope === 'write' ? '' : ' <span class="badge readonly" data-testid="read-only">read-only</span>';
  who.innerHTML = me.auth
    ? `<span class="who-name" title="Signed in with the token “${esc(me.name)}” (${esc(me.role)})">${esc(me.name)}</span>${scope}
       <button type="button" class="btn small ghost" data-testid="sign-out">Sign out</button>`
    : `<span class="muted" title="The daemon runs without authentication">no sign-in</span>${scope}`;
  const out = who.querySelector('[data-testid=sign-out]');
  if (out) {
    out.addEventListener('click', async () => {
      try {
        await fetch('/signout', { method: 'POST', credentials: 'same-origin', redirect: 'manual' });
      } finally {
        window.location.assign('/signin?next=/dashboard/');
      }
    });
  }
}

function boot() {
  // Who is signed in, asked alongside the page's own data: pages that show actions wait for it.
  ctx.meReady = get('me')
    .catch((e) => {
      if (e instanceof SigningIn) throw e;
      handleError(e);
      return { name: '?', role: 'user', scope: 'read', auth: true };
    })
    .then((me) => {
      ctx.me = me;
      hook.me = me;
      renderIdentity(me);
      return me;
    });
  ctx.meReady.catch(() => {});
  window.addEventListener('hashchange', route);
  route();
  connect();
  setInterval(() => tick(main), 1000);
  const resize = debounce(() => {
    for (const c of Object.values(hook.charts)) c.resize();
  }, 100);
  window.addEventListener('resize', resize);
}

boot();
