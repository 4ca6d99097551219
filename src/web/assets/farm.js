// The farm at a glance, from the summary stream alone: it sends the whole
// picture when it connects and again whenever it changes.

import { h, replace, progressBar, statusChip, when } from './ui.js';

const PRIORITIES = ['urgent', 'high', 'normal', 'low'];
const WORKER_STATES = ['busy', 'idle', 'draining', 'disabled', 'offline'];
const RENDER_STATES = ['rendering', 'queued', 'waiting', 'paused', 'completed', 'failed', 'canceled'];

export async function farmPage(main, ctx) {
  const body = h('div', {}, h('p', { class: 'muted' }, 'Waiting for the farm summary…'));
  replace(main, h('h1', {}, 'Farm'), body);
  ctx.stream('/events/summary', { summary: (s) => draw(body, s) });
}

function counts(title, values, keys, id) {
  return h('section', { class: 'panel', 'aria-labelledby': id },
    h('h2', { id }, title),
    keys.map((k) => h('div', { class: 'stat', 'data-stat': `${id}-${k}` }, h('span', {}, k), h('b', {}, values?.[k] ?? 0))));
}

function draw(body, s) {
  const queued = PRIORITIES.reduce((n, p) => n + (s.queue?.[p] ?? 0), 0);
  const running = s.running || [];
  replace(body,
    h('div', { class: 'cards' },
      h('section', { class: 'panel', 'aria-labelledby': 'frames-hour' },
        h('h2', { id: 'frames-hour' }, 'Frames rendered in the last hour'),
        h('div', { class: 'big', 'data-stat': 'frames-last-hour' }, s.frames_last_hour ?? 0),
        h('div', { class: 'muted' }, `as of ${when(s.at)}`)),
      counts(`Queue: ${queued} chunk${queued === 1 ? '' : 's'} waiting`, s.queue, PRIORITIES, 'queue'),
      counts('Workers', s.workers, WORKER_STATES, 'workers'),
      counts('Renders', s.renders, RENDER_STATES, 'renders')),
    h('section', { class: 'panel', 'aria-labelledby': 'running' },
      h('h2', { id: 'running' }, 'Rendering now'),
      running.length === 0
        ? h('p', { class: 'muted' }, 'Nothing is rendering.')
        : h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', {}, 'Render'), h('th', {}, 'Priority'), h('th', {}, 'Progress'))),
          h('tbody', {}, running.map((r) => h('tr', {},
            h('td', {}, h('a', { href: `#/renders/${r.id}` }, r.name)),
            h('td', {}, statusChip(r.priority)),
            h('td', {}, progressBar(r.progress.frames_done, r.progress.frames_total, `${r.name}: ${r.progress.frames_done} of ${r.progress.frames_total} frames`)))))))));
}
