-- Frame order (issue 16, point 3): a render is `sequential` or
-- `preview-first`; each task has a rank in its render's claim order (0 for
-- every task of a sequential render; a preview-first render's one-frame
-- previews 1, 2, ... and its other chunks one more). The claim index gains
-- the rank between the render and the frames, so the claim still reads one
-- index entry for the render's next task.
ALTER TABLE renders ADD COLUMN frame_order TEXT NOT NULL DEFAULT 'sequential'
    CHECK (frame_order IN ('sequential', 'preview-first'));
ALTER TABLE tasks ADD COLUMN claim_rank INTEGER NOT NULL DEFAULT 0;
DROP INDEX tasks_claim;
CREATE INDEX tasks_claim ON tasks (status, priority DESC, render_seq, claim_rank, frame_start);
