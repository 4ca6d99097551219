-- Adaptive chunking (issue 17, point 4): a render submitted with
-- chunk_size "auto" keeps its target_chunk_seconds (NULL: a fixed chunk
-- size) and the frame time the scheduler measured from its completed chunks
-- (NULL until one completed); chunk_size holds the size in force, which the
-- scheduler's re-split of the pending tasks changes. The partial index finds
-- the auto renders the tick looks at without reading the others;
-- tasks_completed_by_render, a render's latest completed chunks, which the
-- tick measures.
ALTER TABLE renders ADD COLUMN target_chunk_seconds INTEGER;
ALTER TABLE renders ADD COLUMN measured_frame_seconds REAL;
CREATE INDEX renders_adaptive ON renders (status) WHERE target_chunk_seconds IS NOT NULL;
CREATE INDEX tasks_completed_by_render ON tasks (render_seq, finished_at) WHERE status = 'completed';
