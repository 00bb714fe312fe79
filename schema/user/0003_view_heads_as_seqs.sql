-- A view row names its heads by seq only (ARCHITECTURE.md: "a view row holds its
-- heads' seqs"): the rest of each head, payload included, is its event in the log.
-- Rows written before held whole heads, [{"seq":9,"event_id":…}, …]; each becomes
-- the array of their seqs, [9, …], in the same order (by event id).
UPDATE entries SET heads = (SELECT json_group_array(json_extract(h.value, '$.seq') ORDER BY h.key)
                            FROM json_each(entries.heads) AS h)
WHERE heads LIKE '[{%';
UPDATE memories SET heads = (SELECT json_group_array(json_extract(h.value, '$.seq') ORDER BY h.key)
                             FROM json_each(memories.heads) AS h)
WHERE heads LIKE '[{%';
UPDATE tags SET heads = (SELECT json_group_array(json_extract(h.value, '$.seq') ORDER BY h.key)
                         FROM json_each(tags.heads) AS h)
WHERE heads LIKE '[{%';
UPDATE embeddings SET heads = (SELECT json_group_array(json_extract(h.value, '$.seq') ORDER BY h.key)
                               FROM json_each(embeddings.heads) AS h)
WHERE heads LIKE '[{%';
