-- renderfarm embedded store, version 13: warm workers (issue 17, point 3).

-- What the claim's warm preference (domain::WarmState) keeps per worker: the
-- render of its last claimed task (its submission sequence, which is never
-- reused) and how many claims in a row it took by preference over an older
-- render of the same priority. No foreign key: a deleted render simply has
-- no chunk to prefer.
ALTER TABLE workers ADD COLUMN last_render_seq INTEGER;
ALTER TABLE workers ADD COLUMN warm_streak INTEGER NOT NULL DEFAULT 0;
