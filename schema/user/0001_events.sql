-- The event log: the source of truth of one user. Append-only; `seq` is
-- gapless from 1 and each `hash` chains to the previous one:
-- hash = SHA-256(prev_hash || canonical bytes of the event), prev_hash of seq 1 = 32 zero bytes.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id     TEXT    NOT NULL UNIQUE,
    device_id    TEXT    NOT NULL,            -- the device that did it (from its token)
    kind         TEXT    NOT NULL,            -- entry | memory | tag | embedding | device
    aggregate_id TEXT    NOT NULL,
    parent_id    TEXT,
    op           TEXT    NOT NULL,            -- put | delete
    version      TEXT    NOT NULL,            -- version vector, canonical JSON
    payload      BLOB,                        -- opaque to the server; NULL on delete
    client_time  TEXT    NOT NULL,
    received_at  TEXT    NOT NULL,
    hash         BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

-- Audit reads a device's history. (No index by aggregate: views answer
-- per-aggregate questions, and every index costs each append a random page.)
CREATE INDEX events_by_device ON events (device_id, seq);

CREATE TRIGGER events_are_immutable BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;

CREATE TRIGGER events_are_append_only BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
