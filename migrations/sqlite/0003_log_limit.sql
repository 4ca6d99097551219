-- renderfarm embedded store, version 3: a bound on each task's log.

-- Bytes of log kept and bytes dropped, per task; bytes per chunk, so that
-- trimming need not read the text.
ALTER TABLE tasks ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN log_dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_logs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE task_logs SET bytes = length(CAST(text AS BLOB));
UPDATE tasks SET log_bytes = (SELECT COALESCE(SUM(bytes), 0) FROM task_logs WHERE task_logs.task_seq = tasks.seq);
