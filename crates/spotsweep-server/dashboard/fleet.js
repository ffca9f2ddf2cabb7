// The fleet: each pool with its budget, zones and back-offs, its VMs (live ones first) and the
// agents that lease its trials, with their slots.

import { get } from './api.js';
import { DataTable } from './table.js';
import { esc, html, liveAgo, liveDuration, money, relative, duration, when, VM_COLORS } from './util.js';

const LIVE = new Set(['requested', 'provisioning', 'booting', 'ready', 'draining', 'deleting']);

function vmBadge(state) {
  const s = esc(state);
  return `<span class="badge vm" style="--c:${VM_COLORS[state] || '#9aa3ad'}" data-state="${s}">${s}</span>`;
}

function budgetBar(p) {
  if (p.budget_usd === undefined || p.budget_usd === null) {
    return `<div class="budget none"><span class="muted">No budget</span> · spent <b>${esc(money(p.spent_usd))}</b></div>`;
  }
  const frac = p.budget_usd > 0 ? p.spent_usd / p.budget_usd : 1;
  const cls = frac >= 1 ? 'over' : frac >= 0.8 ? 'near' : '';
  return `<div class="budget ${cls}" data-testid="budget" title="${(frac * 100).toFixed(1)}% of the budget">
    <div class="budget-bar"><i style="width:${Math.min(100, frac * 100).toFixed(2)}%"></i></div>
    <div class="budget-text"><b>${esc(money(p.spent_usd))}</b> of ${esc(money(p.budget_usd))} (${(frac * 100).toFixed(0)}%)${
      frac >= 1 ? ' · <b>budget spent: no new leases</b>' : ''
    }</div></div>`;
}

function uptime(vm) {
  if (!vm.running_at) return '<span class="muted">–</span>';
  return vm.ended_at ? esc(duration(vm.ended_at - vm.running_at)) : liveDuration(vm.running_at);
}

function poolCard(p, now, tables) {
  const liveVms = p.vms.filter((v) => LIVE.has(v.state));
  const preemptions = p.vms.reduce((n, v) => n + (v.preemptions || 0), 0);
  const trials = p.vms.reduce((n, v) => n + (v.trials_run || 0), 0);
  const backoffs = (p.backoffs || []).filter((b) => b.until > now);
  const card = html(`<section class="card pool" data-pool="${esc(p.name)}" data-testid="pool-${esc(p.name)}">
    <div class="card-head"><h2>${esc(p.name)} <span class="badge provider">${esc(p.provider)}</span></h2>
      <span class="muted small">${
        p.provider === 'gce'
          ? `${esc(p.machine_type || '')} · ${p.slots_per_vm} slot${p.slots_per_vm === 1 ? '' : 's'}/VM · ${liveVms.length}/${p.max_vms} VMs · ${esc(
              money(p.spot_price_per_hour),
            )}/h`
          : `${(p.agents || []).length} agent${(p.agents || []).length === 1 ? '' : 's'}`
      }</span></div>
    <div class="pool-body"></div></section>`);
  const body = card.querySelector('.pool-body');
  if (p.provider === 'gce') {
    body.insertAdjacentHTML(
      'beforeend',
      `<div class="pool-stats">
        <div class="stat grow"><div class="label">Budget</div>${budgetBar(p)}</div>
        <div class="stat"><div class="label">VMs live</div><div class="value">${liveVms.length}</div></div>
        <div class="stat"><div class="label">Trials run</div><div class="value">${trials}</div></div>
        <div class="stat"><div class="label">Preemptions</div><div class="value" data-testid="preemptions">${preemptions}</div></div>
        <div class="stat"><div class="label">Zones</div><div class="value small">${(p.zones || [])
          .map((z) => {
            const b = backoffs.find((x) => x.zone === z);
            return b
              ? `<span class="zone backoff" data-testid="backoff" title="Backed off after a stockout until ${esc(when(b.until))}">${esc(z)} · backed off, retry <span data-until="${b.until}">${esc(
                  relative(b.until, now),
                )}</span></span>`
              : `<span class="zone">${esc(z)}</span>`;
          })
          .join(' ')}</div></div>
      </div>`,
    );
    // Live VMs first, then ended ones, newest first.
    const vms = [...p.vms].sort((a, b) => {
      const la = LIVE.has(a.state) ? 0 : 1;
      const lb = LIVE.has(b.state) ? 0 : 1;
      return la - lb || b.created_at - a.created_at;
    });
    let table = tables.get(p.name);
    if (!table) {
      table = new DataTable({
      testid: 'vms-table',
      pageSize: 50,
      empty: 'No VMs yet: the pool starts them when a sweep needs slots.',
      rowAttrs: (v) => `data-vm="${esc(v.name)}" data-state="${esc(v.state)}"`,
      columns: [
        { key: 'name', label: 'VM', get: (v) => v.name, render: (v) => `<span class="mono">${esc(v.name)}</span>` },
        { key: 'zone', label: 'Zone', get: (v) => v.zone, render: (v) => esc(v.zone) },
        { key: 'state', label: 'State', get: (v) => v.state, render: (v) => vmBadge(v.state) + (v.reason && v.reason !== v.state ? ` <span class="muted small">${esc(v.reason)}</span>` : '') },
        { key: 'created', label: 'Created', get: (v) => v.created_at, render: (v) => esc(when(v.created_at)) },
        { key: 'uptime', label: 'Uptime', num: true, get: (v) => (v.running_at ? (v.ended_at || Date.now()) - v.running_at : null), render: uptime },
        { key: 'trials', label: 'Trials run', num: true, get: (v) => v.trials_run, render: (v) => String(v.trials_run ?? 0) },
        {
          key: 'preemptions',
          label: 'Preemptions',
          num: true,
          get: (v) => v.preemptions,
          render: (v) => (v.preemptions ? `<b class="preempted">${v.preemptions}</b>` : '0'),
        },
        { key: 'cost', label: 'Cost', num: true, get: (v) => v.cost_usd, render: (v) => esc(money(v.cost_usd)) },
      ],
      });
      tables.set(p.name, table);
    }
    table.setRows(vms);
    const wrap = html('<div class="sub-section"><h3>VMs</h3></div>');
    wrap.appendChild(table.el);
    body.appendChild(wrap);
  }
  const agents = p.agents || [];
  const gib = (mib) => `${(mib / 1024).toFixed(mib % 1024 ? 1 : 0)} GiB`;
  if (!agents.length && p.provider !== 'gce') {
    body.insertAdjacentHTML(
      'beforeend',
      '<p class="muted small none">No agent has leased a trial of this pool yet (the daemon starts local ones with <code>--local-agents N</code>).</p>',
    );
  } else if (agents.length) {
    const rows = agents
      .map((a) => {
        const running = Math.min(a.running || 0, a.slots || 0);
        const slots = Array.from({ length: Math.max(a.slots || 0, 0) }, (_, i) => `<i class="slot${i < running ? ' busy' : ''}"></i>`).join('');
        const stale = now - a.last_seen_at > 60000;
        const gpus = (a.gpus || [])
          .map((g) => `<span class="zone" title="${esc(`${gib(g.free_mib)} of ${gib(g.memory_mib)} free`)}">GPU ${esc(g.id)} · ${esc(gib(g.memory_mib))}</span>`)
          .join(' ');
        return `<tr data-agent="${esc(a.name)}"><td class="mono">${esc(a.name)}</td>
          <td><span class="slots" title="${a.running || 0} of ${a.slots} slots busy">${slots}</span> <span class="muted small">${a.running || 0}/${a.slots}</span></td>
          <td data-testid="agent-gpus">${gpus || '<span class="muted">none</span>'}</td>
          <td class="${stale ? 'muted' : ''}">${liveAgo(a.last_seen_at)}</td></tr>`;
      })
      .join('');
    body.insertAdjacentHTML(
      'beforeend',
      `<div class="sub-section"><h3>Agents</h3><div class="table-scroll"><table data-testid="agents-table">
        <thead><tr><th>Agent</th><th>Slots</th><th>GPUs</th><th>Last seen</th></tr></thead>
        <tbody>${rows}</tbody></table></div></div>`,
    );
  }
  return card;
}

export function mount(root, _params, ctx) {
  let destroyed = false;
  const tables = new Map(); // pool -> its VMs' table (keeps its sort and page across refreshes)
  const el = html(`<section class="page page-fleet"><div class="page-head"><h1>Fleet</h1>
    <span class="muted fleet-total"></span></div><div class="pools" data-testid="pools"></div></section>`);
  root.appendChild(el);

  async function refresh() {
    const [r] = await Promise.all([get('pools'), ctx.meReady]);
    if (destroyed) return;
    const now = Date.now();
    const box = el.querySelector('.pools');
    box.replaceChildren(...r.pools.map((p) => poolCard(p, now, tables)));
    if (!r.pools.length) box.innerHTML = '<div class="card"><p class="muted">No pools configured.</p></div>';
    const spent = r.pools.reduce((s, p) => s + (p.spent_usd || 0), 0);
    const vms = r.pools.reduce((s, p) => s + p.vms.filter((v) => LIVE.has(v.state)).length, 0);
    el.querySelector('.fleet-total').textContent = `${r.pools.length} pool${r.pools.length === 1 ? '' : 's'} · ${vms} live VM${vms === 1 ? '' : 's'} · ${money(spent)} spent`;
    ctx.hook.fleet = { pools: r.pools.map((p) => p.name), vms: r.pools.flatMap((p) => p.vms.map((v) => v.name)) };
    ctx.markReady();
  }

  return {
    title: 'Fleet',
    refresh,
    // Agents' busy slots change with trials too.
    relevant: (change) => change.fleet || change.all || (change.sweeps || []).length > 0,
    destroy() {
      destroyed = true;
      el.remove();
    },
  };
}
