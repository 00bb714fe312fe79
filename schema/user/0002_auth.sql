-- Auth state that is not part of the event log.

-- Refresh tokens, stored only as SHA-256 hashes. A row stays after it is
-- consumed (until it expires) so that a second use is recognised as theft.
CREATE TABLE refresh_tokens (
    token_hash  BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
    device_id   TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,             -- unix seconds
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER,
    revoked_at  INTEGER
) STRICT;

CREATE INDEX refresh_tokens_by_device ON refresh_tokens (device_id);

-- Per-device session state: when it was last seen, and whether all of its
-- tokens were revoked after a refresh token was reused.
CREATE TABLE device_sessions (
    device_id         TEXT PRIMARY KEY,
    last_seen_at      TEXT NOT NULL,
    tokens_revoked_at TEXT
) STRICT;

-- The user key, sealed by one device to another device's public key.
CREATE TABLE key_envelopes (
    device_id  TEXT    NOT NULL,
    key_epoch  INTEGER NOT NULL CHECK (key_epoch >= 1),
    envelope   BLOB    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (device_id, key_epoch)
) STRICT;
