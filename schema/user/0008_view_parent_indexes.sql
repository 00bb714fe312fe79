-- The parent indexes of the views that have one (tags, embeddings), dropped
-- with their tables' old shape by 0007. Run for each of those that exists.
CREATE INDEX {table}_by_parent ON {table} (parent_id);
