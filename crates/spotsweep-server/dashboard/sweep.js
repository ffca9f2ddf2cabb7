// A sweep: its summary and spec, the actions a writer may take, the trials table and the plots
// (optimization history, parallel coordinates with brushing that filters the table, parameter
// importance, slice, a pair plot, learning curves, the timeline of attempts).

import { get, post, ApiError, tableRows } from './api.js';
import { actionButtons, runAction } from './actions.js';
import { DataTable } from './table.js';
import { progressBar, bestText } from './sweeps.js';
import * as plots from './plots.js';
import {
  badge,
  debounce,
  duration,
  esc,
  html,
  liveDuration,
  money,
  num,
  paramText,
  store,
  throttle,
  when,
  TRIAL_STATES,
  FINISHED,
} from './util.js';

const TOP_K = [5, 10, 20, 50, 100];

export function mount(root, { id }, ctx) {
  const hook = ctx.hook;
  let destroyed = false;
  let sweep = null;
  let params = [];
  let dists = [];
  let rows = [];
  let lines = [];
  let searched = [];
  let attempts = [];
  let curves = null;
  let importance = null;
  let importanceAt = -1; // completed trials when importance was last fetched
  let importanceBroken = false;
  let topK = store.get('topk', 20);
  if (!TOP_K.includes(topK)) topK = 20;
  let logHistory = false;
  let logCurves = false;
  let sliceParam = null;
  let pairX = null;
  let pairY = null;
  const intervals = new Map(); // parallel axis id -> [[lo, hi], ...]
  const charts = {};
  let curvesTimer = null;
  let timelineTimer = null;

  const el = html(`<section class="page page-sweep" data-sweep="${esc(id)}">
    <div class="crumbs"><a href="#/">Sweeps</a> <span>/</span> <span class="crumb-name"></span></div>
    <div class="sweep-head"><div class="sweep-title"></div><div class="actions" data-testid="actions"></div></div>
    <div class="summary" data-testid="summary"></div>
    <details class="card spec"><summary>Spec</summary><pre data-testid="spec"></pre></details>
    <div class="grid">
      <div class="card"><div class="card-head"><h2>Optimization history</h2>
        <label class="check"><input type="checkbox" data-opt="log-history"> log scale</label></div>
        <div class="chart" data-testid="history"></div></div>
      <div class="card"><div class="card-head"><h2>Parameter importance</h2><span class="muted small imp-note"></span></div>
        <div class="chart" data-testid="importance"></div></div>
      <div class="card wide"><div class="card-head"><h2>Parallel coordinates</h2>
        <span class="muted small">Drag along an axis to select trials; click an axis to clear it.</span>
        <button type="button" class="btn small" data-testid="clear-brush" hidden>Clear selection</button></div>
        <div class="chart tall" data-testid="parallel"></div></div>
      <div class="card wide flush-body"><div class="card-head"><h2>Trials</h2>
        <div class="filters">
          <select data-testid="trial-state-filter" aria-label="State"><option value="">All states</option>${TRIAL_STATES.map(
            (s) => `<option value="${s}">${s}</option>`,
          ).join('')}</select>
          <input type="search" placeholder="Filter: #12, adam, vm-3…" data-testid="trial-filter" aria-label="Filter trials" autocomplete="off">
          <span class="cols"></span>
        </div></div>
        <div class="brush-note" data-testid="brush-note" hidden></div>
        <div class="trials"></div></div>
      <div class="card"><div class="card-head"><h2>Slice</h2><select data-opt="slice" aria-label="Parameter"></select></div>
        <div class="chart" data-testid="slice"></div></div>
      <div class="card"><div class="card-head"><h2>Parameter pair</h2>
        <span class="pair"><select data-opt="pair-x" aria-label="x"></select> × <select data-opt="pair-y" aria-label="y"></select></span></div>
        <div class="chart" data-testid="contour"></div></div>
      <div class="card wide"><div class="card-head"><h2>Learning curves</h2>
        <span class="curves-opts"><label>top <select data-opt="topk" aria-label="Top k">${TOP_K.map((k) => `<option value="${k}">${k}</option>`).join(
          '',
        )}</select></label>
        <label class="check"><input type="checkbox" data-opt="log-curves"> log scale</label></span></div>
        <div class="chart" data-testid="curves"></div></div>
      <div class="card wide"><div class="card-head"><h2>Timeline</h2><span class="legend">${plots.outcomeLegend()}</span></div>
        <div class="chart" data-testid="timeline"></div></div>
    </div></section>`);
  root.appendChild(el);
  const $ = (sel) => el.querySelector(sel);
  $('[data-opt=topk]').value = String(topK);

  // ---------------------------------------------------------------- the trials table
  const trialsTable = new DataTable({
    testid: 'trials-table',
    pageSize: 100,
    storeKey: 'trials',
    sort: { key: 'n', dir: 'asc' },
    empty: 'No trials match.',
    columns: [],
    rowAttrs: (t) => `data-trial="${t.n}" data-state="${esc(t.state)}"${sweep && sweep.best && sweep.best.number === t.n ? ' class="best"' : ''}`,
    onRender: () => {
      hook.tableVersion = (hook.tableVersion || 0) + 1;
    },
  });
  $('.trials').appendChild(trialsTable.el);

  function columns() {
    const exp = sweep ? sweep.experiment_id : '';
    const ui = !ctx.me || ctx.me.mlflow_ui !== false;
    const cols = [
      {
        key: 'n',
        label: '#',
        num: true,
        get: (t) => t.n,
        render: (t) =>
          t.rerun_of === null || t.rerun_of === undefined
            ? String(t.n)
            : `${t.n} <span class="muted small" data-testid="rerun-of" title="A rerun of trial ${t.rerun_of}: the same parameters, seed and code">↻${t.rerun_of}</span>`,
      },
      {
        key: 'state',
        label: 'State',
        get: (t) => t.state,
        render: (t) => badge(t.state, t.reason ? ` title="${esc(t.reason)}"` : ''),
      },
    ];
    params.forEach((name, i) => {
      const d = dists[i];
      const numeric = d && d.type !== 'categorical';
      cols.push({
        key: 'p:' + name,
        label: name,
        num: numeric,
        get: (t) => t.p[i],
        render: (t) => (t.p[i] === null || t.p[i] === undefined ? '<span class="muted">–</span>' : esc(paramText(t.p[i]))),
      });
    });
    cols.push(
      {
        key: 'value',
        label: sweep ? sweep.objective_metric : 'value',
        num: true,
        get: (t) => t.value,
        render: (t) =>
          t.value === null || t.value === undefined
            ? ''
            : `${esc(num(t.value, 6))}${t.state === 'pruned' && t.pruned_step !== null && t.pruned_step !== undefined ? ` <span class="muted small">@${t.pruned_step}</span>` : ''}`,
      },
      { key: 'attempts', label: 'Attempts', num: true, get: (t) => t.attempts, render: (t) => String(t.attempts ?? '') },
      {
        key: 'preemptions',
        label: 'Preemptions',
        num: true,
        get: (t) => t.preemptions,
        render: (t) => (t.preemptions ? `<b class="preempted">${t.preemptions}</b>` : '0'),
      },
      { key: 'agent', label: 'Agent / VM', get: (t) => t.agent, render: (t) => esc(t.agent || '') },
      { key: 'started', label: 'Started', hidden: true, get: (t) => t.started_at, render: (t) => esc(when(t.started_at)) },
      {
        key: 'duration',
        label: 'Duration',
        num: true,
        get: (t) => t.duration_ms,
        render: (t) =>
          t.state === 'running' && t.started_at && !t.finished_at ? liveDuration(t.started_at) : esc(duration(t.duration_ms)),
      },
      { key: 'cost', label: 'Cost', num: true, get: (t) => t.cost_usd, render: (t) => esc(money(t.cost_usd)) },
      {
        key: 'run',
        label: 'Run',
        get: (t) => t.run_id,
        render: (t) =>
          !t.run_id
            ? ''
            : ui
              ? `<a href="/#/experiments/${encodeURIComponent(exp)}/runs/${encodeURIComponent(t.run_id)}" target="_blank" rel="noopener" title="The trial's MLflow run">MLflow ↗</a>`
              : `<span class="mono muted" title="MLflow run ${esc(t.run_id)} (MLflow's UI is not served)">${esc(t.run_id.slice(0, 8))}</span>`,
      },
    );
    if (ctx.me && ctx.me.scope === 'write') {
      cols.push({
        key: 'rerun',
        label: 'Rerun',
        get: () => null,
        render: (t) =>
          FINISHED.includes(t.state)
            ? `<button type="button" class="btn small" data-rerun="${t.n}" title="Run trial ${t.n} again: the same parameters, seed and code, as a new trial">Rerun</button>`
            : '',
      });
    }
    return cols;
  }

  // A finished trial runs again as a new trial (never part of the search's plots).
  $('.trials').addEventListener('click', (e) => {
    const b = e.target.closest('[data-rerun]');
    if (!b) return;
    ctx.run(async () => {
      b.disabled = true;
      try {
        const t = await post(`sweeps/${id}/trials/${b.dataset.rerun}/rerun`);
        ctx.toast(`Trial ${t.number} queued: a rerun of trial ${t.rerun_of}.`);
        await refresh();
      } finally {
        b.disabled = false;
      }
    });
  });

  const stateSel = $('[data-testid=trial-state-filter]');
  const textInput = $('[data-testid=trial-filter]');
  stateSel.addEventListener('change', () => {
    const s = stateSel.value;
    trialsTable.setFilter('state', s ? (t) => t.state === s : null);
  });
  const onText = debounce(() => {
    const q = textInput.value.trim().toLowerCase();
    if (!q) return trialsTable.setFilter('text', null);
    const m = /^#(\d+)$/.exec(q);
    if (m) return trialsTable.setFilter('text', (t) => t.n === Number(m[1]));
    trialsTable.setFilter('text', (t) => t._s.includes(q));
  }, 120);
  textInput.addEventListener('input', onText);
  // The best trial's number (in the summary) shows that trial in the table.
  el.addEventListener('click', (e) => {
    const a = e.target.closest('[data-best-trial]');
    if (!a) return;
    e.preventDefault();
    textInput.value = '#' + a.dataset.bestTrial;
    onText();
    $('.trials').scrollIntoView({ behavior: 'smooth', block: 'start' });
  });

  // ---------------------------------------------------------------- charts
  // Charts still drawing (ECharts draws thousands of elements over several frames).
  const drawing = new Set();
  for (const name of ['history', 'importance', 'parallel', 'slice', 'contour', 'curves', 'timeline']) {
    const c = plots.makeChart($(`[data-testid=${name}]`));
    if (c) {
      charts[name] = c;
      hook.charts[name] = c;
      c.on('finished', () => drawing.delete(name));
    }
  }
  let timelineZoom = null;
  if (charts.timeline) {
    charts.timeline.on('datazoom', (e) => {
      const z = e.batch ? e.batch[0] : e;
      if (z && z.start !== undefined) timelineZoom = z.start === 0 && z.end === 100 ? null : { start: z.start, end: z.end };
    });
  }
  const brushNote = $('[data-testid=brush-note]');
  const clearBrush = $('[data-testid=clear-brush]');
  function applyBrush() {
    const pred = plots.brushPredicate(intervals, params, dists);
    trialsTable.setFilter('brush', pred);
    const active = !!pred;
    clearBrush.hidden = !active;
    brushNote.hidden = !active;
    if (active) {
      const n = trialsTable.view().length;
      const axes = [...intervals.entries()].filter(([, v]) => v && v.length).map(([k]) => (k === 'objective' ? sweep.objective_metric : k.slice(6)));
      brushNote.textContent = `Showing the ${n.toLocaleString()} trial${n === 1 ? '' : 's'} selected on ${axes.join(', ')} in the parallel coordinates.`;
    }
  }
  const applyBrushSoon = throttle(applyBrush, 50);
  if (charts.parallel) {
    charts.parallel.on('axisareaselected', (e) => {
      drawing.add('parallel');
      lastBrush = performance.now();
      if (!e.parallelAxisId) return;
      if (e.intervals && e.intervals.length) intervals.set(e.parallelAxisId, e.intervals);
      else intervals.delete(e.parallelAxisId);
      applyBrushSoon();
    });
  }
  clearBrush.addEventListener('click', () => {
    for (const axis of [...intervals.keys()]) {
      charts.parallel.dispatchAction({ type: 'axisAreaSelect', parallelAxisId: axis, intervals: [] });
    }
    intervals.clear();
    applyBrush();
  });

  el.addEventListener('change', (e) => {
    const opt = e.target.dataset.opt;
    if (!opt) return;
    if (opt === 'log-history') {
      logHistory = e.target.checked;
      drawHistory();
    } else if (opt === 'log-curves') {
      logCurves = e.target.checked;
      drawCurves();
    } else if (opt === 'slice') {
      sliceParam = e.target.value;
      drawSlice();
    } else if (opt === 'pair-x' || opt === 'pair-y') {
      if (opt === 'pair-x') pairX = e.target.value;
      else pairY = e.target.value;
      drawContour();
    } else if (opt === 'topk') {
      topK = Number(e.target.value);
      store.set('topk', topK);
      ctx.run(fetchCurves);
    }
  });

  function set(name, option, opts) {
    const c = charts[name];
    const t = performance.now();
    if (c) {
      drawing.add(name);
      c.setOption(option, opts);
    }
    (hook.timing = hook.timing || {})[name] = performance.now() - t;
  }

  function empty(name, text) {
    const c = charts[name];
    if (!c) return;
    c.clear();
    c.setOption({ title: { text, left: 'center', top: 'middle', textStyle: { color: '#8b95a1', fontSize: 13, fontWeight: 'normal' } } });
  }

  const metric = () => (sweep ? sweep.objective_metric : 'value');
  const goal = () => (sweep ? sweep.goal : 'minimize');

  function drawHistory() {
    const box = $('[data-opt=log-history]');
    const canLog = searched.every((t) => t.value === null || t.value === undefined || t.value > 0);
    box.disabled = !canLog;
    box.parentElement.title = canLog ? '' : 'Some values are 0 or below';
    if (!lines.length && !searched.some((t) => t.state === 'pruned' && t.value !== null)) return empty('history', 'No finished trials yet');
    set('history', plots.historyOption({ trials: searched, params, metric: metric(), goal: goal(), logY: logHistory && canLog }), { notMerge: true });
  }

  let parallelShown = false;
  function drawParallel() {
    if (!lines.length) {
      parallelShown = false;
      return empty('parallel', 'No completed trials yet');
    }
    // Merged (not replaced): the axes keep their brushed intervals.
    const narrow = charts.parallel ? charts.parallel.getWidth() < 640 : false;
    const option = plots.parallelOption({ lines, params, dists, metric: metric(), goal: goal(), narrow });
    if (!parallelShown && charts.parallel) charts.parallel.clear();
    set('parallel', option, { replaceMerge: ['series'] });
    parallelShown = true;
  }

  function drawSlice() {
    if (!params.length || !lines.length) return empty('slice', 'No completed trials yet');
    set('slice', plots.sliceOption({ lines, params, dists, metric: metric(), param: sliceParam }), { notMerge: true });
  }

  function drawContour() {
    if (params.length < 2) return empty('contour', 'One parameter only');
    if (!lines.length) return empty('contour', 'No completed trials yet');
    set('contour', plots.contourOption({ lines, params, dists, metric: metric(), goal: goal(), x: pairX, y: pairY }), { notMerge: true });
  }

  function drawImportance() {
    const note = $('.imp-note');
    if (importanceBroken) {
      note.textContent = '';
      return empty('importance', importanceBroken);
    }
    if (!importance || !importance.importances.length) {
      note.textContent = '';
      return empty('importance', 'Needs at least 2 completed trials');
    }
    note.textContent = `${importance.method}, ${importance.trials} trials`;
    set('importance', plots.importanceOption(importance), { notMerge: true });
  }

  function drawCurves() {
    if (!curves || !curves.curves.length) return empty('curves', 'No intermediate values logged');
    const canLog = curves.curves.every((c) => c.values.every((v) => v > 0));
    const box = $('[data-opt=log-curves]');
    box.disabled = !canLog;
    set('curves', plots.curvesOption({ curves, metric: metric(), logY: logCurves && canLog }), { notMerge: true });
  }

  function drawTimeline() {
    const box = $('[data-testid=timeline]');
    if (!attempts.length) {
      box.style.height = '';
      charts.timeline && charts.timeline.resize();
      return empty('timeline', 'No attempts yet');
    }
    const agents = new Set(attempts.map((a) => a.agent)).size;
    const h = Math.max(150, Math.min(640, agents * 26 + 76));
    if (box.style.height !== h + 'px') {
      box.style.height = h + 'px';
      charts.timeline && charts.timeline.resize();
    }
    // Replaced, but keeping the zoom the user chose.
    const option = plots.timelineOption({ attempts, now: Date.now() });
    if (timelineZoom) {
      option.dataZoom[0].start = option.dataZoom[1].start = timelineZoom.start;
      option.dataZoom[0].end = option.dataZoom[1].end = timelineZoom.end;
    }
    set('timeline', option, { notMerge: true });
    // Open attempts grow with the clock.
    clearTimeout(timelineTimer);
    if (attempts.some((a) => !a.ended_at) && !destroyed) {
      timelineTimer = setTimeout(() => redraw('timeline'), attempts.length > 3000 ? 10000 : 2000);
    }
  }

  function fillSelect(sel, current) {
    const opts = params.map((p) => `<option value="${esc(p)}">${esc(p)}</option>`).join('');
    if (sel.dataset.for !== params.join('\u0000')) {
      sel.innerHTML = opts;
      sel.dataset.for = params.join('\u0000');
    }
    sel.value = current;
  }

  // ---------------------------------------------------------------- drawing
  // Charts in view are drawn first, a few per frame, so that the page is interactive soon with
  // thousands of trials (it is "ready" then); the others follow one at a time when the browser
  // is idle, or at once when scrolled into view.
  const drawers = {
    history: drawHistory,
    importance: drawImportance,
    parallel: drawParallel,
    slice: drawSlice,
    contour: drawContour,
    curves: drawCurves,
    timeline: drawTimeline,
  };
  const ORDER = Object.keys(drawers);
  const dirty = new Set();
  const inView = new Set();
  let frame = 0;
  let idle = 0;
  let lastBrush = -Infinity;
  let loaded = false; // the first refresh has fetched everything
  function redraw(...names) {
    for (const n of names) dirty.add(n);
    pump();
  }
  function drawOne(name) {
    dirty.delete(name);
    drawers[name]();
  }
  const nextInView = () => ORDER.find((n) => dirty.has(n) && inView.has(n));
  function pump() {
    if (destroyed) return;
    if (nextInView()) {
      if (!frame) {
        frame = requestAnimationFrame(() => {
          frame = 0;
          if (destroyed) return;
          // As many as fit in ~40 ms, then the next frame (input is handled in between).
          const start = performance.now();
          let name;
          while ((name = nextInView()) && performance.now() - start < 40) drawOne(name);
          pump();
        });
      }
      return;
    }
    if (loaded) ctx.markReady();
    if (dirty.size && !idle && !frame) {
      const later = window.requestIdleCallback ? (f, o) => window.requestIdleCallback(f, o) : (f) => setTimeout(f, 30);
      idle = later(
        () => {
          idle = 0;
          if (destroyed) return;
          // Not while the user is brushing: ECharts redraws the lines in the next frames.
          const since = performance.now() - lastBrush;
          if (since < 400) {
            idle = setTimeout(() => {
              idle = 0;
              pump();
            }, 400 - since);
            return;
          }
          const name = ORDER.find((n) => dirty.has(n));
          if (name && !nextInView()) drawOne(name);
          pump();
        },
        { timeout: 1000 },
      );
    }
  }
  const observer = new IntersectionObserver(
    (entries) => {
      for (const e of entries) {
        const name = e.target.dataset.testid;
        if (e.isIntersecting) inView.add(name);
        else inView.delete(name);
      }
      pump();
    },
    { rootMargin: '200px 0px' },
  );
  for (const name of ORDER) observer.observe($(`[data-testid=${name}]`));
  /** Whether every plot is drawn (those out of view are drawn after the page is ready). */
  hook.drawn = () => loaded && dirty.size === 0;
  /** Whether every plot is drawn and ECharts has finished drawing it. */
  hook.settled = () => hook.drawn() && drawing.size === 0;

  // ---------------------------------------------------------------- header
  function renderHead() {
    const s = sweep;
    $('.crumb-name').textContent = s.name;
    const spec = s.spec || {};
    const sampler = spec.sampler ? spec.sampler.type || 'random' : 'random';
    const pruner = spec.pruner && spec.pruner.type ? spec.pruner.type : null;
    $('.sweep-title').innerHTML = `<h1>${esc(s.name)} ${badge(s.state, ' data-testid="sweep-state"')}</h1>
      <div class="sub">#${s.id} · pool <b>${esc(s.pool)}</b> · ${esc(sampler)} sampler${pruner ? ` · ${esc(pruner)} pruner` : ''} · ${esc(
      s.goal,
    )} <b>${esc(s.objective_metric)}</b> ${
      ctx.me && ctx.me.mlflow_ui === false
        ? ` · experiment ${esc(s.experiment_id)}`
        : ` · <a href="/#/experiments/${encodeURIComponent(s.experiment_id)}" target="_blank" rel="noopener">MLflow experiment ↗</a>`
    }</div>`;
    $('.actions').innerHTML = actionButtons(s, ctx.me);
    const c = s.counts || {};
    $('.summary').innerHTML = `
      <div class="stat grow"><div class="label">Progress</div>${progressBar(s)}</div>
      <div class="stat"><div class="label">Best ${esc(s.objective_metric)}</div><div class="value" data-testid="best">${bestText(s)}</div></div>
      <div class="stat"><div class="label">Trials</div><div class="value">${s.trials_created} <span class="muted">/ ${s.max_trials}</span></div></div>
      <div class="stat"><div class="label">Preempted</div><div class="value">${c.preempted || 0}</div></div>
      <div class="stat"><div class="label">Cost so far</div><div class="value" data-testid="cost">${esc(money(s.cost_usd))}</div></div>
      <div class="stat"><div class="label">Started</div><div class="value small">${esc(when(s.created_at))}</div></div>
      <div class="stat"><div class="label">Duration</div><div class="value">${s.finished_at ? liveDuration(s.created_at, s.finished_at) : liveDuration(s.created_at)}</div></div>`;
    if (s.spec) $('[data-testid=spec]').textContent = JSON.stringify(s.spec, null, 2);
    ctx.setTitle(s.name);
  }

  el.querySelector('.actions').addEventListener('click', (e) => {
    const b = e.target.closest('[data-action]');
    if (!b || !sweep) return;
    ctx.run(async () => {
      b.disabled = true;
      try {
        const r = await runAction(b.dataset.action, sweep);
        if (!r || destroyed) return;
        if (r.navigate) {
          location.hash = r.navigate;
          return;
        }
        if (r.sweep) {
          sweep = { ...r.sweep, spec: r.sweep.spec || sweep.spec };
          renderHead();
        }
        if (r.trial) ctx.toast(`Trial ${r.trial.number ?? ''} queued.`);
        await refresh();
      } finally {
        b.disabled = false;
      }
    });
  });

  // ---------------------------------------------------------------- data
  function setTable(t) {
    const changedParams = t.params.join('\u0000') !== params.join('\u0000');
    params = t.params;
    const specParams = (sweep.spec && sweep.spec.parameters) || {};
    dists = params.map((p) => specParams[p] || null);
    rows = t.trials;
    for (const r of rows) {
      r._s = `#${r.n} ${r.state} ${r.agent || ''} ${r.p.map((v) => (v === null ? '' : String(v))).join(' ')} ${r.reason || ''}`.toLowerCase();
    }
    // Reruns repeat points of the search: the plots show the search alone.
    searched = rows.filter((r) => r.rerun_of === null || r.rerun_of === undefined);
    lines = searched.filter((r) => r.state === 'completed' && r.value !== null && r.value !== undefined);
    if (changedParams || !trialsTable.columns.length) {
      trialsTable.setColumns(columns(), false);
      if (!trialsTable.refreshMenu) $('.cols').appendChild(trialsTable.columnMenu());
      if (!params.includes(sliceParam)) sliceParam = params[0] || null;
      if (!params.includes(pairX)) pairX = params[0] || null;
      if (!params.includes(pairY) || pairY === pairX) pairY = params[1] || params[0] || null;
      fillSelect($('[data-opt=slice]'), sliceParam);
      fillSelect($('[data-opt=pair-x]'), pairX);
      fillSelect($('[data-opt=pair-y]'), pairY);
    } else {
      trialsTable.columns = columns(); // the same keys; renderers see the new sweep
    }
    // The brush filter is over the new rows.
    const pred = plots.brushPredicate(intervals, params, dists);
    trialsTable.setFilter('brush', pred, false);
    trialsTable.setRows(rows);
    applyBrush();
    redraw('history', 'parallel', 'slice', 'contour');
  }

  async function fetchCurves() {
    const c = await get(`sweeps/${id}/curves?top=${topK}`);
    if (destroyed) return;
    curves = c;
    redraw('curves');
    // Metric logs are not announced: while trials run, their curves are polled.
    clearTimeout(curvesTimer);
    if (rows.some((r) => r.state === 'running') && !destroyed) {
      curvesTimer = setTimeout(() => ctx.run(fetchCurves, { quiet: true }), 3000);
    }
  }

  async function fetchImportance() {
    const done = (sweep.counts && sweep.counts.completed) || 0;
    if (importanceBroken || done < 2 || done === importanceAt) return;
    importanceAt = done;
    try {
      importance = await get(`sweeps/${id}/importance`);
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      importanceBroken = e.message || 'Importance is not available';
    }
    if (!destroyed) redraw('importance');
  }

  async function refresh() {
    const [s, t, a] = await Promise.all([
      get(`sweeps/${id}`),
      get(`sweeps/${id}/table`),
      get(`sweeps/${id}/attempts`),
      ctx.meReady,
    ]);
    if (destroyed) return;
    hook.fetchedAt = performance.now();
    sweep = s;
    renderHead();
    setTable(tableRows(t));
    attempts = a.attempts;
    redraw('timeline');
    if (importanceAt < 0 && ((s.counts && s.counts.completed) || 0) < 2) redraw('importance');
    hook.sweep = { id: s.id, state: s.state };
    // Curves and importance are drawn once they come; the table is usable before.
    await Promise.all([fetchCurves(), fetchImportance()]);
    loaded = true;
    pump();
  }

  hook.visibleTrials = () => trialsTable.view().map((t) => t.n);
  hook.pageTrials = () => trialsTable.pageRows().map((t) => t.n);
  hook.parallelLines = () => lines.length;
  hook.brushed = () => Object.fromEntries(intervals);
  /**
   * Selects a range on a parameter's axis of the parallel coordinates (the objective's with its
   * metric name or 'objective'), as a drag would; resolves once the table shows the selection.
   */
  hook.brush = async (axis, range) => {
    const id = params.includes(axis) ? 'param:' + axis : 'objective';
    charts.parallel.dispatchAction({ type: 'axisAreaSelect', parallelAxisId: id, intervals: range ? [range] : [] });
    applyBrushSoon.flush();
  };

  return {
    title: 'Sweep',
    refresh,
    minGap: () => (rows.length > 2000 ? 1000 : 0),
    relevant: (change) => change.all || (change.sweeps || []).includes(Number(id)),
    destroy() {
      destroyed = true;
      observer.disconnect();
      cancelAnimationFrame(frame);
      if (idle && window.cancelIdleCallback) window.cancelIdleCallback(idle);
      clearTimeout(idle);
      delete hook.drawn;
      delete hook.settled;
      clearTimeout(curvesTimer);
      clearTimeout(timelineTimer);
      onText.cancel();
      for (const [name, c] of Object.entries(charts)) {
        c.dispose();
        delete hook.charts[name];
      }
      hook.visibleTrials = () => [];
      hook.pageTrials = () => [];
      hook.parallelLines = () => 0;
      delete hook.brush;
      el.remove();
    },
  };
}
