// The workers: what each does now and how far it is, its hours, with the
// operator's drain, disable and enable and their say over its hours.
// Follows the farm's event stream.

import { api, mayOperate } from './api.js';
import { h, replace, statusChip, timeEl, errorBox, progressBar, framesText } from './ui.js';
import { variablesPanel } from './variables.js';

export async function workersPage(main, ctx) {
  let workers = [];
  const tasks = new Map();
  const result = h('div', { 'aria-live': 'polite' });
  const table = h('div', { class: 'table-wrap' });
  const variables = h('section', { id: 'path-variables' });
  replace(main, h('h1', {}, 'Workers'), result, table, variables);

  async function load() {
    try {
      workers = await api('GET', '/workers');
    } catch (e) {
      replace(table, errorBox(e));
      return;
    }
    // The task each busy worker holds, for its frames and render.
    await Promise.all(workers.filter((w) => w.current_task_id && !tasks.has(w.current_task_id)).map(async (w) => {
      try {
        tasks.set(w.current_task_id, await api('GET', `/tasks/${w.current_task_id}`));
      } catch {
        // Finished meanwhile: its events will bring the next state.
      }
    }));
    draw();
  }

  function actionsFor(w) {
    if (!mayOperate()) return null;
    const can = {
      drain: ['idle', 'busy'].includes(w.status),
      disable: w.status !== 'disabled',
      enable: ['draining', 'disabled'].includes(w.status),
    };
    const labels = { drain: 'Drain', disable: 'Disable', enable: 'Enable' };
    return h('div', { class: 'actions' }, Object.keys(labels).filter((a) => can[a]).map((a) => h('button', {
      type: 'button', 'data-action': a, 'aria-label': `${labels[a]} ${w.name}`, onclick: () => act(w, a, labels[a]),
    }, labels[a])));
  }

  async function act(w, action, label) {
    try {
      await api('PUT', `/workers/${w.id}/status`, { action });
      replace(result, h('div', { class: 'notice' }, `${label} ${w.name}: done.`));
    } catch (e) {
      replace(result, errorBox(e, `${label} ${w.name}`));
    }
    await load();
  }

  // Its hours, who set them, and whether it takes work now.
  function hoursOf(w) {
    const a = w.availability;
    if (!a) return h('span', { class: 'muted' }, 'any time');
    const by = a.set_by === 'operator' ? 'set by an operator' : 'its agent’s';
    return h('div', { 'data-hours': a.schedule },
      h('div', {}, a.schedule, ' ', h('span', { class: 'muted' }, `(${a.time_zone}, ${by}${a.strict_hours ? ', strict' : ''})`)),
      h('div', { class: a.available_now ? '' : 'muted', 'data-available-now': String(a.available_now) },
        a.available_now ? 'in hours' : 'outside its hours',
        a.next_change ? [' until ', timeEl(a.next_change)] : null));
  }

  // An operator's hours for the worker: kept until cleared, winning over
  // the agent's --available.
  function hoursForm(w) {
    const a = w.availability;
    const input = h('input', {
      type: 'text', name: 'available', placeholder: 'mon-fri 19:00-07:00, sat-sun',
      value: a && a.set_by === 'operator' ? a.schedule : '', 'aria-label': `Hours of ${w.name}`,
    });
    const set = async (ev) => {
      ev.preventDefault();
      await change(w, 'PUT', { available: input.value }, `Hours of ${w.name}`);
    };
    return h('details', { class: 'hours-form' },
      h('summary', {}, 'Hours'),
      h('form', { onsubmit: set },
        input,
        h('button', { type: 'submit' }, 'Set'),
        a && a.set_by === 'operator'
          ? h('button', { type: 'button', 'data-action': 'clear-hours', onclick: () => change(w, 'DELETE', undefined, `Hours of ${w.name} cleared`) }, 'Clear')
          : null));
  }

  async function change(w, method, body, label) {
    try {
      await api(method, `/workers/${w.id}/availability`, body);
      replace(result, h('div', { class: 'notice' }, `${label}: done.`));
    } catch (e) {
      replace(result, errorBox(e, label));
    }
    await load();
  }

  function current(w) {
    const t = w.current_task_id && tasks.get(w.current_task_id);
    if (!t) return w.current_task_id ? 'a task' : '—';
    const count = t.frame_end - t.frame_start + 1;
    return h('div', {},
      h('a', { href: `#/renders/${t.render_id}?task=${t.id}` }, `frames ${framesText(t)}`),
      h('div', {}, progressBar(t.frames_done, count, `${w.name}: ${t.frames_done} of ${count} frames`)));
  }

  function draw() {
    const operate = mayOperate();
    replace(table, workers.length === 0
      ? h('p', { class: 'muted' }, 'No worker has registered. Start one with: renderfarm-worker --broker URL --token ENROLMENT_TOKEN')
      : h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Status'), h('th', {}, 'Platform'), h('th', {}, 'Current task'), h('th', {}, 'Hours'),
          h('th', { class: 'hide-narrow' }, 'Tags'), h('th', { class: 'hide-narrow' }, 'Last heartbeat'), operate ? h('th', {}, 'Actions') : null)),
        h('tbody', {}, workers.map((w) => h('tr', { 'data-worker': w.id },
          h('td', {}, w.name),
          h('td', {}, statusChip(w.status)),
          h('td', { 'data-platform': w.platform }, w.platform),
          h('td', {}, current(w)),
          h('td', {}, hoursOf(w)),
          h('td', { class: 'hide-narrow' }, h('span', { class: 'tags' }, w.tags.map((t) => h('span', { class: 'tag' }, t)))),
          h('td', { class: 'hide-narrow' }, timeEl(w.last_heartbeat)),
          operate ? h('td', {}, actionsFor(w), hoursForm(w)) : null)))));
  }

  ctx.stream('/events', {
    worker: () => ctx.soon('workers', load),
    worker_deleted: () => ctx.soon('workers', load),
    task: () => ctx.soon('workers', load),
    progress: (e) => {
      const t = tasks.get(e.task_id);
      if (t) {
        t.frames_done = e.frames_done;
        draw();
      } else {
        ctx.soon('workers', load);
      }
    },
  }, () => ctx.soon('workers', load));
  await Promise.all([load(), variablesPanel(variables)]);
}
