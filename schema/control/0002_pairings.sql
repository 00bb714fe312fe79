-- Pairing sessions: a new device joins with a short code shown on an
-- existing one. Kept here (not in the user's database) because the new device
-- does not know the user yet; kept on disk so a restart does not lose them.
CREATE TABLE pairings (
    pairing_id       TEXT    PRIMARY KEY,
    user_id          TEXT    NOT NULL,
    initiator_device TEXT    NOT NULL,
    code_hash        BLOB    NOT NULL UNIQUE,   -- SHA-256 of the normalised code
    claim_token_hash BLOB,                      -- SHA-256 of the claim token
    status           TEXT    NOT NULL CHECK (status IN ('waiting', 'claimed', 'approved', 'rejected')),
    new_device       TEXT,                      -- JSON: what the claiming device said about itself
    new_device_id    TEXT,
    approver_device  TEXT,
    key_envelope     BLOB,                      -- sealed to the new device's key; delivered once
    delivered_at     TEXT,
    created_at       TEXT    NOT NULL,
    expires_at       INTEGER NOT NULL           -- unix milliseconds
) STRICT;

CREATE INDEX pairings_by_user ON pairings (user_id, status, expires_at);
