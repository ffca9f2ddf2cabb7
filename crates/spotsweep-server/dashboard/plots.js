// The sweep page's charts, as ECharts options built from the trials table (plain arrays).
// Everything drawn is ECharts' own: scatter, line, parallel (with its axis brushing), bar,
// custom (the timeline).

import { STATE_COLORS, OUTCOME_STATE, esc, num, paramText, duration, when } from './util.js';

const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
const AXIS = '#8b95a1';
const TEXT = '#3b4450';
/** Objective colours, from the best value to the worst. */
const GOOD_TO_BAD = ['#173f73', '#3b78c2', '#9cc3ea', '#e3edf8'];

/** A chart in `el`, or a notice where the chart library did not load. */
export function makeChart(el) {
  if (!window.echarts) {
    el.innerHTML =
      '<div class="notice">The chart library (ECharts) is missing from this build of spotsweep; ' +
      'rebuild it with npm on the PATH, or with SPOTSWEEP_ECHARTS_TGZ pointing at echarts-6.1.0.tgz.</div>';
    return null;
  }
  return window.echarts.init(el, null, { renderer: 'canvas' });
}

function base(big) {
  return {
    animation: !big,
    animationDuration: 300,
    animationDurationUpdate: 300,
    textStyle: { fontFamily: FONT, color: TEXT },
    color: ['#2f6fd6', '#2f9e5b', '#d4951c', '#8a5cd0', '#d64545', '#4f5761'],
  };
}

function valueAxis(extra = {}) {
  return {
    type: 'value',
    scale: true,
    // At the edge of the plot, not through zero.
    axisLine: { onZero: false, lineStyle: { color: AXIS } },
    axisLabel: { color: TEXT, fontSize: 11 },
    splitLine: { lineStyle: { color: '#eef0f3' } },
    nameTextStyle: { color: TEXT, fontSize: 11 },
    ...extra,
  };
}

/** The axis of a parameter: log where the spec samples it log-uniformly, categories for choices. */
export function paramAxis(dist, extra = {}) {
  if (!dist) return valueAxis(extra);
  if (dist.type === 'categorical') {
    return {
      type: 'category',
      data: dist.choices.map(String),
      axisLine: { onZero: false, lineStyle: { color: AXIS } },
      axisLabel: { color: TEXT, fontSize: 11 },
      nameTextStyle: { color: TEXT, fontSize: 11 },
      ...extra,
    };
  }
  return valueAxis({
    type: dist.log ? 'log' : 'value',
    scale: false,
    min: dist.low,
    max: dist.high,
    minInterval: dist.type === 'int' && !dist.log ? 1 : undefined,
    ...extra,
  });
}

/** A parameter's value as the chart wants it (categories by name). */
export function paramValue(dist, v) {
  if (v === null || v === undefined) return null;
  if (dist && dist.type === 'categorical') return String(v);
  return v;
}

function goodToBad(goal) {
  return goal === 'maximize' ? [...GOOD_TO_BAD].reverse() : GOOD_TO_BAD;
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo - 1e-9, hi + 1e-9];
  return [lo, hi];
}

function trialTooltip(t, params, metric) {
  const rows = [`<b>trial ${t.n}</b> <span style="color:${STATE_COLORS[t.state] || TEXT}">${esc(t.state)}</span>`];
  if (t.value !== null && t.value !== undefined) rows.push(`${esc(metric)}: <b>${esc(num(t.value, 6))}</b>`);
  params.forEach((name, i) => {
    if (t.p[i] !== null && t.p[i] !== undefined) rows.push(`${esc(name)}: ${esc(paramText(t.p[i]))}`);
  });
  return rows.join('<br>');
}

/** Objective per trial (completed ones, and pruned ones at their last value), best-so-far line. */
export function historyOption({ trials, params, metric, goal, logY }) {
  const done = [];
  const pruned = [];
  for (const t of trials) {
    if (t.value === null || t.value === undefined) continue;
    if (t.state === 'completed') done.push(t);
    else if (t.state === 'pruned') pruned.push(t);
  }
  done.sort((a, b) => a.n - b.n);
  const best = [];
  let b = null;
  for (const t of done) {
    if (b === null || (goal === 'maximize' ? t.value > b : t.value < b)) b = t.value;
    best.push([t.n, b]);
  }
  if (best.length) {
    const last = trials.reduce((m, t) => Math.max(m, t.n), 0);
    if (last > best[best.length - 1][0]) best.push([last, b]);
  }
  const big = done.length + pruned.length > 3000;
  const point = (t) => [t.n, t.value];
  const source = { completed: done, pruned };
  return {
    ...base(big),
    grid: { left: 64, right: 24, top: 36, bottom: 42 },
    legend: {
      top: 0,
      right: 8,
      itemWidth: 12,
      itemHeight: 8,
      textStyle: { fontSize: 11 },
      data: [done.length ? 'completed' : null, pruned.length ? 'pruned' : null, 'best so far'].filter(Boolean),
    },
    tooltip: {
      trigger: 'item',
      confine: true,
      formatter: (p) =>
        source[p.seriesId] ? trialTooltip(source[p.seriesId][p.dataIndex], params, metric) : `best so far: ${esc(num(p.value[1], 6))}`,
    },
    xAxis: valueAxis({ name: 'trial', nameLocation: 'middle', nameGap: 26, min: 0, minInterval: 1, scale: false }),
    yAxis: valueAxis({ type: logY ? 'log' : 'value', name: metric }),
    dataZoom: [{ type: 'inside', xAxisIndex: 0, filterMode: 'none', zoomOnMouseWheel: 'ctrl' }],
    series: [
      {
        id: 'completed',
        name: 'completed',
        type: 'scatter',
        symbolSize: big ? 3 : 6,
        large: big,
        itemStyle: { color: STATE_COLORS.completed, opacity: 0.8 },
        data: done.map(point),
      },
      {
        id: 'pruned',
        name: 'pruned',
        type: 'scatter',
        symbolSize: big ? 3 : 5,
        large: big,
        itemStyle: { color: STATE_COLORS.pruned, opacity: 0.6 },
        data: pruned.map(point),
      },
      {
        id: 'best',
        name: 'best so far',
        type: 'line',
        step: 'end',
        showSymbol: false,
        lineStyle: { color: '#1f2933', width: 1.5 },
        itemStyle: { color: '#1f2933' },
        data: best,
        z: 3,
      },
    ],
  };
}

/** The parallel axes' ids: one per parameter, then the objective. */
export function axisId(i, params) {
  return i < params.length ? 'param:' + params[i] : 'objective';
}

/** Parallel coordinates over the parameters and the objective: one line per completed trial. */
export function parallelOption({ lines, params, dists, metric, goal, narrow = false }) {
  const values = lines.map((t) => t.value);
  const [lo, hi] = extent(values);
  const big = lines.length > 2000;
  const axes = params.map((name, i) => {
    const d = dists[i];
    const ax = paramAxis(d, { id: axisId(i, params), dim: i, name });
    delete ax.splitLine;
    return ax;
  });
  axes.push({ ...valueAxis({ id: 'objective', dim: params.length, name: metric }), splitLine: undefined });
  return {
    ...base(big),
    parallel: {
      left: narrow ? 36 : 48,
      right: narrow ? 40 : 96,
      top: 44,
      bottom: 28,
      parallelAxisDefault: {
        nameLocation: 'end',
        nameGap: 14,
        nameTextStyle: { color: TEXT, fontSize: 11, fontWeight: 600 },
        axisLine: { lineStyle: { color: AXIS } },
        axisLabel: { color: TEXT, fontSize: 10 },
        realtime: true,
        areaSelectStyle: { width: 18, borderWidth: 1, borderColor: '#2f6fd6', color: '#2f6fd6', opacity: 0.18 },
      },
    },
    parallelAxis: axes,
    visualMap: {
      type: 'continuous',
      show: !narrow,
      dimension: params.length,
      min: lo,
      max: hi,
      inRange: { color: goodToBad(goal) },
      right: 8,
      top: 'middle',
      itemHeight: 120,
      itemWidth: 10,
      text: [goal === 'maximize' ? 'best' : 'worst', goal === 'maximize' ? 'worst' : 'best'],
      textStyle: { fontSize: 10, color: TEXT },
      calculable: false,
      seriesIndex: 0,
    },
    tooltip: { show: false },
    series: [
      {
        id: 'lines',
        type: 'parallel',
        lineStyle: { width: big ? 0.6 : 1.2, opacity: big ? 0.35 : 0.7 },
        inactiveOpacity: 0.03,
        activeOpacity: 0.9,
        // Thousands of lines are drawn (and redrawn after a brush) 250 a frame: the page answers
        // a brush at once, and the lines follow within a few frames.
        progressive: 250,
        progressiveThreshold: 1000,
        smooth: false,
        data: lines.map((t) => [...t.p.map((v, i) => paramValue(dists[i], v)), t.value]),
      },
    ],
  };
}

/** Whether a trial passes the parallel chart's brushes (intervals by axis id). */
export function brushPredicate(intervals, params, dists) {
  const checks = [];
  for (const [id, ivs] of intervals) {
    if (!ivs || !ivs.length) continue;
    const i = id === 'objective' ? params.length : params.indexOf(id.slice('param:'.length));
    if (i < 0) continue;
    const d = i < params.length ? dists[i] : null;
    const cats = d && d.type === 'categorical' ? d.choices.map(String) : null;
    checks.push((t) => {
      let v = i < params.length ? t.p[i] : t.value;
      if (v === null || v === undefined) return false;
      if (cats) {
        v = cats.indexOf(String(v));
        if (v < 0) return false;
      }
      for (const [a, b] of ivs) if (Math.min(a, b) <= v && v <= Math.max(a, b)) return true;
      return false;
    });
  }
  if (!checks.length) return null;
  return (t) => t.state === 'completed' && t.value !== null && t.value !== undefined && checks.every((c) => c(t));
}

/** Parameter importance: a bar per parameter, the most important on top. */
export function importanceOption(imp) {
  const items = [...imp.importances].reverse();
  return {
    ...base(false),
    grid: { left: 8, right: 48, top: 8, bottom: 28, outerBoundsMode: 'same', outerBoundsContain: 'axisLabel' },
    tooltip: { trigger: 'item', formatter: (p) => `${esc(p.name)}: ${(p.value * 100).toFixed(1)}%` },
    xAxis: valueAxis({ min: 0, max: 1, scale: false, axisLabel: { formatter: (v) => `${Math.round(v * 100)}%`, fontSize: 11 } }),
    yAxis: { type: 'category', data: items.map((x) => x.param), axisLabel: { color: TEXT, fontSize: 11 }, axisLine: { lineStyle: { color: AXIS } } },
    series: [
      {
        id: 'importance',
        type: 'bar',
        data: items.map((x) => x.importance),
        barMaxWidth: 22,
        itemStyle: { color: '#3b78c2', borderRadius: [0, 3, 3, 0] },
        label: { show: true, position: 'right', fontSize: 10, formatter: (p) => `${(p.value * 100).toFixed(0)}%` },
      },
    ],
  };
}

/** Objective against one parameter, coloured by trial number. */
export function sliceOption({ lines, params, dists, metric, param }) {
  const i = params.indexOf(param);
  const d = dists[i];
  const pts = [];
  const src = [];
  for (const t of lines) {
    const v = t.p[i];
    if (v === null || v === undefined) continue;
    pts.push([paramValue(d, v), t.value, t.n]);
    src.push(t);
  }
  const big = pts.length > 3000;
  const maxN = lines.reduce((m, t) => Math.max(m, t.n), 1);
  return {
    ...base(big),
    grid: { left: 64, right: 24, top: 32, bottom: 64 },
    tooltip: { trigger: 'item', confine: true, formatter: (p) => trialTooltip(src[p.dataIndex], params, metric) },
    xAxis: { ...paramAxis(d), name: param, nameLocation: 'middle', nameGap: 26 },
    yAxis: valueAxis({ name: metric }),
    visualMap: {
      type: 'continuous',
      dimension: 2,
      min: 0,
      max: maxN,
      inRange: { color: ['#c9d8ec', '#173f73'] },
      orient: 'horizontal',
      left: 'center',
      bottom: 0,
      itemWidth: 8,
      itemHeight: 100,
      text: ['later trials', 'earlier'],
      textStyle: { fontSize: 10, color: TEXT },
      calculable: false,
    },
    series: [{ id: 'slice', type: 'scatter', symbolSize: big ? 3 : 7, large: big, data: pts }],
  };
}

/** Two parameters against each other, coloured by the objective (a scatter "contour"). */
export function contourOption({ lines, params, dists, metric, goal, x, y }) {
  const i = params.indexOf(x);
  const j = params.indexOf(y);
  const pts = [];
  const src = [];
  for (const t of lines) {
    const a = t.p[i];
    const b = t.p[j];
    if (a === null || a === undefined || b === null || b === undefined) continue;
    pts.push([paramValue(dists[i], a), paramValue(dists[j], b), t.value]);
    src.push(t);
  }
  const [lo, hi] = extent(pts.map((p) => p[2]));
  const big = pts.length > 3000;
  return {
    ...base(big),
    grid: { left: 64, right: 90, top: 32, bottom: 44 },
    tooltip: { trigger: 'item', confine: true, formatter: (p) => trialTooltip(src[p.dataIndex], params, metric) },
    xAxis: { ...paramAxis(dists[i]), name: x, nameLocation: 'middle', nameGap: 26 },
    yAxis: { ...paramAxis(dists[j]), name: y },
    visualMap: {
      type: 'continuous',
      dimension: 2,
      min: lo,
      max: hi,
      inRange: { color: goodToBad(goal) },
      right: 4,
      top: 'middle',
      itemWidth: 10,
      itemHeight: 110,
      text: [goal === 'maximize' ? 'best' : 'worst', goal === 'maximize' ? 'worst' : 'best'],
      textStyle: { fontSize: 10, color: TEXT },
      calculable: false,
    },
    series: [
      {
        id: 'pair',
        type: 'scatter',
        symbolSize: big ? 4 : 10,
        large: big,
        itemStyle: { borderColor: 'rgba(0,0,0,.25)', borderWidth: big ? 0 : 0.5 },
        data: pts,
      },
    ],
  };
}

/** The objective metric by step per trial; pruned trials end in a marker where they were stopped. */
export function curvesOption({ curves, metric, logY }) {
  const series = [];
  const stops = [];
  for (const c of curves.curves) {
    const data = c.steps.map((s, k) => [s, c.values[k]]);
    series.push({
      type: 'line',
      name: c.state,
      id: 'curve-' + c.n,
      n: c.n,
      showSymbol: false,
      symbolSize: 4,
      lineStyle: { width: c.state === 'running' ? 1.8 : 1.1, opacity: 0.75 },
      itemStyle: { color: STATE_COLORS[c.state] || TEXT },
      emphasis: { focus: 'series', lineStyle: { width: 2.5, opacity: 1 } },
      data,
    });
    if (c.state === 'pruned' && data.length) {
      const at = c.pruned_step ?? data[data.length - 1][0];
      let point = data[data.length - 1];
      for (const d of data) if (d[0] <= at) point = d;
      stops.push({ value: [at, point[1]], n: c.n });
    }
  }
  const states = ['completed', 'running', 'pruned'].filter((s) => curves.curves.some((c) => c.state === s));
  series.push({
    id: 'stops',
    name: 'pruned',
    type: 'scatter',
    symbol: 'triangle',
    symbolRotate: 180,
    symbolSize: 8,
    itemStyle: { color: STATE_COLORS.pruned, borderColor: '#7a5208', borderWidth: 0.5 },
    data: stops,
    z: 4,
  });
  return {
    ...base(curves.curves.length > 200),
    grid: { left: 64, right: 24, top: 36, bottom: 42 },
    legend: { top: 0, right: 8, data: states, itemWidth: 12, itemHeight: 8, textStyle: { fontSize: 11 } },
    tooltip: {
      trigger: 'item',
      confine: true,
      formatter: (p) => {
        const s = p.seriesId === 'stops' ? `trial ${p.data.n} pruned at step ${p.value[0]}` : `trial ${p.seriesId.slice(6)} (${p.seriesName})`;
        return `${esc(s)}<br>step ${esc(p.value[0])}: <b>${esc(num(p.value[1], 6))}</b>`;
      },
    },
    xAxis: valueAxis({ name: 'step', nameLocation: 'middle', nameGap: 26, scale: false, min: 0 }),
    yAxis: valueAxis({ type: logY ? 'log' : 'value', name: curves.metric || metric }),
    series,
  };
}

/** Each attempt as a bar on its agent or VM, coloured by outcome; preemptions are marked. */
export function timelineOption({ attempts, now }) {
  const agents = [...new Set(attempts.map((a) => a.agent || '(none)'))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const index = new Map(agents.map((a, i) => [a, i]));
  // Plain arrays for ECharts; what each bar is, by index, for drawing and tooltips.
  const items = attempts.map((a) => ({ a, state: a.outcome ? OUTCOME_STATE[a.outcome] || 'failed' : 'running' }));
  const data = attempts.map((a) => [index.get(a.agent || '(none)'), a.started_at, a.ended_at ?? now, a.n, a.attempt]);
  const big = data.length > 3000;
  return {
    ...base(big),
    grid: { left: 8, right: 24, top: 12, bottom: 52, outerBoundsMode: 'same', outerBoundsContain: 'axisLabel' },
    tooltip: {
      trigger: 'item',
      confine: true,
      formatter: (p) => {
        const { a, state } = items[p.dataIndex];
        return [
          `<b>trial ${a.n}</b>, attempt ${a.attempt}${a.attempt > 1 ? ' (a retry)' : ''}`,
          `on ${esc(a.agent || '?')}`,
          `<span style="color:${STATE_COLORS[state]}">${esc(a.outcome || 'running')}</span>`,
          `${esc(when(a.started_at))} – ${a.ended_at ? esc(when(a.ended_at)) : 'now'} (${esc(duration((a.ended_at ?? now) - a.started_at))})`,
        ].join('<br>');
      },
    },
    xAxis: {
      type: 'time',
      axisLine: { lineStyle: { color: AXIS } },
      axisLabel: { color: TEXT, fontSize: 10, hideOverlap: true },
      splitLine: { show: true, lineStyle: { color: '#eef0f3' } },
    },
    yAxis: {
      type: 'category',
      data: agents,
      inverse: true,
      axisLabel: { color: TEXT, fontSize: 10 },
      axisLine: { lineStyle: { color: AXIS } },
      axisTick: { show: false },
      splitLine: { show: true, lineStyle: { color: '#f3f4f6' } },
    },
    dataZoom: [
      { type: 'inside', xAxisIndex: 0, filterMode: 'weakFilter', zoomOnMouseWheel: 'ctrl' },
      { type: 'slider', xAxisIndex: 0, filterMode: 'weakFilter', height: 16, bottom: 8, showDetail: false, brushSelect: false },
    ],
    series: [
      {
        id: 'attempts',
        type: 'custom',
        encode: { x: [1, 2], y: 0 },
        clip: true,
        renderItem: (params, api) => {
          const cat = api.value(0);
          const start = api.coord([api.value(1), cat]);
          const end = api.coord([api.value(2), cat]);
          const h = Math.max(4, Math.min(18, api.size([0, 1])[1] * 0.62));
          const cs = params.coordSys;
          const rect = window.echarts.graphic.clipRectByRect(
            { x: start[0], y: start[1] - h / 2, width: Math.max(2, end[0] - start[0]), height: h },
            { x: cs.x, y: cs.y, width: cs.width, height: cs.height },
          );
          if (!rect) return null;
          const item = items[params.dataIndex];
          const retry = item.a.attempt > 1;
          const bar = {
            type: 'rect',
            shape: rect,
            style: {
              fill: STATE_COLORS[item.state],
              stroke: retry ? '#1f2933' : null,
              lineWidth: retry ? 1 : 0,
              lineDash: retry ? [3, 2] : null,
              opacity: 0.9,
            },
          };
          const label = rect.width > 28;
          const marker = item.state === 'preempted' && end[0] >= cs.x && end[0] <= cs.x + cs.width;
          // Most bars are a plain rectangle (thousands of them: no group, no text).
          if (!label && !marker) return bar;
          const children = [bar];
          if (label) {
            children.push({
              type: 'text',
              style: {
                x: rect.x + 4,
                y: rect.y + rect.height / 2,
                text: `#${api.value(3)}${retry ? '·' + api.value(4) : ''}`,
                fill: '#fff',
                fontSize: 10,
                verticalAlign: 'middle',
                fontFamily: FONT,
              },
              silent: true,
            });
          }
          if (marker) {
            // A marker above the bar's end: the moment the VM was taken away.
            const x = end[0];
            const y = start[1] - h / 2 - 1;
            children.push({
              type: 'polygon',
              shape: { points: [[x - 5, y - 7], [x + 5, y - 7], [x, y]] },
              style: { fill: STATE_COLORS.preempted, stroke: '#fff', lineWidth: 0.8 },
            });
          }
          return { type: 'group', children };
        },
        data,
      },
    ],
  };
}

/** The timeline's legend, as HTML. */
export function outcomeLegend() {
  const items = [
    ['completed', 'succeeded'],
    ['running', 'running'],
    ['pruned', 'pruned'],
    ['failed', 'failed'],
    ['preempted', 'preempted ▼'],
    ['cancelled', 'cancelled'],
  ];
  return (
    items.map(([s, label]) => `<span class="legend-item"><i style="background:${STATE_COLORS[s]}"></i>${esc(label)}</span>`).join('') +
    '<span class="legend-item"><i class="dashed"></i>retry</span>'
  );
}
