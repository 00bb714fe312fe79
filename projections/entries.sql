-- Read model: the current state of every `entry` aggregate, folded from its events.
-- Disposable: `echolia replay` rebuilds it from the log. Payloads stay in the log;
-- `heads` names them by seq (JSON: [{seq, event_id, device_id, op, version, client_time, parent_id?}]).
CREATE TABLE entries (
    id          TEXT    PRIMARY KEY,
    parent_id   TEXT,
    heads       TEXT    NOT NULL,
    version     TEXT    NOT NULL,            -- merge of the heads' version vectors
    deleted     INTEGER NOT NULL,            -- every head is a delete
    conflict    INTEGER NOT NULL,            -- more than one head
    updated_seq INTEGER NOT NULL UNIQUE      -- seq of the latest change: pull's order
) STRICT;
