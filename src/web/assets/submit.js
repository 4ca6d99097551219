// A new render. The broker checks every field and its message is shown as
// it is, so the page and the API never disagree about what is valid.

import { api, maySubmit } from './api.js';
import { h, replace, errorBox } from './ui.js';

export async function submitPage(main) {
  if (!maySubmit()) {
    replace(main, h('h1', {}, 'Submit a render'),
      errorBox({ message: 'Submitting needs a token with the role artist or higher; yours is a viewer’s.' }));
    return;
  }
  const field = (name, label, attrs = {}, hint) => h('label', { for: name, class: attrs.wide ? 'wide' : '' }, label,
    h('input', { id: name, name, ...attrs, wide: undefined }),
    hint ? h('span', { class: 'muted' }, hint) : null);
  const priority = h('select', { id: 'priority', name: 'priority' },
    ['normal', 'low', 'high', 'urgent'].map((p) => h('option', { value: p }, p)));
  const engine = h('select', { id: 'engine', name: 'engine' },
    [['', 'as saved in the file'], ['CYCLES', 'Cycles'], ['BLENDER_EEVEE', 'Eevee'], ['BLENDER_WORKBENCH', 'Workbench']]
      .map(([v, t]) => h('option', { value: v }, t)));
  const error = h('div', { class: 'wide', 'aria-live': 'assertive' });
  const form = h('form', { class: 'submit panel', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    replace(error);
    const data = new FormData(form);
    const text = (k) => (data.get(k) || '').toString().trim();
    const number = (k) => {
      const v = text(k);
      if (v === '') return undefined;
      const n = Number(v);
      return Number.isFinite(n) ? n : v;
    };
    const spec = {
      name: text('name'),
      blend_file: text('blend_file'),
      frame_start: number('frame_start'),
      frame_end: number('frame_end'),
      chunk_size: number('chunk_size'),
      target_chunk_seconds: number('target_chunk_seconds'),
      frame_order: text('frame_order') || undefined,
      max_retries: number('max_retries'),
      priority: text('priority'),
      engine: text('engine') || undefined,
      output: text('output') || undefined,
      tags: text('tags') ? text('tags').split(',').map((t) => t.trim()).filter(Boolean) : undefined,
      video: text('video_fps') ? { fps: number('video_fps') } : undefined,
      depends_on: text('depends_on') ? text('depends_on').split(/[\s,]+/).filter(Boolean) : undefined,
    };
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const render = await api('POST', '/renders', spec);
      location.hash = `#/renders/${render.id}`;
    } catch (err) {
      replace(error, errorBox(err, 'The render was not submitted'));
      button.disabled = false;
    }
  } },
  field('name', 'Name', { required: true, autocomplete: 'off' }),
  field('blend_file', 'Blend file', { required: true, wide: true, autocomplete: 'off' }, 'Its path on the render machines (a shared drive).'),
  field('frame_start', 'First frame', { type: 'number', value: '1', required: true }),
  field('frame_end', 'Last frame', { type: 'number', required: true }),
  field('chunk_size', 'Frames per chunk', { inputmode: 'numeric', placeholder: 'broker default', autocomplete: 'off' }, 'A number, or auto: the broker sizes the chunks from measured frame times.'),
  field('target_chunk_seconds', 'Seconds per chunk', { type: 'number', min: '5', max: '3600', placeholder: '60' }, 'With auto only: how long one chunk should take.'),
  h('label', { for: 'frame_order' }, 'Frame order',
    h('select', { id: 'frame_order', name: 'frame_order' },
      h('option', { value: 'sequential' }, 'sequential'),
      h('option', { value: 'preview-first' }, 'preview first (first, last, middle, every Nth)'))),
  field('max_retries', 'Retries per chunk', { type: 'number', min: '0', placeholder: 'broker default' }),
  h('label', { for: 'priority' }, 'Priority', priority),
  h('label', { for: 'engine' }, 'Engine', engine),
  field('output', 'Output', { wide: true, placeholder: 'the broker’s renders folder', autocomplete: 'off' }, 'A path pattern such as /renders/shot010/frame_####; empty: under the broker’s output root.'),
  field('tags', 'Worker tags', { placeholder: 'gpu, linux', autocomplete: 'off' }, 'Only workers with all of these take its chunks.'),
  field('depends_on', 'Starts after', { wide: true, placeholder: 'render ids, comma-separated', autocomplete: 'off' }, 'The render waits until every one of these renders has completed; empty: it starts at once.'),
  field('video_fps', 'Video frame rate', { type: 'number', min: '1', max: '240', placeholder: 'no video' }, 'Frames per second of an MP4 made from the frames once they are all rendered (by a worker with ffmpeg); empty: no video.'),
  error,
  h('div', { class: 'wide' }, h('button', { type: 'submit', class: 'primary' }, 'Submit')));
  replace(main, h('h1', {}, 'Submit a render'), form);
}
