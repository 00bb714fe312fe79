-- Each aggregate view keyed by `created_seq`, the seq of the aggregate's first
-- event, instead of a unique index on its `id`. With random (v4) ids that index
-- cost every new aggregate a write at a random leaf page; rows keyed by their
-- first seq append to the table's B-tree instead. The writer finds an
-- aggregate's row through an in-memory map of the log (`store::id_index`), and
-- keeps `id` unique itself, as it does `event_id` (0006).
-- Run for each view table that exists ({table} stands for its name). Rows are
-- copied as they are, each under its aggregate's first seq, read from the log.
CREATE TABLE {table}_0007 (
    id          TEXT    NOT NULL,
    parent_id   TEXT,
    heads       TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    deleted     INTEGER NOT NULL,
    conflict    INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL,
    created_seq INTEGER PRIMARY KEY
) STRICT;

INSERT INTO {table}_0007 (id, parent_id, heads, version, deleted, conflict, updated_seq, created_seq)
SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, f.seq
FROM {table} AS v
JOIN (SELECT aggregate_id, min(seq) AS seq FROM events
      WHERE kind = CASE '{table}' WHEN 'entries' THEN 'entry' WHEN 'memories' THEN 'memory'
                                  WHEN 'tags' THEN 'tag' ELSE 'embedding' END
      GROUP BY aggregate_id) AS f ON f.aggregate_id = v.id
ORDER BY f.seq;

-- Its indexes go with it, whichever of their two names replay left them under.
DROP TABLE {table};
ALTER TABLE {table}_0007 RENAME TO {table};
CREATE UNIQUE INDEX {table}_by_updated_seq ON {table} (updated_seq);
