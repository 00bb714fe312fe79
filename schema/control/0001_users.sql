-- The users directory. A user's data lives in its own database; this table
-- only says who exists and since when.
CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
) STRICT;
