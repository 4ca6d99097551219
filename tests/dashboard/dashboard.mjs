// Drives the dashboard in Debian's Chromium through playwright-core, against
// a live broker with real agents rendering with real Blender (started by
// tests/dashboard.rs, which passes everything in the environment). Prints
// "ok: <scenario>" or "FAILED: <scenario>: <why>" per scenario and exits 1 if
// any failed. Lines starting "CONTROL " ask the Rust side to stop or start
// the broker; it answers on stdin.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('BROKER');
const ADMIN = env('ADMIN_TOKEN');
const VIEWER = env('VIEWER_TOKEN');
const ARTIFACTS = env('ARTIFACTS');
const LONG_SCENE = env('SCENE_LONG');
const DENOISE_SCENE = env('SCENE_DENOISE');
const { chromium } = await import(pathToFileURL(join(env('PLAYWRIGHT_CORE'), 'index.mjs')).href);

const WAIT = 120_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const STREAM = /\/events(\/summary)?(\?|$)/;

const stdin = createInterface({ input: process.stdin });
const answers = stdin[Symbol.asyncIterator]();
async function control(command) {
  console.log(`CONTROL ${command}`);
  const { value } = await answers.next();
  if (value !== 'ok') throw new Error(`${command}: the test harness answered ${value}`);
}

const failures = [];
async function scenario(name, fn) {
  try {
    await fn();
    console.log(`ok: ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`FAILED: ${name}: ${e.stack || e}`);
  }
}
function check(condition, message) {
  if (!condition) throw new Error(message);
}

const profiles = [];
async function browser() {
  const profile = mkdtempSync(join(tmpdir(), 'renderfarm-chromium-'));
  profiles.push(profile);
  // Playwright passes --headless and --user-data-dir itself (headless,
  // the profile argument); the rest are the flags for a quiet, offline run.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM'),
    headless: true,
    viewport: DESKTOP,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
  });
  // Records when each stream event reaches the page, to tell fetches that
  // follow events from fetches on a timer. (Init scripts are not subject to
  // the page's Content-Security-Policy.)
  await context.addInitScript(() => {
    window.__events = [];
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(url, init) {
        super(url, init);
        const kinds = ['render', 'render_deleted', 'task', 'progress', 'log', 'worker', 'worker_deleted', 'reset', 'summary'];
        for (const kind of kinds) this.addEventListener(kind, () => window.__events.push({ at: Date.now(), kind }));
      }
    };
  });
  const page = context.pages()[0] ?? await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push({ at: Date.now(), method: r.method(), url: r.url() }));
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  return { context, page, requests, problems };
}

async function shoot(page, name, { at } = {}) {
  for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(size);
    if (at) await page.locator(at).scrollIntoViewIfNeeded();
    else await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(ARTIFACTS, `dashboard-${name}-${label}.png`), fullPage: label === 'desktop' ? false : true });
  }
  await page.setViewportSize(DESKTOP);
}

async function signIn(page, token) {
  await page.goto(`${BASE}/`);
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#nav').waitFor({ state: 'visible', timeout: WAIT });
}

async function open(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}

async function live(page) {
  try {
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live', null, { timeout: 30_000 });
  } catch {
    const shown = await page.locator('#conn').textContent();
    throw new Error(`the page's event stream is not live after 30 s (it shows ${JSON.stringify(shown)}): does the broker serve GET /events and /events/summary?`);
  }
}

/** Requests of the page in [from, to] that are not its streams. */
const fetchesBetween = (requests, from, to) =>
  requests.filter((r) => r.at >= from && r.at <= to && !STREAM.test(new URL(r.url).pathname + new URL(r.url).search));

/** Every fetch in [from, to] must follow a stream event of the page (the pages fetch at most once a second per resource, after an event). */
async function assertEventDriven(page, requests, from, to) {
  const events = await page.evaluate(() => window.__events);
  const unexplained = fetchesBetween(requests, from, to)
    .filter((r) => !events.some((e) => e.at <= r.at && r.at - e.at <= 3000));
  check(unexplained.length === 0,
    `requests that followed no event (polling?): ${unexplained.map((r) => `${r.method} ${r.url}`).join(', ')}`);
}

async function textOf(page, selector) {
  return (await page.locator(selector).first().textContent()) ?? '';
}

const admin = await browser();
const { page } = admin;
let longId = null;
let failId = null;

await scenario('the sign-in page shows at / and a token signs in', async () => {
  await page.goto(`${BASE}/`);
  await page.locator('#token').waitFor();
  await shoot(page, 'signin');
  await page.locator('#token').fill('rf_not_a_real_token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('.error').waitFor();
  check(!(await textOf(page, '.error')).includes('{'), 'the refusal shows as a message, not JSON');
  await signIn(page, ADMIN);
  check((await textOf(page, '#who')).includes('admin'), 'the header names the role');
});

await scenario('with an idle farm, the pages make no requests after they loaded', async () => {
  for (const [hash, name] of [['#/', 'farm-idle'], ['#/renders', 'renders-empty'], ['#/workers', 'workers']]) {
    await open(page, hash);
    await live(page);
    await page.waitForLoadState('networkidle');
    const from = Date.now();
    await page.waitForTimeout(5000);
    const made = fetchesBetween(admin.requests, from, Date.now());
    check(made.length === 0, `${hash} made ${made.length} requests while the farm was idle: ${made.map((r) => r.url).join(', ')}`);
    if (name === 'workers') {
      const rows = await page.locator('tr[data-worker]').count();
      check(rows === 2, `the workers page lists the 2 agents (found ${rows})`);
    }
    await shoot(page, name);
  }
});

await scenario('the submit form shows the API\'s validation message', async () => {
  await open(page, '#/submit');
  await page.locator('#name').fill('backwards');
  await page.locator('#blend_file').fill(LONG_SCENE);
  await page.locator('#frame_start').fill('10');
  await page.locator('#frame_end').fill('1');
  await page.getByRole('button', { name: 'Submit' }).click();
  const error = page.locator('form .error');
  await error.waitFor({ timeout: WAIT });
  const text = await error.textContent();
  check(/frame/i.test(text) && !text.includes('"error"'), `the API's message shows: ${text}`);
  await shoot(page, 'submit');
});

await scenario('a render submitted from the form shows its progress move live, without a reload and without polling', async () => {
  await open(page, '#/submit');
  await page.locator('#name').fill('dashboard-shot');
  await page.locator('#blend_file').fill(LONG_SCENE);
  await page.locator('#frame_start').fill('1');
  await page.locator('#frame_end').fill('400');
  await page.locator('#chunk_size').fill('20');
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.waitForFunction(() => /^#\/renders\/[0-9a-f-]{36}$/.test(location.hash), null, { timeout: WAIT });
  longId = (await page.evaluate(() => location.hash)).split('/').pop();
  await live(page);
  // A mark on the document: a reload would lose it.
  await page.evaluate(() => { window.__sameDocument = true; });
  const from = Date.now();
  const done = () => page.$eval('#main section progress', (p) => p.value);
  const before = await done();
  await page.waitForFunction((b) => document.querySelector('#main section progress').value > b + 1, before, { timeout: WAIT });
  await page.waitForFunction(() => document.querySelector('[data-task] .status.completed'), null, { timeout: WAIT });
  check(await page.evaluate(() => window.__sameDocument === true), 'the page was not reloaded');
  const eta = await textOf(page, '#eta');
  check(eta.startsWith('about'), `an estimate of the time left shows (${eta})`);
  await assertEventDriven(page, admin.requests, from, Date.now());
  await shoot(page, 'render');
  // The farm page while it renders (the README's picture).
  await open(page, '#/');
  await page.locator('[aria-labelledby="running"] a').first().waitFor({ timeout: WAIT });
  await shoot(page, 'farm-busy');
});

await scenario('the latest frame and the frames done show as images', async () => {
  check(longId, 'needs the submitted render');
  await open(page, `#/renders/${longId}`);
  try {
    await page.locator('.frame-latest').waitFor({ timeout: 30_000 });
  } catch {
    throw new Error(`no frame shows; the page says: ${JSON.stringify(await textOf(page, '[aria-labelledby="latest-h"]'))} (GET /renders/{id}/frames is built on branch list)`);
  }
  await page.waitForFunction(() => {
    const img = document.querySelector('.frame-latest');
    return img.complete && img.naturalWidth === 320;
  }, null, { timeout: WAIT });
  // The agents' live preview of the newest frame (a JPEG of a 320-pixel
  // frame: not enlarged) takes the place of the latest frame while it renders.
  await page.waitForFunction(() => {
    const img = document.querySelector('.frame-latest.preview');
    const heading = document.getElementById('latest-h');
    return img && img.complete && img.naturalWidth === 320 && /^Live preview: frame \d+$/.test(heading.textContent);
  }, null, { timeout: WAIT });
  // The preview of a frame arrives before its upload does (the agent makes
  // it before the upload removes the file): the grid follows when it is stored.
  try {
    await page.locator('.frames img').first().waitFor({ timeout: WAIT });
  } catch {
    throw new Error(`the grid shows no frame done; the page says: ${JSON.stringify(await textOf(page, '[aria-labelledby="frames-h"]'))}`);
  }
  // The archive of every frame downloads with the session, as a ZIP.
  const zip = await page.evaluate(async () => {
    const link = document.querySelector('a[href$="/frames.zip"]');
    if (!link) return null;
    const answer = await fetch(link.getAttribute('href'));
    const bytes = new Uint8Array(await answer.arrayBuffer());
    return { status: answer.status, type: answer.headers.get('content-type'), magic: String.fromCharCode(bytes[0], bytes[1]) };
  });
  check(zip && zip.status === 200 && zip.type === 'application/zip' && zip.magic === 'PK',
    `the ZIP of every frame downloads: ${JSON.stringify(zip)}`);
  await shoot(page, 'render-frames');
});

await scenario('a running task\'s log opens and follows the render live', async () => {
  check(longId, 'needs the submitted render');
  await open(page, `#/renders/${longId}`);
  const running = page.locator('tr[data-task]:has(.status.running) button[data-log]').first();
  await running.waitFor({ timeout: WAIT });
  await running.click();
  await page.locator('#task-panel h3', { hasText: 'History' }).waitFor();
  const log = page.locator('pre.log');
  await page.waitForFunction(() => /Fra:/.test(document.querySelector('pre.log').textContent), null, { timeout: WAIT });
  const first = (await log.textContent()).length;
  await page.waitForFunction((n) => document.querySelector('pre.log').textContent.length > n, first, { timeout: WAIT });
  check(await page.evaluate(() => location.hash.includes('?task=')), 'the open log is in the address');
  // The download link is authenticated by the session cookie alone.
  const href = await page.locator('#task-panel a[download]').getAttribute('href');
  const download = await page.context().request.get(`${BASE}${href}`);
  check(download.ok() && (await download.text()).includes('Fra:'), `the log downloads (${download.status()})`);
  await shoot(page, 'render-log', { at: '#task-panel' });
});

await scenario('pause and resume from the render page', async () => {
  check(longId, 'needs the submitted render');
  await open(page, `#/renders/${longId}`);
  await page.locator('button[data-action="pause"]').click({ timeout: WAIT });
  await page.locator('h1 .status.paused').waitFor({ timeout: WAIT });
  await page.locator('button[data-action="resume"]').click();
  await page.waitForFunction(() => /queued|rendering/.test(document.querySelector('h1 .status').textContent), null, { timeout: WAIT });
});

await scenario('a failed chunk shows its reason (Cycles denoising on this Blender)', async () => {
  await open(page, '#/submit');
  await page.locator('#name').fill('denoised');
  await page.locator('#blend_file').fill(DENOISE_SCENE);
  await page.locator('#frame_start').fill('1');
  await page.locator('#frame_end').fill('2');
  await page.locator('#max_retries').fill('0');
  await page.locator('#priority').selectOption('urgent');
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.waitForFunction(() => /^#\/renders\/[0-9a-f-]{36}$/.test(location.hash), null, { timeout: WAIT });
  failId = (await page.evaluate(() => location.hash)).split('/').pop();
  await page.locator('h1 .status.failed').waitFor({ timeout: WAIT });
  const reason = page.locator('tr[data-task] .reason').first();
  await reason.waitFor({ timeout: WAIT });
  const row = await reason.textContent();
  check(/exit 1/.test(row), `the row shows the exit code: ${row}`);
  await page.locator('tr[data-task] button[data-log]').first().click();
  await page.locator('#failure-reason').waitFor();
  const history = await textOf(page, 'ol.history');
  check(/failed/.test(history), `the history shows the failure: ${history}`);
  await page.waitForFunction(() => /OpenImageDenoiser/.test(document.querySelector('pre.log').textContent), null, { timeout: WAIT });
  const top = await textOf(page, '[aria-labelledby="progress-h"] .reason');
  check(/failed/.test(top), `the progress panel says why: ${top}`);
  await shoot(page, 'render-failed');
  await shoot(page, 'render-failed-task', { at: '#task-panel' });
});

await scenario('cancel from the render page', async () => {
  check(longId, 'needs the submitted render');
  await open(page, `#/renders/${longId}`);
  await page.locator('button[data-action="cancel"]').click({ timeout: WAIT });
  await page.locator('h1 .status.canceled').waitFor({ timeout: WAIT });
  await page.waitForFunction(() => !document.querySelector('[data-task] .status.running'), null, { timeout: WAIT });
});

await scenario('a render that waits for another says why, and Release starts it', async () => {
  const submitForm = async (name, dependsOn) => {
    await open(page, '#/submit');
    await page.locator('#name').fill(name);
    await page.locator('#blend_file').fill(LONG_SCENE);
    await page.locator('#frame_start').fill('1');
    await page.locator('#frame_end').fill('1');
    await page.locator('#priority').selectOption('low');
    if (dependsOn) await page.locator('#depends_on').fill(dependsOn);
    await page.getByRole('button', { name: 'Submit' }).click();
    await page.waitForFunction((before) => /^#\/renders\/[0-9a-f-]{36}$/.test(location.hash) && location.hash !== before,
      '#/submit', { timeout: WAIT });
    return (await page.evaluate(() => location.hash)).split('/').pop();
  };
  const first = await submitForm('dashboard-layout');
  // Paused, so that it stays unfinished while the second waits for it.
  await page.locator('button[data-action="pause"]').click({ timeout: WAIT });
  await page.locator('h1 .status.paused').waitFor({ timeout: WAIT });
  const second = await submitForm('dashboard-lighting', first);
  check(second !== first, 'the second render has a page of its own');
  await page.locator('h1 .status.waiting').waitFor({ timeout: WAIT });
  const reason = await textOf(page, '#waiting-reason');
  check(/dashboard-layout/.test(reason) && /paused/.test(reason), `the reason names the dependency and how it stands: ${reason}`);
  const settings = await textOf(page, '[aria-labelledby="settings-h"]');
  check(settings.includes(first), `the settings link the dependency: ${settings}`);
  check(await page.locator('button[data-action="pause"]').count() === 0, 'a waiting render cannot be paused');
  await shoot(page, 'render-waiting');
  await page.locator('button[data-action="release"]').click();
  await page.waitForFunction(() => !document.querySelector('h1 .status.waiting'), null, { timeout: WAIT });
  check(await page.locator('#waiting-reason').count() === 0, 'no reason once released');
  await page.locator('button[data-action="cancel"]').click({ timeout: WAIT });
  await page.locator('h1 .status.canceled').waitFor({ timeout: WAIT });
  await open(page, `#/renders/${first}`);
  await page.locator('button[data-action="cancel"]').click({ timeout: WAIT });
  await page.locator('h1 .status.canceled').waitFor({ timeout: WAIT });
});

await scenario('a render with a video shows the video\'s state and a link that downloads the MP4', async () => {
  // The agents run ffmpeg when they found it (renderfarm-worker --ffmpeg).
  const workers = await page.evaluate(async () => (await fetch('/workers')).json());
  if (!workers.some((w) => (w.kinds ?? []).includes('ffmpeg'))) {
    const why = 'no agent of this farm runs ffmpeg (install it with `apt-get install ffmpeg`)';
    if (process.env.RENDERFARM_REQUIRE_FFMPEG === '1') throw new Error(`ffmpeg is required (RENDERFARM_REQUIRE_FFMPEG=1): ${why}`);
    console.log(`SKIPPED: the video link: ${why}`);
    return;
  }
  await open(page, '#/submit');
  await page.locator('#name').fill('dashboard-video');
  await page.locator('#blend_file').fill(LONG_SCENE);
  await page.locator('#frame_start').fill('1');
  await page.locator('#frame_end').fill('3');
  await page.locator('#chunk_size').fill('3');
  await page.locator('#video_fps').fill('12');
  await page.locator('#priority').selectOption('urgent');
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.waitForFunction(() => /^#\/renders\/[0-9a-f-]{36}$/.test(location.hash), null, { timeout: WAIT });
  await live(page);
  const settings = await textOf(page, '[aria-labelledby="settings-h"]');
  check(settings.includes('12 fps, h264'), `the settings name the video: ${settings}`);
  // Followed live: the render completes, then its video task runs.
  await page.locator('#video-link').waitFor({ timeout: WAIT });
  const state = await textOf(page, '#video');
  check(/ready/.test(state), `the video is ready: ${state}`);
  // The render and its task list reload on gates of their own (at most once
  // a second each), so the list may catch up a moment after the link shows.
  const listed = await page.waitForFunction(
    () => /\(video\)/.test(document.querySelector('[aria-labelledby="tasks-h"]').textContent), null, { timeout: 5_000 },
  ).then(() => true, () => false);
  const rows = await textOf(page, '[aria-labelledby="tasks-h"]');
  check(listed, `the video task is in the task list within 5 s of the link: ${rows}`);
  const mp4 = await page.evaluate(async () => {
    const answer = await fetch(document.getElementById('video-link').getAttribute('href'));
    const bytes = new Uint8Array(await answer.arrayBuffer());
    return { status: answer.status, type: answer.headers.get('content-type'), box: String.fromCharCode(...bytes.slice(4, 8)) };
  });
  check(mp4.status === 200 && mp4.type === 'video/mp4' && mp4.box === 'ftyp', `the MP4 downloads: ${JSON.stringify(mp4)}`);
  await shoot(page, 'render-video');
});

await scenario('several renders at once: each one the broker refuses is named with its message', async () => {
  await open(page, '#/renders');
  await page.locator('tr[data-render]').first().waitFor({ timeout: WAIT });
  await page.getByLabel('Select every render on this page').check();
  await page.locator('button[data-action="pause"]').click();
  const error = page.locator('.error[role="alert"]');
  await error.waitFor({ timeout: WAIT });
  const text = await error.textContent();
  check(text.includes('dashboard-shot') && text.includes('denoised'), `both finished renders are named: ${text}`);
  check(!text.includes('{"'), 'messages, not JSON');
  await shoot(page, 'renders');
});

await scenario('drain a worker, then enable it', async () => {
  await open(page, '#/workers');
  const drain = page.locator('button[data-action="drain"]').first();
  await drain.waitFor({ timeout: WAIT });
  await drain.click();
  await page.locator('tr[data-worker] .status.draining').first().waitFor({ timeout: WAIT });
  await shoot(page, 'workers-draining');
  await page.locator('button[data-action="enable"]').first().click();
  await page.waitForFunction(() => !document.querySelector('tr[data-worker] .status.draining'), null, { timeout: WAIT });
});

await scenario('an operator sets a worker\'s hours, is told what a bad schedule lacks, and clears them', async () => {
  await open(page, '#/workers');
  const row = page.locator('tr[data-worker]').first();
  await row.waitFor({ timeout: WAIT });
  check((await row.locator('td').nth(4).textContent()).includes('any time'), 'a worker without hours takes work at any time');
  await row.locator('details.hours-form summary').click();
  await row.locator('input[name="available"]').fill('weekdays');
  await row.getByRole('button', { name: 'Set' }).click();
  await page.locator('.error').first().waitFor({ timeout: WAIT });
  check((await textOf(page, '.error')).includes('not a day'), 'the broker\'s message on a bad schedule is shown');
  const again = page.locator('tr[data-worker]').first();
  await again.locator('details.hours-form summary').click();
  await again.locator('input[name="available"]').fill('Always');
  await again.getByRole('button', { name: 'Set' }).click();
  await page.locator('tr[data-worker] [data-hours="always"]').first().waitFor({ timeout: WAIT });
  check((await textOf(page, 'tr[data-worker] [data-hours="always"]')).includes('set by an operator'), 'who set the hours is shown');
  check((await textOf(page, 'tr[data-worker] [data-available-now]')).includes('in hours'), 'whether it takes work now is shown');
  const cleared = page.locator('tr[data-worker]').first();
  await cleared.locator('details.hours-form summary').click();
  await cleared.locator('button[data-action="clear-hours"]').click();
  await page.waitForFunction(() => !document.querySelector('tr[data-worker] [data-hours]'), null, { timeout: WAIT });
});

await scenario('an operator sets a path variable, sees it and deletes it; workers show their platform', async () => {
  await open(page, '#/workers');
  await page.locator('#variable-form').waitFor({ timeout: WAIT });
  check((await textOf(page, 'tr[data-worker] td[data-platform]')) === 'linux', 'a worker shows its platform');
  await page.locator('#variable-name').fill('Bad-Name');
  await page.locator('#variable-linux').fill('/mnt/projects');
  await page.getByRole('button', { name: 'Set variable' }).click();
  await page.locator('#path-variables .error').waitFor({ timeout: WAIT });
  check((await textOf(page, '#path-variables .error')).includes('not a valid variable name'), 'the broker\'s message is shown');
  await page.locator('#variable-name').fill('projects');
  await page.locator('#variable-linux').fill('/mnt/projects');
  await page.locator('#variable-windows').fill('p:/projects');
  await page.getByRole('button', { name: 'Set variable' }).click();
  await page.locator('tr[data-variable="projects"]').waitFor({ timeout: WAIT });
  check((await textOf(page, 'tr[data-variable="projects"]')).includes('P:\\projects'), 'the value as the broker stored it');
  await shoot(page, 'path-variables');
  await page.locator('button[data-action="delete-variable"]').click();
  await page.waitForFunction(() => !document.querySelector('tr[data-variable="projects"]'), null, { timeout: WAIT });
});

await scenario('one task is requeued from its row', async () => {
  check(failId, 'needs the failed render');
  await open(page, `#/renders/${failId}`);
  await page.locator('button[data-requeue]').first().click({ timeout: WAIT });
  const answer = page.locator('#main .notice, #main .error').first();
  await answer.waitFor({ timeout: WAIT });
  const text = await answer.textContent();
  check(/queued again/.test(text), `the task is queued again; the page says: ${text}`);
  await page.locator('tr[data-task] button[data-log]').first().click();
  await page.waitForFunction(() => /requeued/.test(document.querySelector('ol.history')?.textContent ?? ''), null, { timeout: WAIT });
});

await scenario('an unknown render id is a not-found page', async () => {
  await open(page, '#/renders/0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d');
  await page.locator('#not-found').waitFor({ timeout: WAIT });
  const text = await textOf(page, '#not-found');
  check(text.includes('Render not found') && !text.includes('"error"'), `a page that says so: ${text}`);
  await shoot(page, 'not-found');
});

await scenario('a viewer sees no action buttons', async () => {
  const viewer = await browser();
  try {
    await signIn(viewer.page, VIEWER);
    check(await viewer.page.locator('#nav-submit').isHidden(), 'no Submit in the menu');
    for (const hash of ['#/renders', `#/renders/${longId}`, `#/renders/${failId}`, '#/workers']) {
      await open(viewer.page, hash);
      await viewer.page.locator('h1').first().waitFor();
      await viewer.page.waitForLoadState('networkidle');
      const actions = await viewer.page.locator('button[data-action], button[data-requeue], input[type=checkbox]').count();
      check(actions === 0, `${hash}: ${actions} action controls shown to a viewer`);
      check(await viewer.page.locator('h1').count() > 0, `${hash} shows a page`);
    }
    await open(viewer.page, `#/renders/${longId}`);
    await viewer.page.locator('[data-task]').first().waitFor();
    await shoot(viewer.page, 'viewer-render');
    check(viewer.problems.length === 0, viewer.problems.join('; '));
  } finally {
    await viewer.context.close();
  }
});

await scenario('when the stream drops the page says it is reconnecting, and reconnects by itself', async () => {
  await open(page, '#/');
  await live(page);
  await control('stop-broker');
  await page.waitForFunction(() => document.getElementById('conn').textContent === 'reconnecting…', null, { timeout: WAIT });
  await shoot(page, 'reconnecting');
  await control('start-broker');
  await page.waitForFunction(() => document.getElementById('conn').textContent === 'live', null, { timeout: WAIT });
  await page.locator('[data-stat="frames-last-hour"]').waitFor({ timeout: WAIT });
  await shoot(page, 'farm');
  // The system's dark scheme.
  await page.emulateMedia({ colorScheme: 'dark' });
  await shoot(page, 'farm-dark');
  await page.emulateMedia({ colorScheme: null });
});

await scenario('no page error happened', async () => {
  check(admin.problems.length === 0, admin.problems.join('; '));
});

await admin.context.close();
for (const p of profiles) rmSync(p, { recursive: true, force: true });
stdin.close();
console.log(failures.length ? `dashboard: ${failures.length} scenario(s) failed: ${failures.join('; ')}` : 'dashboard: every scenario passed');
process.exit(failures.length ? 1 : 0);
