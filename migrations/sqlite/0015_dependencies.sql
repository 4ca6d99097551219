-- Dependencies between renders (issue 16, point 1): a render is 'waiting'
-- until every render it depends on has completed; waiting_reason says why
-- while it waits. render_dependencies holds what each render was submitted
-- to wait for, found by the dependency when its status changes.
--
-- SQLite cannot change a CHECK constraint in place, so renders is rebuilt
-- (the documented twelve steps; the store runs migrations with foreign keys
-- off and checks them afterwards). Its triggers are installed again at
-- every start.
CREATE TABLE renders_new (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('waiting','queued','rendering','paused','completed','failed','canceled')),
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
    finished_at     TEXT,
    hidden          INTEGER NOT NULL DEFAULT 0,
    owner           TEXT,
    seen_progress   TEXT,
    blend_sha256    TEXT,
    upload_frames   INTEGER NOT NULL DEFAULT 0,
    video           TEXT,
    video_status    TEXT    CHECK (video_status IN ('pending','running','completed','failed','canceled')),
    video_sha256    TEXT,
    video_bytes     INTEGER,
    waiting_reason  TEXT
);

INSERT INTO renders_new (seq, id, name, status, priority, blend_file, frame_start, frame_end,
    chunk_size, max_retries, output, engine, tags, tasks_total, tasks_pending, tasks_running,
    tasks_completed, tasks_failed, tasks_canceled, frames_total, frames_done, failed_for_good,
    created_at, started_at, finished_at, hidden, owner, seen_progress, blend_sha256,
    upload_frames, video, video_status, video_sha256, video_bytes)
SELECT seq, id, name, status, priority, blend_file, frame_start, frame_end,
    chunk_size, max_retries, output, engine, tags, tasks_total, tasks_pending, tasks_running,
    tasks_completed, tasks_failed, tasks_canceled, frames_total, frames_done, failed_for_good,
    created_at, started_at, finished_at, hidden, owner, seen_progress, blend_sha256,
    upload_frames, video, video_status, video_sha256, video_bytes
FROM renders;

DROP TABLE renders;
ALTER TABLE renders_new RENAME TO renders;

CREATE INDEX renders_by_status ON renders (status, seq);
CREATE INDEX renders_by_priority ON renders (priority, seq);
CREATE INDEX renders_by_owner ON renders (owner, seq);
CREATE INDEX renders_by_name ON renders (name, seq);
CREATE INDEX renders_by_blend ON renders (blend_sha256) WHERE blend_sha256 IS NOT NULL;
CREATE INDEX renders_by_video ON renders (video_sha256) WHERE video_sha256 IS NOT NULL;

CREATE TABLE render_dependencies (
    render_seq INTEGER NOT NULL REFERENCES renders (seq),
    depends_on TEXT    NOT NULL,                -- a render's id: it may be deleted since
    position   INTEGER NOT NULL,                -- the order given at submit
    PRIMARY KEY (render_seq, depends_on)
) WITHOUT ROWID;

CREATE INDEX render_dependencies_by_dependency ON render_dependencies (depends_on);
