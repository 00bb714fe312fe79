-- The databases being made or removed: a row is written before a user's
-- database is created (registration) and in the transaction that removes
-- the user from the directory (account deletion), and dropped once the
-- work is done. A row left by a crash names a database to finish removing:
-- the server sweeps them at start (store::provisioning), so no database
-- outlives its registration or its account, on a backend that cannot list
-- its databases (sqld) as on local files.
CREATE TABLE provisioning (
    user_id    TEXT PRIMARY KEY,
    -- `create` or `delete`.
    action     TEXT NOT NULL,
    started_at TEXT NOT NULL
) STRICT;
