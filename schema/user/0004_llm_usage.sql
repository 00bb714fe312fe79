-- One row per request through the LLM proxy: metadata and counts only, never
-- a prompt or a completion. A row is written when the request starts
-- (`status = 'pending'`, counted against the requests-per-minute quota) and
-- completed when it ends; the quotas are sums over these rows, so every
-- process on one database enforces the same budget.
CREATE TABLE llm_usage (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,          -- RFC 3339 UTC, microseconds
    day TEXT NOT NULL,                 -- YYYY-MM-DD (UTC) of started_at
    model TEXT NOT NULL,               -- as the client named it
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,            -- chat | embeddings
    stream INTEGER NOT NULL,
    status TEXT NOT NULL,              -- pending | ok | interrupted | upstream_error | rejected
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nano_usd INTEGER NOT NULL DEFAULT 0,
    duration_ms INTEGER
) STRICT;

CREATE INDEX llm_usage_started_at ON llm_usage (started_at);
CREATE INDEX llm_usage_day_model ON llm_usage (day, model);
