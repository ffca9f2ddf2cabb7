// The daemon's API: JSON over fetch with the session cookie; a 401 sends the browser to sign in.

/** Thrown once the page is on its way to the sign-in page: callers stop quietly. */
export class SigningIn extends Error {
  constructor() {
    super('signing in');
    this.name = 'SigningIn';
  }
}

/** An API error, with the daemon's code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

let signingIn = false;

/** Sends the browser to the sign-in page, which brings it back to the dashboard. */
export function goSignIn() {
  if (!signingIn) {
    signingIn = true;
    window.location.assign('/signin?next=/dashboard/');
  }
  throw new SigningIn();
}

/** `GET`/`POST` a path under `/api/v1`; resolves to the parsed JSON body. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  if (signingIn) throw new SigningIn();
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' }, signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v1/' + path.replace(/^\//, ''), init);
  if (r.status === 401) goSignIn();
  const text = await r.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!r.ok) {
    throw new ApiError(r.status, data && data.code, (data && data.message) || text || `HTTP ${r.status}`);
  }
  return data;
}

export const get = (path, opts) => api(path, opts);
export const post = (path, body) => api(path, { method: 'POST', body: body ?? {} });

/**
 * The trial table as rows: the daemon sends it by column (it compresses better); each row is
 * `{n, state, value, p: [...], attempts, preemptions, agent, started_at, finished_at, duration_ms,
 * cost_usd, run_id, pruned_step, reason, rerun_of}`.
 */
export function tableRows(table, now = Date.now()) {
  const c = table.columns;
  const trials = new Array(c.n.length);
  for (let i = 0; i < c.n.length; i++) {
    const started = c.started_at[i];
    const finished = c.finished_at[i];
    trials[i] = {
      n: c.n[i],
      state: c.state[i],
      value: c.value[i],
      p: c.p.map((column) => column[i]),
      attempts: c.attempts[i],
      preemptions: c.preemptions[i],
      agent: c.agent[i],
      started_at: started,
      finished_at: finished,
      duration_ms: started == null ? null : Math.max(0, (c.state[i] === 'running' || finished == null ? now : finished) - started),
      cost_usd: c.cost_usd[i],
      run_id: c.run_id[i],
      pruned_step: c.pruned_step[i],
      reason: c.reason[i],
      rerun_of: c.rerun_of ? c.rerun_of[i] : null,
    };
  }
  return { sweep_id: table.sweep_id, params: table.params, trials };
}
