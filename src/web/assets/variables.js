// The farm's path variables (path mapping): a shared folder's path on each
// platform. Everyone sees them; operators set and delete them. The broker
// checks every value and its message is shown as it is.

import { api, mayOperate } from './api.js';
import { h, replace, errorBox } from './ui.js';

const PLATFORMS = ['linux', 'windows', 'macos'];

/** The variables panel, drawn into `panel` (a section of the workers page). */
export async function variablesPanel(panel) {
  const result = h('div', { 'aria-live': 'polite' });
  const table = h('div', { class: 'table-wrap' });
  let variables = [];

  async function load() {
    try {
      variables = await api('GET', '/variables');
    } catch (e) {
      replace(table, errorBox(e));
      return;
    }
    draw();
  }

  async function remove(v) {
    try {
      await api('DELETE', `/variables/${encodeURIComponent(v.name)}`);
      replace(result, h('div', { class: 'notice' }, `Deleted the path variable ${v.name}.`));
    } catch (e) {
      replace(result, errorBox(e, `Delete ${v.name}`));
    }
    await load();
  }

  function draw() {
    const operate = mayOperate();
    replace(table, variables.length === 0
      ? h('p', { class: 'muted' }, 'No path variables: render paths go to every worker as submitted.')
      : h('table', { id: 'variables' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), PLATFORMS.map((p) => h('th', {}, p)), operate ? h('th', {}, 'Actions') : null)),
        h('tbody', {}, variables.map((v) => h('tr', { 'data-variable': v.name },
          h('td', {}, h('code', {}, `{${v.name}}`)),
          PLATFORMS.map((p) => h('td', {}, v[p] ?? '—')),
          operate ? h('td', {}, h('button', {
            type: 'button', 'data-action': 'delete-variable', 'aria-label': `Delete ${v.name}`, onclick: () => remove(v),
          }, 'Delete')) : null)))));
  }

  const field = (name, label, placeholder) => h('label', { for: `variable-${name}` }, label,
    h('input', { id: `variable-${name}`, name, placeholder, autocomplete: 'off' }));
  const form = mayOperate() ? h('form', { class: 'submit panel', id: 'variable-form', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const text = (k) => (data.get(k) || '').toString().trim();
    const body = {};
    for (const p of PLATFORMS) if (text(p)) body[p] = text(p);
    try {
      const v = await api('PUT', `/variables/${encodeURIComponent(text('name'))}`, body);
      replace(result, h('div', { class: 'notice' }, `Set the path variable ${v.name}.`));
      form.reset();
    } catch (err) {
      replace(result, errorBox(err, 'The variable was not set'));
    }
    await load();
  } },
  field('name', 'Name', 'projects'),
  field('linux', 'Linux', '/mnt/projects'),
  field('windows', 'Windows', 'P:\\projects'),
  field('macos', 'macOS', '/Volumes/projects'),
  h('div', { class: 'wide' }, h('button', { type: 'submit', class: 'primary' }, 'Set variable'))) : null;

  replace(panel, h('h2', {}, 'Path variables'),
    h('p', { class: 'muted' }, 'A render path under one of these folders is stored with the variable and given to each worker in its own platform’s form; paths inside the .blend are remapped before rendering.'),
    result, table, form);
  await load();
}
