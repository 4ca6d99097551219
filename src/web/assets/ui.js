// Small DOM helpers. Text always goes in as text nodes, never as HTML, so
// names and logs from the farm cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A time in the viewer's own time zone. */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function timeEl(iso) {
  return iso ? h('time', { datetime: iso }, when(iso)) : '—';
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds) || seconds < 0) return '—';
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds} s`;
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return `${m} min ${s} s`;
  const hrs = Math.floor(m / 60);
  return `${hrs} h ${m % 60} min`;
}

export function between(start, end) {
  if (!start) return null;
  const a = new Date(start), b = end ? new Date(end) : new Date();
  return (b - a) / 1000;
}

export function statusChip(status) {
  return h('span', { class: `status ${status}` }, status);
}

/** A progress bar with its numbers in words (for screen readers too). */
export function progressBar(done, total, label) {
  const pct = total > 0 ? Math.floor((100 * done) / total) : 0;
  return h('span', { class: 'progress' },
    h('progress', { max: total || 1, value: done, 'aria-label': label || `${done} of ${total} frames` }),
    ' ', h('span', { class: 'muted' }, `${done}/${total} (${pct} %)`));
}

export function framesText(task) {
  return task.frame_start === task.frame_end ? `${task.frame_start}` : `${task.frame_start}–${task.frame_end}`;
}

export function errorBox(error, prefix) {
  return h('div', { class: 'error', role: 'alert' }, prefix ? `${prefix}: ` : '', error.message || String(error));
}

/** Shows a message at the top of the page until the next page. */
export function notice(message, kind = 'error') {
  const box = document.getElementById('notice');
  replace(box, message ? h('div', { class: kind }, message) : null);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : '—';
}
