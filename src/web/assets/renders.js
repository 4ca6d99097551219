// Every render, filtered, searched, sorted and paged by the broker; several
// can be selected and acted on at once. Rows follow the event stream.

import { api, query, mayChange } from './api.js';
import { h, replace, progressBar, statusChip, timeEl, errorBox } from './ui.js';

const PAGE = 25;
const STATUSES = ['', 'waiting', 'queued', 'rendering', 'paused', 'completed', 'failed', 'canceled'];
const PRIORITIES = ['', 'urgent', 'high', 'normal', 'low'];
const SORTS = [['created', 'Submitted'], ['name', 'Name'], ['priority', 'Priority'], ['status', 'Status'], ['progress', 'Progress']];
const ACTIONS = [
  ['pause', 'Pause'], ['resume', 'Resume'], ['release', 'Release'], ['cancel', 'Cancel'], ['requeue', 'Requeue'], ['delete', 'Delete'],
];

export async function rendersPage(main, ctx) {
  const p = ctx.params;
  const filters = {
    status: p.get('status') || '',
    priority: p.get('priority') || '',
    q: p.get('q') || '',
    sort: p.get('sort') || 'created',
    order: p.get('order') || '',
    page: Math.max(1, parseInt(p.get('page') || '1', 10) || 1),
  };
  const selected = new Set();
  let items = [];
  let total = 0;

  const go = (changes) => {
    const next = { ...filters, ...changes };
    if (!('page' in changes)) next.page = 1;
    const q = query({ status: next.status, priority: next.priority, q: next.q, sort: next.sort === 'created' ? '' : next.sort, order: next.order, page: next.page > 1 ? next.page : '' });
    location.hash = `#/renders${q}`;
  };

  const select = (id, values, label) => h('label', { for: id }, label,
    h('select', { id, onchange: (e) => go({ [id]: e.target.value }) },
      values.map(([v, text]) => h('option', { value: v, selected: filters[id] === v }, text))));
  const search = h('input', { id: 'q', type: 'search', value: filters.q, placeholder: 'part of a name' });
  const toolbar = h('form', { class: 'toolbar', role: 'search', onsubmit: (e) => { e.preventDefault(); go({ q: search.value.trim() }); } },
    select('status', STATUSES.map((s) => [s, s || 'any']), 'Status'),
    select('priority', PRIORITIES.map((s) => [s, s || 'any']), 'Priority'),
    h('label', { for: 'q' }, 'Name', search),
    select('sort', SORTS, 'Sort by'),
    select('order', [['', 'default'], ['asc', 'ascending'], ['desc', 'descending']], 'Order'),
    h('button', { type: 'submit' }, 'Search'));

  const result = h('div', { 'aria-live': 'polite' });
  const bulk = h('div', { class: 'actions', role: 'group', 'aria-label': 'Act on the selected renders' });
  const table = h('div', { class: 'table-wrap' });
  const pager = h('div', { class: 'pager' });
  replace(main, h('h1', {}, 'Renders'), toolbar, bulk, result, table, pager);

  async function load() {
    const q = query({
      status: filters.status, priority: filters.priority, q: filters.q,
      sort: filters.sort === 'created' ? '' : filters.sort, order: filters.order, limit: PAGE, offset: (filters.page - 1) * PAGE,
    });
    try {
      const page = await api('GET', `/renders${q}`);
      items = page.items;
      total = page.total;
    } catch (e) {
      replace(table, errorBox(e));
      replace(pager);
      return;
    }
    for (const id of [...selected]) if (!items.some((r) => r.id === id)) selected.delete(id);
    draw();
  }

  function draw() {
    const changeable = items.filter(mayChange);
    replace(bulk, changeable.length === 0 ? null : [
      h('span', { class: 'muted' }, `${selected.size} selected`),
      ACTIONS.map(([action, label]) => h('button', {
        type: 'button', class: action === 'delete' || action === 'cancel' ? 'danger' : '',
        disabled: selected.size === 0, 'data-action': action, onclick: () => act(action, label),
      }, label)),
    ]);
    const all = h('input', {
      type: 'checkbox', 'aria-label': 'Select every render on this page',
      checked: changeable.length > 0 && changeable.every((r) => selected.has(r.id)),
      onchange: (e) => { for (const r of changeable) e.target.checked ? selected.add(r.id) : selected.delete(r.id); draw(); },
    });
    replace(table, items.length === 0
      ? h('p', { class: 'muted' }, 'No render matches.')
      : h('table', {},
        h('thead', {}, h('tr', {},
          h('th', {}, changeable.length ? all : ''), h('th', {}, 'Name'), h('th', {}, 'Status'), h('th', {}, 'Priority'),
          h('th', {}, 'Progress'), h('th', { class: 'hide-narrow' }, 'Owner'), h('th', { class: 'hide-narrow' }, 'Submitted'))),
        h('tbody', {}, items.map(row))));
    const pages = Math.max(1, Math.ceil(total / PAGE));
    replace(pager,
      h('button', { type: 'button', disabled: filters.page <= 1, onclick: () => go({ page: filters.page - 1 }) }, '← Newer'),
      h('span', {}, `Page ${filters.page} of ${pages} · ${total} render${total === 1 ? '' : 's'}`),
      h('button', { type: 'button', disabled: filters.page >= pages, onclick: () => go({ page: filters.page + 1 }) }, 'Older →'));
  }

  function row(r) {
    const box = mayChange(r)
      ? h('input', { type: 'checkbox', 'aria-label': `Select ${r.name}`, checked: selected.has(r.id),
        onchange: (e) => { e.target.checked ? selected.add(r.id) : selected.delete(r.id); draw(); } })
      : '';
    return h('tr', { class: selected.has(r.id) ? 'selected' : '', 'data-render': r.id },
      h('td', {}, box),
      h('td', {}, h('a', { href: `#/renders/${r.id}` }, r.name)),
      h('td', {}, statusChip(r.status)),
      h('td', {}, r.priority),
      h('td', {}, progressBar(r.progress.frames_done, r.progress.frames_total, `${r.name}: ${r.progress.frames_done} of ${r.progress.frames_total} frames`)),
      h('td', { class: 'hide-narrow' }, r.owner ?? '—'),
      h('td', { class: 'hide-narrow' }, timeEl(r.created_at)));
  }

  async function act(action, label) {
    const chosen = items.filter((r) => selected.has(r.id));
    if (action === 'delete' && !confirm(`Delete ${chosen.length} render(s) with their tasks and logs?`)) return;
    const failures = [];
    for (const r of chosen) {
      try {
        if (action === 'delete') await api('DELETE', `/renders/${r.id}`);
        else await api('PUT', `/renders/${r.id}/status`, { action });
      } catch (e) {
        failures.push(h('li', {}, `${r.name}: ${e.message}`));
      }
    }
    const done = chosen.length - failures.length;
    replace(result, failures.length
      ? h('div', { class: 'error', role: 'alert' }, `${label}: ${done} of ${chosen.length} done; these were not:`, h('ul', {}, failures))
      : h('div', { class: 'notice' }, `${label}: done for ${done} render${done === 1 ? '' : 's'}.`));
    selected.clear();
    await load();
  }

  const onRender = (e) => {
    const at = items.findIndex((r) => r.id === e.render_id);
    // A row on this page that still belongs here changes in place; anything
    // else may move rows in or out: ask for the page again.
    if (at >= 0 && (!filters.status || filters.status === e.status) && (filters.sort === 'created' || filters.sort === 'name')) {
      items[at] = { ...items[at], status: e.status, progress: e.progress ?? items[at].progress };
      draw();
    } else {
      ctx.soon('renders', load);
    }
  };
  ctx.stream('/events', {
    render: onRender,
    render_deleted: () => ctx.soon('renders', load),
  }, () => ctx.soon('renders', load));
  await load();
}
