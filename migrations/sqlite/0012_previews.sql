-- renderfarm embedded store, version 12: live previews (issue 15).

-- The last preview a worker of the render sent: a small JPEG of the newest
-- frame it saved. One row per render, replaced by each new preview, deleted
-- with the render.
CREATE TABLE previews (
    render_seq INTEGER PRIMARY KEY REFERENCES renders (seq),
    task_id    TEXT    NOT NULL,
    frame      INTEGER NOT NULL,
    jpeg       BLOB    NOT NULL,
    stored_at  TEXT    NOT NULL
);
