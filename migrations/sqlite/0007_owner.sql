-- renderfarm embedded store, version 7: who did what.

-- Who submitted each render: the name of the credential it came with; NULL
-- when the broker ran without credentials, and for renders from before.
-- One person's renders are listed newest first.
ALTER TABLE renders ADD COLUMN owner TEXT;
CREATE INDEX renders_by_owner ON renders (owner, seq);

-- Who did what a task's history records, when a person did (an operator's
-- command); NULL for what workers and the scheduler did.
ALTER TABLE task_history ADD COLUMN actor TEXT;
