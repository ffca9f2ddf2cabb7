// What a token with the "write" scope may do from the page: pause, resume and cancel a sweep,
// enqueue a trial with given parameters, clone a sweep with an edited spec. Each opens a small
// dialog; cancel (which loses work) asks for confirmation.

import { post, ApiError, SigningIn } from './api.js';
import { esc, html } from './util.js';

/** A modal dialog; resolves to the value `onSubmit` returns, or null when dismissed. */
export function dialog({ title, body, submit = 'OK', danger = false, testid, onSubmit, wide = false }) {
  return new Promise((resolve) => {
    const d = html(`<dialog class="dialog${wide ? ' wide' : ''}" data-testid="${esc(testid || 'dialog')}">
      <form method="dialog" novalidate>
        <h2>${esc(title)}</h2>
        <div class="dialog-body"></div>
        <p class="error" role="alert" hidden></p>
        <div class="dialog-buttons">
          <button type="button" class="btn" value="cancel" data-testid="dialog-cancel">Cancel</button>
          <button type="submit" class="btn ${danger ? 'danger' : 'primary'}" value="ok" data-testid="dialog-ok">${esc(submit)}</button>
        </div>
      </form></dialog>`);
    const bodyEl = d.querySelector('.dialog-body');
    if (typeof body === 'string') bodyEl.innerHTML = body;
    else if (body) bodyEl.appendChild(body);
    const err = d.querySelector('.error');
    const ok = d.querySelector('[value=ok]');
    let done = false;
    const finish = (value) => {
      if (done) return;
      done = true;
      d.close();
      d.remove();
      resolve(value);
    };
    d.querySelector('[value=cancel]').addEventListener('click', () => finish(null));
    d.addEventListener('cancel', (e) => {
      e.preventDefault();
      finish(null);
    });
    d.querySelector('form').addEventListener('submit', async (e) => {
      e.preventDefault();
      err.hidden = true;
      ok.disabled = true;
      try {
        const value = onSubmit ? await onSubmit(d) : true;
        finish(value === undefined ? true : value);
      } catch (ex) {
        if (ex instanceof SigningIn) return;
        err.textContent = ex instanceof ApiError ? ex.message : String(ex.message || ex);
        err.hidden = false;
        ok.disabled = false;
      }
    });
    document.body.appendChild(d);
    d.showModal();
  });
}

/** The action buttons for a sweep in its state (none for a read-only token). */
export function actionButtons(sweep, me) {
  if (!me || me.scope !== 'write') return '';
  const live = sweep.state === 'running' || sweep.state === 'paused';
  const b = (action, label, cls = '') =>
    `<button type="button" class="btn ${cls}" data-action="${action}">${esc(label)}</button>`;
  return [
    sweep.state === 'running' ? b('pause', 'Pause') : '',
    sweep.state === 'paused' ? b('resume', 'Resume', 'primary') : '',
    live ? b('enqueue', 'Enqueue trial…') : '',
    b('clone', 'Clone…'),
    live ? b('cancel', 'Cancel…', 'danger-outline') : '',
  ].join('');
}

/** The enqueue form: an input per parameter of the spec. */
function enqueueForm(spec) {
  const rows = Object.entries(spec.parameters || {}).map(([name, d]) => {
    const id = 'eq-' + name.replace(/[^A-Za-z0-9_-]/g, '_');
    const optional = d.when ? ' <span class="muted">(conditional: leave empty if inactive)</span>' : '';
    let input;
    if (d.type === 'categorical') {
      input = `<select id="${id}" data-param="${esc(name)}" data-kind="categorical">${
        d.when ? '<option value="">(inactive)</option>' : ''
      }${d.choices.map((c, i) => `<option value="${i}">${esc(String(c))}</option>`).join('')}</select>`;
    } else {
      const step = d.type === 'int' ? d.step || 1 : d.step || 'any';
      const hint = `${d.low} … ${d.high}${d.log ? ', log' : ''}`;
      input = `<input id="${id}" type="number" data-param="${esc(name)}" data-kind="${d.type}" min="${d.low}" max="${d.high}" step="${step}" placeholder="${esc(
        hint,
      )}"${d.when ? '' : ' required'}>`;
    }
    return `<div class="field"><label for="${id}">${esc(name)} <span class="muted">${esc(d.type)}</span>${optional}</label>${input}</div>`;
  });
  return `<p class="muted">The trial is queued ahead of the sampler's next suggestions.</p><div class="form-grid">${rows.join('')}</div>`;
}

function readEnqueueForm(d, spec) {
  const params = {};
  for (const el of d.querySelectorAll('[data-param]')) {
    const name = el.dataset.param;
    const dist = spec.parameters[name];
    if (el.value === '') {
      if (dist.when) continue;
      throw new Error(`${name}: a value is needed`);
    }
    if (dist.type === 'categorical') params[name] = dist.choices[Number(el.value)];
    else {
      const v = Number(el.value);
      if (!Number.isFinite(v)) throw new Error(`${name}: not a number`);
      if (dist.type === 'int' && !Number.isInteger(v)) throw new Error(`${name}: an integer is needed`);
      params[name] = v;
    }
  }
  return params;
}

/** A copy of the spec for a new sweep: the name suffixed, the seed dropped unless kept. */
export function cloneSpec(spec, keepSeed) {
  const copy = JSON.parse(JSON.stringify(spec));
  const m = /^(.*)-clone(\d*)$/.exec(copy.name || '');
  copy.name = m ? `${m[1]}-clone${(Number(m[2]) || 1) + 1}` : `${copy.name || 'sweep'}-clone`;
  if (!keepSeed && copy.sampler && typeof copy.sampler === 'object') delete copy.sampler.seed;
  return copy;
}

/**
 * Runs an action; resolves to {sweep} (the new body) or {navigate: hash}, or null when the user
 * dismissed it.
 */
export async function runAction(action, sweep) {
  const id = sweep.id;
  if (action === 'pause' || action === 'resume') {
    return { sweep: await post(`sweeps/${id}/${action}`) };
  }
  if (action === 'cancel') {
    const r = await dialog({
      title: `Cancel sweep “${sweep.name}”?`,
      body: `<p>Running trials are stopped and their work is lost; queued trials never run. This cannot be undone.</p>`,
      submit: 'Cancel the sweep',
      danger: true,
      testid: 'confirm-cancel',
      onSubmit: () => post(`sweeps/${id}/cancel`),
    });
    return r ? { sweep: r } : null;
  }
  if (action === 'enqueue') {
    const spec = sweep.spec || {};
    const r = await dialog({
      title: 'Enqueue a trial',
      body: enqueueForm(spec),
      submit: 'Enqueue',
      testid: 'enqueue',
      onSubmit: (d) => post(`sweeps/${id}/trials`, { params: readEnqueueForm(d, spec) }),
    });
    return r ? { trial: r } : null;
  }
  if (action === 'clone') {
    const body = html(`<div>
      <p class="muted">A new sweep from this one's spec. Edit any field; the sampler's seed is dropped unless kept.</p>
      <label class="check"><input type="checkbox" data-testid="keep-seed"> Keep the seed (the same suggestions)</label>
      <textarea spellcheck="false" rows="18" data-testid="clone-spec" aria-label="Spec (JSON)"></textarea></div>`);
    const ta = body.querySelector('textarea');
    const keep = body.querySelector('[data-testid=keep-seed]');
    const hasSeed = sweep.spec && sweep.spec.sampler && sweep.spec.sampler.seed !== undefined;
    keep.disabled = !hasSeed;
    const fill = () => {
      ta.value = JSON.stringify(cloneSpec(sweep.spec || {}, keep.checked), null, 2);
    };
    fill();
    keep.addEventListener('change', () => {
      try {
        const edited = JSON.parse(ta.value);
        const seed = sweep.spec.sampler.seed;
        edited.sampler = edited.sampler || {};
        if (keep.checked) edited.sampler.seed = seed;
        else delete edited.sampler.seed;
        ta.value = JSON.stringify(edited, null, 2);
      } catch {
        fill();
      }
    });
    const r = await dialog({
      title: `Clone “${sweep.name}”`,
      body,
      submit: 'Create sweep',
      testid: 'clone',
      wide: true,
      onSubmit: () => {
        let spec;
        try {
          spec = JSON.parse(ta.value);
        } catch (e) {
          throw new Error('The spec is not valid JSON: ' + e.message);
        }
        return post('sweeps', spec);
      },
    });
    return r ? { navigate: `#/sweeps/${r.id}` } : null;
  }
  return null;
}
