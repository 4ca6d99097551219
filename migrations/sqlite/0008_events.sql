-- renderfarm embedded store, version 8: the farm's event log (GET /events).

-- One row per change a client may follow; ids never repeat (AUTOINCREMENT),
-- so a client resumes after the last id it saw. Status changes are recorded
-- by triggers in the transaction of the change (store/sqlite/events.rs
-- creates them from the domain's values at every start); progress, logs and
-- render tallies once a second from the stored state.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    render_id   TEXT,
    task_id     TEXT,
    worker_id   TEXT,
    status      TEXT,
    frames_done INTEGER,
    progress    TEXT,               -- JSON: a render's Progress
    log_bytes   INTEGER
);
CREATE INDEX events_by_render ON events (render_id, id) WHERE render_id IS NOT NULL;
CREATE INDEX events_by_time ON events (at);

-- What the last coalesced events said, so that the next records only what
-- changed since: a running task's frames done and log bytes written (kept +
-- dropped, which only grows), a render's tally.
ALTER TABLE tasks ADD COLUMN seen_frames_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN seen_log_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE renders ADD COLUMN seen_progress TEXT;
UPDATE tasks SET seen_frames_done = frames_done, seen_log_total = log_bytes + log_dropped;

-- Frames rendered in the last hour (the farm summary).
CREATE INDEX tasks_completed_by_time ON tasks (finished_at) WHERE status = 'completed';
