// The dashboard's shell: who is signed in, which page shows (from the URL's
// hash, so every page can be linked to and reloaded), and the page's
// lifetime (its streams and pending fetches end when another page opens).

import { api, session, whenSignedOut, maySubmit } from './api.js';
import { Debouncer, Stream, noStream } from './live.js';
import { h, replace, notice, errorBox } from './ui.js';
import { farmPage } from './farm.js';
import { rendersPage } from './renders.js';
import { renderPage } from './render.js';
import { workersPage } from './workers.js';
import { submitPage } from './submit.js';

const main = document.getElementById('main');
let current = null;

/** What a page may use while it is shown; all of it ends when it is left. */
class PageContext {
  constructor(params) {
    this.params = params;
    this.debouncer = new Debouncer();
    this.streams = [];
    this.left = false;
  }
  soon(key, fn) {
    if (!this.left) this.debouncer.soon(key, () => { if (!this.left) fn(); });
  }
  stream(url, handlers, onReset) {
    const s = new Stream(url, handlers, onReset);
    this.streams.push(s);
    return s;
  }
  leave() {
    this.left = true;
    this.debouncer.stop();
    for (const s of this.streams) s.close();
  }
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = raw.split('?');
  return { path, params: new URLSearchParams(search) };
}

function route(path) {
  if (path === '/' || path === '') return { page: farmPage, nav: '#/', title: 'Farm' };
  if (path === '/renders') return { page: rendersPage, nav: '#/renders', title: 'Renders' };
  const one = path.match(/^\/renders\/([^/]+)$/);
  if (one) return { page: (m, ctx) => renderPage(m, ctx, decodeURIComponent(one[1])), nav: '#/renders', title: 'Render' };
  if (path === '/workers') return { page: workersPage, nav: '#/workers', title: 'Workers' };
  if (path === '/submit') return { page: submitPage, nav: '#/submit', title: 'Submit' };
  return { page: notFoundPage, nav: null, title: 'Not found' };
}

function notFoundPage(m) {
  replace(m,
    h('h1', {}, 'Page not found'),
    h('p', {}, `There is no dashboard page at ${location.hash}. `, h('a', { href: '#/' }, 'Go to the farm overview'), '.'));
}

async function show(focus) {
  current?.leave();
  notice(null);
  noStream();
  const { path, params } = parseHash();
  if (!session.current) {
    current = null;
    signInPage();
    return;
  }
  const { page, nav, title } = route(path);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${title} · renderfarm`;
  const ctx = new PageContext(params);
  current = ctx;
  replace(main, h('p', { class: 'muted' }, 'Loading…'));
  if (focus) main.focus();
  try {
    await page(main, ctx);
  } catch (e) {
    if (!ctx.left) replace(main, h('h1', {}, title), errorBox(e));
  }
}

function showWho() {
  const who = document.getElementById('who');
  const nav = document.getElementById('nav');
  if (!session.current) {
    nav.hidden = true;
    replace(who);
    return;
  }
  nav.hidden = false;
  document.getElementById('nav-submit').hidden = !maySubmit();
  const { name, role, csrf } = session.current;
  replace(who,
    h('span', {}, name, ' ', h('span', { class: 'status' }, role)),
    // Only a browser session signs out; with --auth off there is none.
    csrf ? h('button', { type: 'button', onclick: signOut }, 'Sign out') : null);
}

async function signOut() {
  try {
    await api('DELETE', '/session');
  } catch (e) {
    notice(e.message);
    return;
  }
  session.current = null;
  showWho();
  show(true);
}

function signInPage(message) {
  document.title = 'Sign in · renderfarm';
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('div', { 'aria-live': 'assertive' }, message ? errorBox({ message }) : null);
  const form = h('form', { class: 'signin panel', onsubmit: async (e) => {
    e.preventDefault();
    replace(error);
    const token = input.value.trim();
    if (!token) {
      replace(error, errorBox({ message: 'Paste the token an admin gave you (it starts with rf_).' }));
      return;
    }
    try {
      session.current = await api('POST', '/session', {}, { bearer: token });
    } catch (err) {
      replace(error, errorBox(err));
      return;
    }
    showWho();
    show(true);
  } },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'Sign in with your renderfarm token. This browser keeps a session for up to 12 hours; the token itself is not stored.'),
  h('label', { for: 'token' }, 'Token', input),
  error,
  h('div', {}, h('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  replace(main, form);
  input.focus();
}

whenSignedOut((message) => {
  session.current = null;
  current?.leave();
  showWho();
  signInPage(message);
});

async function start() {
  try {
    session.current = await api('GET', '/session');
  } catch (e) {
    if (e.status === 401) {
      session.current = null;
    } else {
      replace(main, h('h1', {}, 'renderfarm'), errorBox(e),
        h('p', {}, h('button', { type: 'button', onclick: start }, 'Try again')));
      return;
    }
  }
  showWho();
  show(false);
}

window.addEventListener('hashchange', () => show(true));
start();

export { PageContext };
