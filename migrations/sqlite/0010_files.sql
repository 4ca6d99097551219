-- renderfarm embedded store, version 10: files through the broker (issue 13).

-- The .blend file a render's workers fetch from the broker's file storage
-- (its SHA-256, lowercase hex); NULL when `blend_file` is a path they see.
ALTER TABLE renders ADD COLUMN blend_sha256 TEXT;
-- 1 when the workers upload every frame to the broker (a task completes
-- only once its frames are stored); 0 for renders from before.
ALTER TABLE renders ADD COLUMN upload_frames INTEGER NOT NULL DEFAULT 0;
-- The collector asks which stored files a render still refers to.
CREATE INDEX renders_by_blend ON renders (blend_sha256) WHERE blend_sha256 IS NOT NULL;

-- The frames workers uploaded: one row per frame of a render (an upload of
-- the same frame again replaces it); the image itself is in the file
-- storage under its hash. Deleted with the render.
CREATE TABLE frame_files (
    render_seq INTEGER NOT NULL REFERENCES renders (seq),
    frame      INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    sha256     TEXT    NOT NULL,
    bytes      INTEGER NOT NULL,
    stored_at  TEXT    NOT NULL,
    PRIMARY KEY (render_seq, frame)
) WITHOUT ROWID;
CREATE INDEX frame_files_by_sha256 ON frame_files (sha256);
