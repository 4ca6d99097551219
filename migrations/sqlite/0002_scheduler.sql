-- renderfarm embedded store, version 2: what the scheduler needs.

-- When a task last became pending: its wait against its priority's allowance
-- is counted from here.
ALTER TABLE tasks ADD COLUMN queued_at TEXT;
UPDATE tasks SET queued_at = (SELECT created_at FROM renders WHERE renders.seq = tasks.render_seq);

-- Failed tasks waiting for a retry; pending tasks by wait, for preemption.
CREATE INDEX tasks_failed ON tasks (render_seq) WHERE status = 'failed';

-- What happened to each task, for operators: assigned, completed, failed,
-- released, requeued, preempted, retried.
CREATE TABLE task_history (
    seq       INTEGER PRIMARY KEY,
    task_seq  INTEGER NOT NULL REFERENCES tasks (seq),
    at        TEXT    NOT NULL,
    event     TEXT    NOT NULL,
    worker_id TEXT,
    detail    TEXT
);
CREATE INDEX task_history_by_task ON task_history (task_seq, seq);

-- Leases that say which broker leads a periodic job (the scheduler tick).
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
