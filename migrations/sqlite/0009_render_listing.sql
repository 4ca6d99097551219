-- renderfarm embedded store, version 9: the dashboard's renders page.
-- Independent of version 8 (the event log, from the same issue), and idempotent, so
-- the two apply in either history.

-- `sort=name` walks this index in either direction (ties by submission in
-- the same direction, as `domain::compare_renders` orders them). Created,
-- priority and status filters already have theirs (`seq`,
-- `renders_by_priority`, `renders_by_status`); status and progress sorts
-- and the name search read every render, which at 10,000 renders takes a
-- few milliseconds (docs/benchmarks.md, issue 12).
CREATE INDEX IF NOT EXISTS renders_by_name ON renders (name, seq);
