-- Path mapping (issue 16, point 6): farm-wide path variables, each a shared
-- folder's path per platform (NULL: none there), and the platform each
-- worker renders on ('linux' for workers registered before agents said).
CREATE TABLE path_variables (
    name       TEXT NOT NULL PRIMARY KEY,
    linux      TEXT,
    windows    TEXT,
    macos      TEXT,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
ALTER TABLE workers ADD COLUMN platform TEXT NOT NULL DEFAULT 'linux';
