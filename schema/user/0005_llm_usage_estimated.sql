-- 1 when a request's tokens are an estimate (content bytes / 4) because the
-- upstream never reported a final count: a stream cut before its usage chunk
-- (by the upstream or by the client), or a server ignoring `include_usage`.
-- Estimated tokens count toward the daily token quota like reported ones.
ALTER TABLE llm_usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
