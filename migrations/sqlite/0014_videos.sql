-- renderfarm embedded store, version 14: task kinds and a render's video
-- (issue 15, point 3).

-- What a task runs (domain::video): chunks are 'blender'; a render's video
-- is one 'ffmpeg' task spanning its frames, which its counters leave out.
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'blender'
    CHECK (kind IN ('blender', 'ffmpeg'));

-- The video asked for (JSON, NULL for none), its task's status (NULL until
-- the frames are all rendered) and the MP4 stored at the broker.
ALTER TABLE renders ADD COLUMN video TEXT;
ALTER TABLE renders ADD COLUMN video_status TEXT
    CHECK (video_status IN ('pending','running','completed','failed','canceled'));
ALTER TABLE renders ADD COLUMN video_sha256 TEXT;
ALTER TABLE renders ADD COLUMN video_bytes INTEGER;

-- The kinds a worker runs (JSON array, sorted).
ALTER TABLE workers ADD COLUMN kinds TEXT NOT NULL DEFAULT '["blender"]';

-- A claim by a worker that runs follow-ups looks here first; the index holds
-- only pending follow-ups, so it costs nothing while there are none.
CREATE INDEX tasks_follow_up ON tasks (kind, priority DESC, render_seq)
    WHERE kind <> 'blender' AND status = 'pending';

-- A stored video keeps its file from the collector.
CREATE INDEX renders_by_video ON renders (video_sha256) WHERE video_sha256 IS NOT NULL;
