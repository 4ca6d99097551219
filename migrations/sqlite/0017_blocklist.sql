-- The blocklist (issue 16, point 2): a worker's failed chunks of one
-- render, and since when it is blocked from the render (NULL: not blocked).
-- A render keeps the threshold it was submitted with (blocklist_after) and,
-- when the farm failed it on its own (every able worker blocked), why
-- (failure_reason). blocklist_blocked_by_worker serves the claim's check
-- and the scheduler's expiry; it is empty while no worker is blocked.
ALTER TABLE renders ADD COLUMN blocklist_after INTEGER NOT NULL DEFAULT 3;
ALTER TABLE renders ADD COLUMN failure_reason TEXT;
CREATE TABLE blocklist (
    render_seq INTEGER NOT NULL REFERENCES renders (seq),
    worker_id  TEXT    NOT NULL,
    failures   INTEGER NOT NULL,
    blocked_at TEXT,
    PRIMARY KEY (render_seq, worker_id)
) WITHOUT ROWID;
CREATE INDEX blocklist_blocked_by_worker ON blocklist (worker_id, render_seq) WHERE blocked_at IS NOT NULL;
