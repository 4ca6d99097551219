-- renderfarm embedded store, version 4: big renders are written and deleted
-- in batches that commit separately, so that claims and reports keep flowing
-- meanwhile. Until its last batch is in (or from the start of its deletion)
-- a render is hidden: no listing, lookup, claim or upkeep sees it. A broker
-- that dies half-way leaves a hidden render, removed at the next start.
ALTER TABLE renders ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
