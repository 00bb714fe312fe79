-- A view row names its heads by seq only (ARCHITECTURE.md: "a view row holds its
-- heads' seqs"): the rest of each head, payload included, is its event in the log.
-- Rows written before held whole heads, [{"seq":9,"event_id":…}, …]; each becomes
-- the array of their seqs, [9,11], in the same order (by event id).
-- Run for each view table that exists (entries, memories, tags, embeddings; the
-- placeholder below stands for its name): a dropped one comes back from replay in the
-- new shape.
UPDATE {table} SET heads = (SELECT json_group_array(json_extract(h.value, '$.seq') ORDER BY h.key)
                            FROM json_each({table}.heads) AS h)
WHERE heads LIKE '[{%';
