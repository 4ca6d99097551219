-- renderfarm embedded store, version 18: availability schedules (issue 16,
-- point 5). What the agent reported at its last start: its IANA time zone
-- (NULL: an agent from before schedules, read in UTC), its hours
-- (--available, canonical form; NULL: at any time) and --strict-hours; and
-- an operator's hours (PUT /workers/{id}/availability), which win over the
-- agent's until cleared (NULL), and survive the agent's restarts.
ALTER TABLE workers ADD COLUMN time_zone TEXT;
ALTER TABLE workers ADD COLUMN agent_hours TEXT;
ALTER TABLE workers ADD COLUMN operator_hours TEXT;
ALTER TABLE workers ADD COLUMN strict_hours INTEGER NOT NULL DEFAULT 0 CHECK (strict_hours IN (0, 1));
-- Whether the worker's drain is its own (its agent drains it when it stops,
-- and takes it out of that drain alone when it starts again: an operator's
-- drain stands).
ALTER TABLE workers ADD COLUMN drained_by_itself INTEGER NOT NULL DEFAULT 0 CHECK (drained_by_itself IN (0, 1));
