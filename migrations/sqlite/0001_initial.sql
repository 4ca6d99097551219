-- renderfarm embedded store, version 1.
-- Timestamps are RFC 3339 UTC text with a fixed width, so they sort as text.
-- Priorities are stored as ranks (low 0 … urgent 3) so that the claim index
-- orders them.

CREATE TABLE renders (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('queued','rendering','paused','completed','failed','canceled')),
    priority        INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),
    blend_file      TEXT    NOT NULL,
    frame_start     INTEGER NOT NULL,
    frame_end       INTEGER NOT NULL,
    chunk_size      INTEGER NOT NULL,
    max_retries     INTEGER NOT NULL,
    output          TEXT    NOT NULL,
    engine          TEXT,
    tags            TEXT    NOT NULL,          -- JSON array of strings, sorted
    tasks_total     INTEGER NOT NULL,
    tasks_pending   INTEGER NOT NULL,
    tasks_running   INTEGER NOT NULL,
    tasks_completed INTEGER NOT NULL,
    tasks_failed    INTEGER NOT NULL,
    tasks_canceled  INTEGER NOT NULL,
    frames_total    INTEGER NOT NULL,
    frames_done     INTEGER NOT NULL,
    failed_for_good INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

CREATE INDEX renders_by_status ON renders (status, seq);
CREATE INDEX renders_by_priority ON renders (priority, seq);

CREATE TABLE tasks (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    render_seq     INTEGER NOT NULL REFERENCES renders (seq),
    priority       INTEGER NOT NULL,           -- copy of the render's, for the claim index
    frame_start    INTEGER NOT NULL,
    frame_end      INTEGER NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('pending','running','completed','failed','canceled')),
    retries        INTEGER NOT NULL DEFAULT 0,
    worker_id      TEXT,
    lease_id       TEXT,
    frames_done    INTEGER NOT NULL DEFAULT 0,
    exit_code      INTEGER,
    failure_reason TEXT,
    started_at     TEXT,
    finished_at    TEXT
);

-- The claim walks pending tasks in dispatch order and stops at the first one
-- it may hand out.
CREATE INDEX tasks_claim ON tasks (status, priority DESC, render_seq, frame_start);
CREATE INDEX tasks_by_render ON tasks (render_seq, frame_start);
CREATE INDEX tasks_running_by_worker ON tasks (worker_id) WHERE status = 'running';

CREATE TABLE workers (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    name           TEXT    NOT NULL,
    tags           TEXT    NOT NULL,           -- JSON array of strings, sorted
    mode           TEXT    NOT NULL CHECK (mode IN ('active','draining','disabled')),
    offline        INTEGER NOT NULL DEFAULT 0,
    last_heartbeat TEXT    NOT NULL,
    registered_at  TEXT    NOT NULL
);

CREATE TABLE task_logs (
    seq      INTEGER PRIMARY KEY,
    task_seq INTEGER NOT NULL REFERENCES tasks (seq),
    text     TEXT    NOT NULL
);

CREATE INDEX task_logs_by_task ON task_logs (task_seq, seq);
