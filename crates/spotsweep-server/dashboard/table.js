// A paged table over a plain array: sort and filter in memory, render one page of rows (never
// thousands of DOM rows), columns the user can hide.

import { esc, html, store } from './util.js';

function compare(a, b) {
  const an = a === null || a === undefined || a === '' || (typeof a === 'number' && Number.isNaN(a));
  const bn = b === null || b === undefined || b === '' || (typeof b === 'number' && Number.isNaN(b));
  if (an || bn) return an === bn ? 0 : an ? 1 : -1; // empty cells last, whatever the direction
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

export class DataTable {
  /**
   * columns: [{key, label, get(row) (what sorts), render(row) (HTML), num (right-aligned),
   *   hidden (by default), title}]
   */
  constructor({ columns, testid, rowAttrs, pageSize = 100, sort, storeKey, empty = 'Nothing to show.', onRender }) {
    this.columns = columns;
    this.rowAttrs = rowAttrs || (() => '');
    this.pageSize = pageSize;
    this.storeKey = storeKey;
    this.empty = empty;
    this.onRender = onRender;
    this.rows = [];
    this.filters = new Map();
    this.sort = (storeKey && store.get(storeKey + '.sort', null)) || sort || null;
    this.page = 0;
    this.version = 0;
    this.hidden = new Set(storeKey ? store.get(storeKey + '.hidden', []) : []);
    this.known = new Set(storeKey ? store.get(storeKey + '.known', []) : []);
    this.setColumns(columns, false);
    this._view = null;
    this.el = html(`<div class="dtable">
      <div class="table-scroll"><table data-testid="${esc(testid || 'table')}"><thead></thead><tbody></tbody></table></div>
      <div class="pager"><span class="pager-text"></span>
        <button type="button" class="btn small" data-page="first" title="First page">«</button>
        <button type="button" class="btn small" data-page="prev" title="Previous page">‹</button>
        <button type="button" class="btn small" data-page="next" title="Next page">›</button>
        <button type="button" class="btn small" data-page="last" title="Last page">»</button>
      </div></div>`);
    this.thead = this.el.querySelector('thead');
    this.tbody = this.el.querySelector('tbody');
    this.thead.addEventListener('click', (e) => {
      const th = e.target.closest('th[data-col]');
      if (!th) return;
      const key = th.dataset.col;
      if (this.sort && this.sort.key === key) this.sort = { key, dir: this.sort.dir === 'asc' ? 'desc' : 'asc' };
      else this.sort = { key, dir: 'asc' };
      if (this.storeKey) store.set(this.storeKey + '.sort', this.sort);
      this._view = null;
      this.page = 0;
      this.render();
    });
    this.el.querySelector('.pager').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-page]');
      if (!b) return;
      const pages = this.pageCount();
      const to = { first: 0, prev: this.page - 1, next: this.page + 1, last: pages - 1 }[b.dataset.page];
      this.page = Math.max(0, Math.min(pages - 1, to));
      this.renderBody();
    });
  }

  /** The columns; one never seen before starts hidden where it says so. */
  setColumns(columns, render = true) {
    this.columns = columns;
    let added = false;
    for (const c of columns) {
      if (this.known.has(c.key)) continue;
      this.known.add(c.key);
      added = true;
      if (c.hidden) this.hidden.add(c.key);
    }
    if (added && this.storeKey) {
      store.set(this.storeKey + '.known', [...this.known]);
      store.set(this.storeKey + '.hidden', [...this.hidden]);
    }
    if (this.refreshMenu) this.refreshMenu();
    if (render) this.render();
  }

  /** New data (the filters and the sort stay). */
  setRows(rows) {
    this.rows = rows;
    this._view = null;
    this.render();
  }

  /** Sets (or with null, removes) a named filter: a predicate over rows. */
  setFilter(name, fn, render = true) {
    if (fn) this.filters.set(name, fn);
    else this.filters.delete(name);
    this._view = null;
    this.page = 0;
    if (render) this.renderBody();
  }

  /** The rows that pass every filter, in the current order. */
  view() {
    if (this._view) return this._view;
    const fs = [...this.filters.values()];
    let rows = fs.length ? this.rows.filter((r) => fs.every((f) => f(r))) : this.rows.slice();
    if (this.sort) {
      const col = this.columns.find((c) => c.key === this.sort.key);
      if (col) {
        const get = col.get || (() => null);
        const keyed = rows.map((r) => [get(r), r]);
        const sign = this.sort.dir === 'desc' ? -1 : 1;
        keyed.sort((a, b) => {
          const c = compare(a[0], b[0]);
          // Empty cells stay last in both directions.
          const ae = a[0] === null || a[0] === undefined || a[0] === '';
          const be = b[0] === null || b[0] === undefined || b[0] === '';
          return ae || be ? c : c * sign;
        });
        rows = keyed.map((k) => k[1]);
      }
    }
    this._view = rows;
    return rows;
  }

  pageCount() {
    return Math.max(1, Math.ceil(this.view().length / this.pageSize));
  }

  /** The rows on the page shown. */
  pageRows() {
    const v = this.view();
    return v.slice(this.page * this.pageSize, (this.page + 1) * this.pageSize);
  }

  shownColumns() {
    return this.columns.filter((c) => !this.hidden.has(c.key));
  }

  render() {
    const cols = this.shownColumns();
    this.thead.innerHTML =
      '<tr>' +
      cols
        .map((c) => {
          const sorted = this.sort && this.sort.key === c.key ? this.sort.dir : '';
          const arrow = sorted === 'asc' ? ' ▲' : sorted === 'desc' ? ' ▼' : '';
          return `<th data-col="${esc(c.key)}" class="${c.num ? 'num' : ''}${sorted ? ' sorted' : ''}" title="${esc(
            c.title || 'Sort by ' + c.label,
          )}" aria-sort="${sorted ? (sorted === 'asc' ? 'ascending' : 'descending') : 'none'}">${esc(c.label)}${arrow}</th>`;
        })
        .join('') +
      '</tr>';
    this.renderBody();
  }

  renderBody() {
    const cols = this.shownColumns();
    const total = this.view().length;
    const pages = this.pageCount();
    if (this.page >= pages) this.page = pages - 1;
    const rows = this.pageRows();
    if (!rows.length) {
      this.tbody.innerHTML = `<tr class="empty"><td colspan="${cols.length || 1}">${esc(this.empty)}</td></tr>`;
    } else {
      const out = [];
      for (const r of rows) {
        out.push(`<tr ${this.rowAttrs(r)}>`);
        for (const c of cols) out.push(`<td${c.num ? ' class="num"' : ''}>${c.render(r)}</td>`);
        out.push('</tr>');
      }
      this.tbody.innerHTML = out.join('');
    }
    const from = total ? this.page * this.pageSize + 1 : 0;
    const to = Math.min(total, (this.page + 1) * this.pageSize);
    const all = this.rows.length;
    this.el.querySelector('.pager-text').textContent =
      `${from.toLocaleString()}–${to.toLocaleString()} of ${total.toLocaleString()}` +
      (total !== all ? ` (filtered from ${all.toLocaleString()})` : '');
    for (const b of this.el.querySelectorAll('.pager button')) {
      const back = b.dataset.page === 'first' || b.dataset.page === 'prev';
      b.disabled = back ? this.page === 0 : this.page >= pages - 1;
    }
    this.el.querySelector('.pager').hidden = total <= this.pageSize && this.page === 0;
    this.version++;
    if (this.onRender) this.onRender(this);
  }

  /** A "Columns" menu with a checkbox per column. */
  columnMenu() {
    const menu = html(`<details class="menu" data-testid="columns-menu"><summary class="btn small">Columns</summary>
      <div class="menu-body"></div></details>`);
    const body = menu.querySelector('.menu-body');
    const fill = () => {
      body.innerHTML = this.columns
        .map(
          (c) => `<label><input type="checkbox" data-col="${esc(c.key)}" ${this.hidden.has(c.key) ? '' : 'checked'}> ${esc(
            c.label,
          )}</label>`,
        )
        .join('');
    };
    fill();
    body.addEventListener('change', (e) => {
      const key = e.target.dataset.col;
      if (!key) return;
      if (e.target.checked) this.hidden.delete(key);
      else this.hidden.add(key);
      if (this.storeKey) store.set(this.storeKey + '.hidden', [...this.hidden]);
      this.render();
    });
    this.refreshMenu = fill;
    return menu;
  }
}
