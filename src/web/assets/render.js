// One render: its settings, progress and time left, its tasks, the log and
// history of a task (followed live while it renders), and its frames. All
// of it follows this render's own event stream.

import { api, query, mayChange, mayOperate } from './api.js';
import {
  h, replace, progressBar, statusChip, timeEl, errorBox, duration, between, framesText, shortId, notice,
} from './ui.js';

const TASKS_PAGE = 50;
const FINISHED = ['completed', 'failed', 'canceled'];

export async function renderPage(main, ctx, id) {
  let render;
  try {
    render = await api('GET', `/renders/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e.status === 404) {
      document.title = 'Render not found · renderfarm';
      replace(main, h('section', { id: 'not-found' },
        h('h1', {}, 'Render not found'),
        errorBox(e),
        h('p', {}, 'It may have been deleted, or the link is wrong. ', h('a', { href: '#/renders' }, 'See every render'), '.')));
      return;
    }
    throw e;
  }
  document.title = `${render.name} · renderfarm`;

  let tasks = [];
  let blocklist = [];
  let tasksTotal = 0;
  let tasksOffset = 0;
  let workers = new Map();
  let openTask = ctx.params.get('task');

  const heading = h('div');
  const actionResult = h('div', { 'aria-live': 'polite' });
  const progress = h('section', { class: 'panel', 'aria-labelledby': 'progress-h' });
  const settings = h('section', { class: 'panel', 'aria-labelledby': 'settings-h' });
  const latest = h('section', { class: 'panel', 'aria-labelledby': 'latest-h' });
  const tasksBox = h('section', { class: 'panel', 'aria-labelledby': 'tasks-h' });
  const taskPanel = h('section', { class: 'panel', id: 'task-panel', 'aria-labelledby': 'task-h', hidden: true });
  const framesBox = h('section', { class: 'panel', 'aria-labelledby': 'frames-h' });
  replace(main, heading, actionResult, progress, h('div', { class: 'two' }, settings, latest), tasksBox, taskPanel, framesBox);

  function drawHeader() {
    const mine = mayChange(render);
    const can = {
      pause: ['queued', 'rendering'].includes(render.status),
      resume: render.status === 'paused',
      release: render.status === 'waiting',
      cancel: ['waiting', 'queued', 'rendering', 'paused'].includes(render.status),
      requeue: FINISHED.includes(render.status),
      delete: FINISHED.includes(render.status),
    };
    const labels = { pause: 'Pause', resume: 'Resume', release: 'Release', cancel: 'Cancel', requeue: 'Requeue', delete: 'Delete' };
    replace(heading,
      h('p', {}, h('a', { href: '#/renders' }, '← Renders')),
      h('h1', {}, render.name, ' ', statusChip(render.status)),
      mine ? h('div', { class: 'actions', role: 'group', 'aria-label': 'Act on this render' },
        Object.keys(labels).filter((a) => can[a]).map((a) => h('button', {
          type: 'button', 'data-action': a, class: a === 'cancel' || a === 'delete' ? 'danger' : '',
          onclick: () => act(a, labels[a]),
        }, labels[a]))) : null);
  }

  async function act(action, label) {
    if (action === 'delete' && !confirm(`Delete ${render.name} with its tasks and logs?`)) return;
    try {
      if (action === 'delete') {
        await api('DELETE', `/renders/${render.id}`);
        location.hash = '#/renders';
        notice(`${render.name} was deleted.`, 'notice');
        return;
      }
      render = await api('PUT', `/renders/${render.id}/status`, { action });
      replace(actionResult, h('div', { class: 'notice' }, `${label}: done. The render is ${render.status}.`));
      drawAll();
      ctx.soon('tasks', loadTasks);
    } catch (e) {
      replace(actionResult, errorBox(e, label));
    }
  }

  function drawProgress() {
    const p = render.progress;
    let left = '—';
    if (render.status === 'rendering' && p.frames_done > 0 && render.started_at) {
      const rate = p.frames_done / between(render.started_at);
      if (rate > 0) left = `about ${duration((p.frames_total - p.frames_done) / rate)} (${(rate * 60).toFixed(1)} frames a minute)`;
    } else if (render.status === 'completed') {
      left = 'done';
    }
    replace(progress,
      h('h2', { id: 'progress-h' }, 'Progress'),
      progressBar(p.frames_done, p.frames_total, `${p.frames_done} of ${p.frames_total} frames rendered`),
      h('div', { class: 'stat' }, h('span', {}, 'Estimated time left'), h('b', { id: 'eta' }, left)),
      h('div', { class: 'muted' },
        `Chunks: ${p.tasks_completed} done, ${p.tasks_running} rendering, ${p.tasks_pending} waiting, ${p.tasks_failed} failed, ${p.tasks_canceled} canceled, of ${p.tasks_total}.`),
      videoLine(),
      whyWaiting(),
      blocked(),
      whyFailed());
  }

  // The video asked for at submit: made by its own task once the frames are
  // all rendered, downloadable once that task completed.
  function videoLine() {
    if (!render.video) return null;
    const status = render.video_status;
    const said = {
      null: 'made once the frames are all rendered',
      pending: 'waiting for a worker with ffmpeg',
      running: 'being assembled',
      completed: 'ready',
      failed: 'failed (requeue its task below to try again)',
      canceled: 'canceled',
    }[status ?? null] ?? status;
    return h('div', { class: 'stat', id: 'video' },
      h('span', {}, 'Video'),
      h('b', {}, said),
      status === 'completed'
        ? h('a', { href: `/renders/${render.id}/video`, download: `${render.name}.mp4`, id: 'video-link' }, ' Download the video (MP4)')
        : null);
  }

  // The workers kept off this render for failing its chunks; an operator
  // clears them.
  function blocked() {
    const entries = blocklist.filter((e) => e.blocked);
    if (!entries.length) return null;
    const names = entries.map((e) => `${e.worker_name ?? e.worker_id} (${e.failures} failed)`).join(', ');
    return h('p', { class: 'reason', id: 'blocklist' }, `Blocklisted from this render: ${names}.`,
      mayOperate() ? h('button', { type: 'button', 'data-action': 'clear-blocklist', onclick: clearBlocklist }, 'Clear the blocklist') : null);
  }

  async function clearBlocklist() {
    try {
      await api('DELETE', `/renders/${render.id}/blocklist`);
      blocklist = [];
      replace(actionResult, h('div', { class: 'notice' }, 'The blocklist is cleared: those workers take its chunks again.'));
      drawProgress();
    } catch (e) {
      replace(actionResult, errorBox(e, 'Clear the blocklist'));
    }
  }

  // A waiting render says what it waits for.
  function whyWaiting() {
    if (render.status !== 'waiting' || !render.waiting_reason) return null;
    const why = render.waiting_reason;
    // Red only when it needs someone: a dependency failed, was canceled or deleted.
    return h('p', { class: /blocked/.test(why) ? 'reason' : 'muted', id: 'waiting-reason' }, why.charAt(0).toUpperCase() + why.slice(1));
  }

  // The first reason on this page of tasks, so that a failed render says
  // why at the top.
  function whyFailed() {
    if (render.failure_reason) return h('p', { class: 'reason', id: 'failure-reason-render' }, `Failed: ${render.failure_reason}`);
    const failed = tasks.find((t) => t.status === 'failed' && t.failure_reason);
    if (!failed) return null;
    return h('p', { class: 'reason' }, `Frames ${framesText(failed)} failed: ${failed.failure_reason}`,
      failed.exit_code != null ? ` (exit code ${failed.exit_code})` : '');
  }

  function drawSettings() {
    const row = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    replace(settings,
      h('h2', { id: 'settings-h' }, 'Settings'),
      h('dl', { class: 'settings' },
        row('Blend file', render.blend_file),
        row('Frames', `${render.frame_start}–${render.frame_end} in chunks of ${render.chunk_size}`
          + (render.chunk_size_auto
            ? ` (auto, aiming at ${render.target_chunk_seconds} s a chunk; ${render.measured_frame_seconds == null
              ? 'not measured yet' : `measured ${render.measured_frame_seconds.toFixed(2)} s a frame`})`
            : '')
          + (render.frame_order === 'preview-first' ? ', previews first (first, last, middle, every Nth frame)' : '')),
        row('Priority', render.priority),
        row('Engine', render.engine ?? 'as saved in the file'),
        row('Output', render.output),
        row('Retries per chunk', render.max_retries),
        row('Worker tags', render.tags.length ? render.tags.join(', ') : 'any worker'),
        row('Video', render.video ? `${render.video.fps} fps, ${render.video.codec}` : 'none'),
        row('Starts after', render.depends_on?.length
          ? render.depends_on.map((id, i) => [i ? ', ' : '', h('a', { href: `#/renders/${id}` }, id)])
          : 'nothing (starts at once)'),
        row('Owner', render.owner ?? '—'),
        row('Submitted', timeEl(render.created_at)),
        row('Started', timeEl(render.started_at)),
        row('Finished', timeEl(render.finished_at)),
        row('Id', render.id)));
  }

  function drawAll() {
    drawHeader();
    drawProgress();
    drawSettings();
  }

  async function loadWorkers() {
    try {
      const list = await api('GET', '/workers');
      workers = new Map(list.map((w) => [w.id, w.name]));
      drawTasks();
    } catch {
      // Worker names are a nicety: their ids show instead.
    }
  }

  // A slow answer must not overwrite a newer one: loads overlap when the
  // broker is busy, and only the last one asked is drawn.
  let tasksAsked = 0;
  let renderAsked = 0;

  async function loadTasks() {
    const asked = ++tasksAsked;
    try {
      const page = await api('GET', `/renders/${render.id}/tasks${query({ limit: TASKS_PAGE, offset: tasksOffset })}`);
      if (asked !== tasksAsked) return;
      tasks = page.items;
      tasksTotal = page.total;
      // Only a render with failed chunks can have a blocklist.
      if (tasks.some((t) => t.status === 'failed' || t.retries > 0) || blocklist.length) {
        blocklist = await api('GET', `/renders/${render.id}/blocklist`);
      }
      if (tasks.some((t) => t.worker_id && !workers.has(t.worker_id))) ctx.soon('workers', loadWorkers);
      drawTasks();
      drawProgress();
    } catch (e) {
      if (asked !== tasksAsked) return;
      replace(tasksBox, h('h2', { id: 'tasks-h' }, 'Tasks'), errorBox(e));
    }
  }

  function drawTasks() {
    const operate = mayOperate();
    const pages = Math.max(1, Math.ceil(tasksTotal / TASKS_PAGE));
    const pageNo = Math.floor(tasksOffset / TASKS_PAGE) + 1;
    replace(tasksBox,
      h('h2', { id: 'tasks-h' }, `Tasks (${tasksTotal})`),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {},
          h('th', {}, 'Frames'), h('th', {}, 'Status'), h('th', {}, 'Worker'), h('th', { class: 'num' }, 'Done'),
          h('th', { class: 'num hide-narrow' }, 'Retries'), h('th', { class: 'hide-narrow' }, 'Duration'), h('th', {}, 'Actions'))),
        h('tbody', {}, tasks.map((t) => h('tr', { 'data-task': t.id, class: t.id === openTask ? 'selected' : '' },
          h('td', {}, framesText(t), t.kind && t.kind !== 'blender' ? h('span', { class: 'muted' }, ` (${t.kind === 'ffmpeg' ? 'video' : t.kind})`) : null),
          h('td', {}, statusChip(t.status),
            t.failure_reason ? h('div', { class: 'reason' }, t.failure_reason, t.exit_code != null ? ` (exit ${t.exit_code})` : '') : null),
          h('td', {}, t.worker_id ? (workers.get(t.worker_id) ?? shortId(t.worker_id)) : '—'),
          h('td', { class: 'num' }, `${t.frames_done}/${t.frame_end - t.frame_start + 1}`),
          h('td', { class: 'num hide-narrow' }, t.retries),
          h('td', { class: 'hide-narrow' }, t.started_at ? duration(between(t.started_at, t.finished_at)) : '—'),
          h('td', {}, h('div', { class: 'actions' },
            h('button', { type: 'button', 'data-log': t.id, 'aria-label': `Log of frames ${framesText(t)}`, onclick: () => openLog(t.id) }, 'Log'),
            operate && t.status !== 'pending'
              ? h('button', { type: 'button', 'data-requeue': t.id, 'aria-label': `Requeue frames ${framesText(t)}`, onclick: () => requeueTask(t) }, 'Requeue')
              : null))))))),
      pages > 1 ? h('div', { class: 'pager' },
        h('button', { type: 'button', disabled: pageNo <= 1, onclick: () => { tasksOffset -= TASKS_PAGE; loadTasks(); } }, '← Previous'),
        h('span', {}, `Page ${pageNo} of ${pages}`),
        h('button', { type: 'button', disabled: pageNo >= pages, onclick: () => { tasksOffset += TASKS_PAGE; loadTasks(); } }, 'Next →')) : null);
  }

  async function requeueTask(t) {
    try {
      await api('POST', `/tasks/${t.id}/requeue`, {});
      replace(actionResult, h('div', { class: 'notice' }, `Frames ${framesText(t)} are queued again.`));
    } catch (e) {
      replace(actionResult, errorBox(e, `Requeue frames ${framesText(t)}`));
    }
    ctx.soon('tasks', loadTasks);
  }

  // The open task: its history and its log, followed while it renders.
  const logPre = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'Task log' });
  let taskDetail = null;

  function openLog(taskId) {
    openTask = taskId;
    // The page stays as it is (no reload): only the address changes, so it
    // can be shared or reloaded.
    history.replaceState(null, '', `#/renders/${render.id}?task=${taskId}`);
    drawTasks();
    logPre.textContent = '';
    loadTaskDetail();
    loadLog();
    taskPanel.hidden = false;
    taskPanel.scrollIntoView({ block: 'nearest' });
    logPre.focus({ preventScroll: true });
  }

  async function loadTaskDetail() {
    const taskId = openTask;
    try {
      taskDetail = await api('GET', `/tasks/${taskId}`);
    } catch (e) {
      taskDetail = null;
      replace(taskPanel, h('h2', { id: 'task-h' }, 'Task'), errorBox(e));
      return;
    }
    if (taskId === openTask) drawTaskPanel();
  }

  async function loadLog() {
    const taskId = openTask;
    const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
    try {
      const text = await api('GET', `/tasks/${taskId}/log`);
      if (taskId !== openTask) return;
      logPre.textContent = text || '(nothing logged yet)';
    } catch (e) {
      logPre.textContent = `The log could not be read: ${e.message}`;
    }
    if (atEnd) logPre.scrollTop = logPre.scrollHeight;
  }

  function drawTaskPanel() {
    const t = taskDetail;
    const live = t.status === 'running';
    replace(taskPanel,
      h('h2', { id: 'task-h' }, `Frames ${framesText(t)} `, statusChip(t.status)),
      t.failure_reason ? h('p', { class: 'reason', id: 'failure-reason' }, `Failed: ${t.failure_reason}`, t.exit_code != null ? ` (exit code ${t.exit_code})` : '') : null,
      h('h3', {}, 'History'),
      t.history.length === 0 ? h('p', { class: 'muted' }, 'Nothing happened to it yet.')
        : h('ol', { class: 'history' }, t.history.map((e) => h('li', {},
          timeEl(e.at), ' — ', e.event,
          e.worker_id ? ` on ${workers.get(e.worker_id) ?? shortId(e.worker_id)}` : '',
          e.actor ? ` by ${e.actor}` : '',
          e.detail ? `: ${e.detail}` : ''))),
      h('div', { class: 'actions' },
        h('h3', {}, live ? 'Log (following live)' : 'Log'),
        h('a', { class: 'button', href: `/tasks/${t.id}/log`, download: `task-${t.id}.log` }, 'Download log'),
        h('button', { type: 'button', onclick: () => { openTask = null; taskPanel.hidden = true; history.replaceState(null, '', `#/renders/${render.id}`); drawTasks(); } }, 'Close')),
      logPre);
  }

  // The workers' live preview of the newest frame saved (a small JPEG the
  // broker keeps per render) wins over the newest full frame found: it is
  // there while a chunk renders, and for frames the broker cannot serve.
  let preview = null;
  let newestFrame = null;

  function drawLatest() {
    if (preview) {
      replace(latest,
        h('h2', { id: 'latest-h' }, `Live preview: frame ${preview.frame}`),
        h('img', { class: 'frame-latest preview', src: preview.url, alt: `Preview of frame ${preview.frame} of ${render.name}` }));
      return;
    }
    replace(latest,
      h('h2', { id: 'latest-h' }, newestFrame ? `Latest frame: ${newestFrame.frame}` : 'Latest frame'),
      newestFrame ? h('img', { class: 'frame-latest', src: newestFrame.url, alt: `Frame ${newestFrame.frame} of ${render.name}` })
        : h('p', { class: 'muted' }, 'No frame is rendered yet.'));
  }

  async function loadPreview() {
    let answer;
    try {
      answer = await fetch(`/renders/${render.id}/preview`, { credentials: 'same-origin', cache: 'no-cache' });
    } catch {
      return;
    }
    // 404: no preview yet (or previews are off on the agents).
    if (!answer.ok) return;
    const blob = await answer.blob();
    if (preview) URL.revokeObjectURL(preview.url);
    preview = { url: URL.createObjectURL(blob), frame: answer.headers.get('X-Preview-Frame') };
    drawLatest();
  }

  async function loadFrames() {
    let answer;
    try {
      answer = await api('GET', `/renders/${render.id}/frames`);
    } catch (e) {
      replace(latest, h('h2', { id: 'latest-h' }, 'Latest frame'), errorBox(e));
      replace(framesBox);
      return;
    }
    const frames = answer.frames || [];
    newestFrame = frames.reduce((a, f) => (!a || f.modified_at > a.modified_at ? f : a), null);
    drawLatest();
    replace(framesBox,
      h('h2', { id: 'frames-h' }, `Frames done (${frames.length})`),
      // One archive of them all, streamed by the broker (frames uploaded by
      // the workers, or found in the output folder).
      frames.length > 0 && h('p', {},
        h('a', { class: 'button', href: `/renders/${render.id}/frames.zip`, download: `${render.name}-frames.zip` },
          'Download all frames (ZIP)')),
      frames.length === 0 ? h('p', { class: 'muted' }, 'None yet.')
        : h('div', { class: 'frames' }, frames.map((f) => h('figure', {},
          h('a', { href: f.url, target: '_blank', rel: 'noopener', title: f.name || undefined },
            h('img', { src: f.url, loading: 'lazy', alt: `Frame ${f.frame}` })),
          h('figcaption', {}, f.frame)))));
  }

  async function reloadRender() {
    const asked = ++renderAsked;
    try {
      const fresh = await api('GET', `/renders/${render.id}`);
      if (asked !== renderAsked) return;
      render = fresh;
      drawAll();
    } catch (e) {
      if (asked !== renderAsked) return;
      replace(actionResult, errorBox(e));
    }
  }

  function reloadAll() {
    ctx.soon('render', reloadRender);
    ctx.soon('tasks', loadTasks);
    ctx.soon('frames', loadFrames);
    ctx.soon('preview', loadPreview);
    if (openTask) {
      ctx.soon('task', loadTaskDetail);
      ctx.soon('log', loadLog);
    }
  }

  ctx.stream(`/events${query({ render: render.id })}`, {
    render: (e) => {
      const changed = e.status !== render.status;
      render = { ...render, status: e.status, progress: e.progress ?? render.progress };
      if (changed) {
        // Status changes carry timestamps (started, finished) the event does not.
        ctx.soon('render', reloadRender);
        ctx.soon('tasks', loadTasks);
      }
      drawAll();
    },
    render_deleted: () => {
      replace(main, h('h1', {}, 'Render deleted'),
        h('p', {}, `${render.name} was deleted. `, h('a', { href: '#/renders' }, 'See every render'), '.'));
      ctx.leave();
    },
    task: (e) => {
      ctx.soon('tasks', loadTasks);
      // A completed render's tasks that still move are its video's.
      if (render.video && render.status === 'completed') ctx.soon('render', reloadRender);
      if (e.status === 'completed') {
        ctx.soon('frames', loadFrames);
        ctx.soon('preview', loadPreview);
      }
      if (e.task_id === openTask) ctx.soon('task', loadTaskDetail);
    },
    progress: (e) => {
      const t = tasks.find((x) => x.id === e.task_id);
      if (t && t.frames_done !== e.frames_done) {
        t.frames_done = e.frames_done;
        drawTasks();
      }
      ctx.soon('frames', loadFrames);
      ctx.soon('preview', loadPreview);
    },
    log: (e) => {
      if (e.task_id === openTask) ctx.soon('log', loadLog);
    },
  }, reloadAll);

  drawAll();
  await Promise.all([loadWorkers(), loadTasks(), loadFrames(), loadPreview()]);
  if (openTask) {
    taskPanel.hidden = false;
    replace(taskPanel, h('p', { class: 'muted' }, 'Loading the task…'));
    await Promise.all([loadTaskDetail(), loadLog()]);
  }
}
