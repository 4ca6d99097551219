// Talks to the broker. Every failure becomes an ApiError carrying the
// broker's own message (its JSON error body), never raw JSON.

/** An answer that was not a success, with the broker's message. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const RANKS = { viewer: 0, artist: 1, operator: 2, admin: 3 };

/** Who is signed in: {name, role, csrf}, or null. */
export const session = { current: null };

/** Called when the broker says the session is gone (401 on a signed-in page). */
let onSignedOut = () => {};
export function whenSignedOut(fn) { onSignedOut = fn; }

export function rank() {
  return session.current ? (RANKS[session.current.role] ?? -1) : -1;
}
export const mayOperate = () => rank() >= RANKS.operator;
export const maySubmit = () => rank() >= RANKS.artist;
/** The broker lets an artist change only renders they submitted. */
export function mayChange(render) {
  if (mayOperate()) return true;
  return rank() >= RANKS.artist && render.owner != null && render.owner === session.current.name;
}

export async function api(method, path, body, { bearer } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  // The cookie authenticates; a change must also prove it comes from this page.
  if (method !== 'GET' && session.current?.csrf) headers['X-CSRF-Token'] = session.current.csrf;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch (e) {
    throw new ApiError(`The broker cannot be reached (${e.message}). Is it running? Try again in a moment.`, 0, 'network');
  }
  const type = response.headers.get('content-type') || '';
  if (!response.ok) {
    let message = `The broker answered ${response.status} ${response.statusText || ''}`.trim() + '.';
    let code = 'http';
    if (type.includes('json')) {
      try {
        const error = await response.json();
        if (error && typeof error.message === 'string') {
          message = error.message;
          code = error.error;
        }
      } catch {
        // The status line is all there is to say.
      }
    }
    if (response.status === 401 && session.current && !bearer) onSignedOut(message);
    throw new ApiError(message, response.status, code);
  }
  if (response.status === 204) return null;
  if (type.includes('json')) return response.json();
  return response.text();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
