-- renderfarm embedded store, version 5: credentials. Only a SHA-256 of each
-- token's secret is kept; requests are checked by looking that hash up.
CREATE TABLE tokens (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL CHECK (role IN ('viewer','artist','operator','admin','worker')),
    hash       TEXT    NOT NULL UNIQUE,
    created_at TEXT    NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
