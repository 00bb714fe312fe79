-- Read model: the current state of every `entry` aggregate, folded from its events.
-- Disposable: `echolia replay` rebuilds it from the log. Payloads stay in the log;
-- `heads` names them by seq (JSON, ordered by event id: [9,11]); each head is its event in the log.
CREATE TABLE entries (
    id          TEXT    NOT NULL,            -- one row per id: the writer finds rows by created_seq
    parent_id   TEXT,
    heads       TEXT    NOT NULL,
    version     TEXT    NOT NULL,            -- merge of the heads' version vectors
    deleted     INTEGER NOT NULL,            -- every head is a delete
    conflict    INTEGER NOT NULL,            -- more than one head
    updated_seq INTEGER NOT NULL,            -- seq of the latest change: pull's order
    created_seq INTEGER PRIMARY KEY          -- seq of its first event: the key (schema/user/0007)
) STRICT;

-- Pull's order, and one row per seq. An index of its own rather than a UNIQUE
-- column: replay fills a shadow table in key order and builds this index
-- once, in one sort, instead of inserting into it at random. Replay builds it
-- on the shadow before the swap, so its name alternates between this one and
-- this one with `_replay` appended (`src/replay/schema.rs`).
CREATE UNIQUE INDEX entries_by_updated_seq ON entries (updated_seq);
