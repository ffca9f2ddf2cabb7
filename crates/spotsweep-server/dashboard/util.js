// Small helpers shared by the pages: DOM building, formatting, state colours, timing.

/** State colours, the same in tables, plots and the timeline. */
export const STATE_COLORS = {
  completed: '#2f9e5b',
  running: '#2f6fd6',
  pruned: '#d4951c',
  failed: '#d64545',
  preempted: '#8a5cd0',
  queued: '#9aa3ad',
  cancelled: '#4f5761',
};

/** An attempt's outcome (a lease's end) as the trial state it looks like. */
export const OUTCOME_STATE = {
  succeeded: 'completed',
  failed: 'failed',
  out_of_memory: 'failed',
  setup_failed: 'failed',
  expired: 'failed',
  preempted: 'preempted',
  pruned: 'pruned',
  cancelled: 'cancelled',
};

/** A VM's state as a colour. */
export const VM_COLORS = {
  requested: '#9aa3ad',
  provisioning: '#9aa3ad',
  booting: '#6f9be0',
  ready: '#2f9e5b',
  draining: '#d4951c',
  deleting: '#4f5761',
  deleted: '#4f5761',
  preempted: '#8a5cd0',
  failed: '#d64545',
};

export const TRIAL_STATES = ['queued', 'running', 'completed', 'failed', 'pruned', 'preempted', 'cancelled'];
/** Trial states after which a trial can run again (a rerun). */
export const FINISHED = ['completed', 'failed', 'pruned', 'cancelled'];

/** Escapes text for HTML. */
export function esc(value) {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** Builds an element from an HTML string (one root element). */
export function html(markup) {
  const t = document.createElement('template');
  t.innerHTML = markup.trim();
  return t.content.firstElementChild;
}

/** A state badge. */
export function badge(state, extra = '') {
  const s = esc(state || 'unknown');
  return `<span class="badge st-${s}" data-state="${s}"${extra}>${s}</span>`;
}

/** A number for people: short, without noise. */
export function num(v, digits = 4) {
  if (v === null || v === undefined || v === '') return '';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(Math.max(1, digits - 1));
  return String(Number(v.toPrecision(digits)));
}

/** A parameter value (numbers, strings, booleans; null where the parameter was inactive). */
export function paramText(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return num(v);
  return String(v);
}

/** Dollars. */
export function money(v) {
  if (v === null || v === undefined) return '';
  if (v === 0) return '$0';
  if (Math.abs(v) < 0.01) return '<$0.01';
  return '$' + v.toFixed(2);
}

/** A duration in milliseconds as `1h 02m`, `3m 05s`, `4.2s`. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  if (ms < 0) ms = 0;
  if (ms < 10000) return (ms / 1000).toFixed(1) + 's';
  if (ms < 60000) return Math.floor(ms / 1000) + 's';
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d) return `${d}d ${String(h).padStart(2, '0')}h`;
  if (h) return `${h}h ${String(m).padStart(2, '0')}m`;
  return `${m}m ${String(sec).padStart(2, '0')}s`;
}

/** A time of day (today) or a date and time. */
export function when(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  if (sameDay) return time;
  return d.toLocaleDateString([], { year: 'numeric', month: 'short', day: 'numeric' }) + ' ' + time;
}

/** A span whose text is kept current by the ticker: `3m 05s ago`. */
export function liveAgo(at) {
  if (!at) return '';
  return `<span data-at="${at}">${esc(relative(at))}</span>`;
}

/** `3m ago`, `in 2m`. */
export function relative(ms, now = Date.now()) {
  if (!ms) return '';
  const diff = ms - now;
  const text = duration(Math.abs(diff));
  return diff >= 0 ? `in ${text}` : `${text} ago`;
}

/** A span whose text is kept current by the ticker: elapsed since `since` (until `until`). */
export function liveDuration(since, until) {
  if (!since) return '';
  if (until) return esc(duration(until - since));
  return `<span data-since="${since}">${esc(duration(Date.now() - since))}</span>`;
}

/** Updates every `[data-since]` element's elapsed time (called once a second). */
export function tick(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll('[data-since]')) {
    el.textContent = duration(now - Number(el.dataset.since));
  }
  for (const el of root.querySelectorAll('[data-until], [data-at]')) {
    el.textContent = relative(Number(el.dataset.until || el.dataset.at), now);
  }
}

/** Calls `fn` at most once per `ms`, the first call at once and the last one always. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  let pending = null;
  function throttled(...args) {
    const now = performance.now();
    pending = args;
    if (now - last >= ms && !timer) {
      last = now;
      pending = null;
      fn(...args);
      return;
    }
    if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = performance.now();
        if (pending) {
          const a = pending;
          pending = null;
          fn(...a);
        }
      }, Math.max(0, ms - (now - last)));
    }
  }
  /** Runs a waiting call now. */
  throttled.flush = () => {
    if (!timer) return;
    clearTimeout(timer);
    timer = null;
    last = performance.now();
    if (pending) {
      const a = pending;
      pending = null;
      fn(...a);
    }
  };
  return throttled;
}

/** Calls `fn` once calls have stopped for `ms`. */
export function debounce(fn, ms) {
  let timer = null;
  const d = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  d.cancel = () => clearTimeout(timer);
  return d;
}

/** localStorage that never throws (private mode, quota). */
export const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem('spotsweep.dashboard.' + key);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem('spotsweep.dashboard.' + key, JSON.stringify(value));
    } catch {
      /* not kept: fine */
    }
  },
};
