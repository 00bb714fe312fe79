-- The log without a unique index on `event_id`. With random (v4) ids that index
-- cost every append a write at a random leaf page; the writer now answers the
-- duplicate check from an in-memory map of the log's ids (`store::id_index`),
-- read from the log once per process and extended as it grows, so `event_id`
-- stays unique in the log without a B-tree of its own.
-- SQLite cannot drop a constraint's index, so the table is rebuilt, rows
-- copied as they are (their hash chain is over the values, not the file).
CREATE TABLE events_0006 (
    seq          INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id     TEXT    NOT NULL,            -- unique in the log: checked by the writer
    device_id    TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    aggregate_id TEXT    NOT NULL,
    parent_id    TEXT,
    op           TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    payload      BLOB,
    client_time  TEXT    NOT NULL,
    received_at  TEXT    NOT NULL,
    hash         BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

INSERT INTO events_0006 SELECT seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, payload,
                               client_time, received_at, hash FROM events ORDER BY seq;
DROP TABLE events;
ALTER TABLE events_0006 RENAME TO events;

CREATE INDEX events_by_device ON events (device_id, seq);

CREATE TRIGGER events_are_immutable BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;

CREATE TRIGGER events_are_append_only BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
