// The home page: every sweep with its state, progress, best value, cost and times; filters by
// state and name (the daemon filters; pages of 100 with "more").

import { get } from './api.js';
import { badge, debounce, esc, html, liveDuration, money, num, when, STATE_COLORS } from './util.js';

const STATES = ['running', 'paused', 'completed', 'cancelled'];

/** The progress bar of a sweep: done, running, waiting, failed, pruned. */
export function progressBar(s) {
  const c = s.counts || {};
  const total = Math.max(s.max_trials || 0, s.trials_created || 0, 1);
  const waiting = Math.max(0, (c.queued || 0) + (c.preempted || 0));
  const parts = [
    ['completed', c.completed || 0, 'done'],
    ['pruned', c.pruned || 0, 'pruned'],
    ['failed', c.failed || 0, 'failed'],
    ['running', c.running || 0, 'running'],
    ['queued', waiting, 'waiting'],
  ];
  const bar = parts
    .filter(([, n]) => n > 0)
    .map(([st, n]) => `<i style="width:${((100 * n) / total).toFixed(2)}%;background:${STATE_COLORS[st]}" title="${n} ${st === 'queued' ? 'waiting' : st}"></i>`)
    .join('');
  const finished = (c.completed || 0) + (c.pruned || 0) + (c.failed || 0) + (c.cancelled || 0);
  const legend = parts
    .filter(([, n]) => n > 0)
    .map(([st, n, label]) => `<span class="pc" data-count="${label}"><i style="background:${STATE_COLORS[st]}"></i>${n} ${label}</span>`)
    .join('');
  return `<div class="progress" title="${finished} of ${s.max_trials} trials finished"><div class="bar">${bar}</div>
    <div class="progress-legend"><span class="pc-total">${finished}/${s.max_trials}</span>${legend}</div></div>`;
}

/** The best value and its trial. */
export function bestText(s) {
  if (!s.best) return '<span class="muted">–</span>';
  return `<b>${esc(num(s.best.value, 5))}</b> <a class="muted" href="#/sweeps/${s.id}" data-best-trial="${s.best.number}">#${s.best.number}</a>`;
}

export function mount(root, _params, ctx) {
  const saved = new URLSearchParams((location.hash.split('?')[1] || ''));
  let stateFilter = saved.get('state') || '';
  let nameFilter = saved.get('name') || '';
  let sweeps = [];
  let nextToken = null;
  let pages = 1;
  let destroyed = false;

  const el = html(`<section class="page page-sweeps">
    <div class="page-head"><h1>Sweeps</h1>
      <div class="filters">
        <label class="sr" for="f-state">State</label>
        <select id="f-state" data-testid="state-filter"><option value="">All states</option>${STATES.map(
          (s) => `<option value="${s}">${s}</option>`,
        ).join('')}</select>
        <label class="sr" for="f-name">Name</label>
        <input id="f-name" type="search" placeholder="Filter by name" data-testid="name-filter" autocomplete="off">
      </div></div>
    <div class="card flush"><div class="table-scroll"><table class="list" data-testid="sweeps-table">
      <thead><tr><th>Sweep</th><th>State</th><th class="progress-col">Progress</th><th>Best</th><th class="num">Cost</th><th>Started</th><th class="num">Duration</th></tr></thead>
      <tbody></tbody></table></div>
      <div class="more" hidden><button type="button" class="btn" data-testid="more">Show more</button></div>
    </div></section>`);
  root.appendChild(el);
  const stateSel = el.querySelector('#f-state');
  const nameInput = el.querySelector('#f-name');
  stateSel.value = stateFilter;
  nameInput.value = nameFilter;
  const tbody = el.querySelector('tbody');

  function query(token) {
    const q = new URLSearchParams();
    if (stateFilter) q.set('state', stateFilter);
    if (nameFilter) q.set('name', nameFilter);
    q.set('max_results', '100');
    if (token) q.set('page_token', token);
    return 'sweeps?' + q.toString();
  }

  function render() {
    if (!sweeps.length) {
      tbody.innerHTML = `<tr class="empty"><td colspan="7">${
        stateFilter || nameFilter ? 'No sweep matches the filters.' : 'No sweeps yet. Start one with <code>spotsweep sweep create spec.yaml</code>.'
      }</td></tr>`;
    } else {
      tbody.innerHTML = sweeps
        .map(
          (s) => `<tr data-sweep="${s.id}" data-state="${esc(s.state)}">
        <td><a href="#/sweeps/${s.id}" class="strong">${esc(s.name)}</a><div class="sub">#${s.id} · ${esc(s.pool)} · ${esc(s.objective_metric)} (${esc(
          s.goal === 'maximize' ? 'max' : 'min',
        )})</div></td>
        <td>${badge(s.state)}</td>
        <td class="progress-col">${progressBar(s)}</td>
        <td>${bestText(s)}</td>
        <td class="num">${esc(money(s.cost_usd))}</td>
        <td>${esc(when(s.created_at))}</td>
        <td class="num">${s.finished_at ? liveDuration(s.created_at, s.finished_at) : liveDuration(s.created_at)}</td></tr>`,
        )
        .join('');
    }
    el.querySelector('.more').hidden = !nextToken;
  }

  let seq = 0;
  async function refresh() {
    // The pages shown, again (a live change may touch any of them); only the latest answer counts.
    const mine = ++seq;
    let all = [];
    let token = null;
    for (let i = 0; i < pages; i++) {
      const [r] = await Promise.all([get(query(token)), ctx.meReady]);
      all = all.concat(r.sweeps);
      token = r.next_page_token || null;
      if (!token) break;
    }
    if (destroyed || mine !== seq) return;
    sweeps = all;
    nextToken = token;
    render();
    ctx.markReady();
  }

  function keepInHash() {
    const q = new URLSearchParams();
    if (stateFilter) q.set('state', stateFilter);
    if (nameFilter) q.set('name', nameFilter);
    const h = '#/' + (q.toString() ? '?' + q : '');
    history.replaceState(null, '', h);
  }

  stateSel.addEventListener('change', () => {
    stateFilter = stateSel.value;
    pages = 1;
    keepInHash();
    ctx.run(refresh);
  });
  const onName = debounce(() => {
    nameFilter = nameInput.value.trim();
    pages = 1;
    keepInHash();
    ctx.run(refresh);
  }, 250);
  nameInput.addEventListener('input', onName);
  el.querySelector('[data-testid=more]').addEventListener('click', async () => {
    if (!nextToken) return;
    ctx.run(async () => {
      const mine = ++seq;
      const r = await get(query(nextToken));
      if (destroyed || mine !== seq) return;
      sweeps = sweeps.concat(r.sweeps);
      nextToken = r.next_page_token || null;
      pages++;
      render();
    });
  });

  return {
    title: 'Sweeps',
    refresh,
    relevant: (change) => (change.sweeps && change.sweeps.length > 0) || change.all,
    destroy() {
      destroyed = true;
      onName.cancel();
      el.remove();
    },
  };
}
