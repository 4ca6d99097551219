-- renderfarm embedded store, version 11: webhooks (issue 14). Independent of
-- the other versions of that issue and idempotent, so it applies in either
-- history.

-- A receiver and the events it wants. The secret is kept because every
-- delivery is signed with it; the API shows it only when registering.
CREATE TABLE IF NOT EXISTS webhooks (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT    NOT NULL UNIQUE,
    url                  TEXT    NOT NULL,
    events               TEXT    NOT NULL,  -- JSON array of event names
    description          TEXT,
    secret               TEXT    NOT NULL,
    created_at           TEXT    NOT NULL,
    disabled_at          TEXT,
    disabled_reason      TEXT,
    failing_since        TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_attempt_at      TEXT,
    last_outcome         TEXT,
    last_success_at      TEXT
);

-- The outbox: one delivery per webhook and event-log entry (the UNIQUE pair
-- makes queuing again after a crash store nothing twice). `id` is the
-- idempotency id a receiver sees on every attempt.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    webhook_id      TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        INTEGER NOT NULL,
    event           TEXT    NOT NULL,
    source          TEXT    NOT NULL,   -- JSON: the event-log entry
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    last_outcome    TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);

-- Where queuing stands in the event log: deliveries exist for every entry
-- up to `after`, and the move of `after` is written with them.
CREATE TABLE IF NOT EXISTS webhook_cursor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    after INTEGER NOT NULL
);
