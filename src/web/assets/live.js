// The broker's event streams. Pages update from events alone: an event may
// cause a fetch of the thing it names, at most once a second per resource,
// and nothing is fetched on a timer.

const conn = () => document.getElementById('conn');

function showState(state) {
  const el = conn();
  if (!el) return;
  el.className = state;
  el.textContent = state === 'live' ? 'live' : state === 'reconnecting' ? 'reconnecting…' : '';
}

/**
 * One EventSource. `handlers` maps event kinds to functions of the event's
 * data; `reset` (the broker cannot resume us from where we were) reloads.
 */
export class Stream {
  constructor(url, handlers, onReset) {
    this.url = url;
    this.handlers = handlers;
    this.onReset = onReset;
    this.lastId = null;
    this.closed = false;
    this.retry = 1000;
    this.open();
  }

  open() {
    let url = this.url;
    // A new EventSource starts where the old one stopped; one that
    // reconnects by itself sends Last-Event-ID instead.
    if (this.lastId !== null) url += (url.includes('?') ? '&' : '?') + `after=${encodeURIComponent(this.lastId)}`;
    const es = new EventSource(url, { withCredentials: true });
    this.es = es;
    es.onopen = () => { this.retry = 1000; showState('live'); };
    es.onerror = () => {
      if (this.closed) return;
      showState('reconnecting');
      // EventSource retries network errors itself, but gives up on an
      // answer that is not a stream (a 503 while the broker starts, a 401):
      // then try again, more slowly each time.
      if (es.readyState === EventSource.CLOSED) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => { if (!this.closed) this.open(); }, this.retry);
        this.retry = Math.min(this.retry * 2, 30000);
      }
    };
    for (const kind of Object.keys(this.handlers)) {
      es.addEventListener(kind, (e) => this.deliver(kind, e));
    }
    es.addEventListener('reset', (e) => {
      this.remember(e);
      this.onReset?.();
    });
  }

  remember(e) {
    if (e.lastEventId) this.lastId = e.lastEventId;
  }

  deliver(kind, e) {
    this.remember(e);
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    this.handlers[kind](data);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.es?.close();
  }
}

/** Runs `fn` soon, at most once a second for `key`: later calls within the second fold into one. */
export class Debouncer {
  constructor() { this.gates = new Map(); }

  soon(key, fn) {
    let gate = this.gates.get(key);
    if (!gate) {
      gate = { last: 0, timer: null, fn };
      this.gates.set(key, gate);
    }
    gate.fn = fn;
    if (gate.timer !== null) return;
    const wait = Math.max(0, gate.last + 1000 - Date.now());
    gate.timer = setTimeout(() => {
      gate.timer = null;
      gate.last = Date.now();
      gate.fn();
    }, wait);
  }

  stop() {
    for (const gate of this.gates.values()) clearTimeout(gate.timer);
    this.gates.clear();
  }
}

/** Hides the connection state (a page without a stream). */
export function noStream() { showState(''); }
