-- The per-IP rate limits of `/auth/register` and `/auth/pairing/claim`, kept
-- here so every API server on this control database enforces one limit
-- (each process also keeps its own in memory, which turns floods away before
-- they reach the database). GCRA: a key's `tat_ms` is the theoretical arrival
-- time of its next request (Unix ms); a request is allowed if, moved one
-- interval on, it stays within the burst. Keys past their `tat_ms` say nothing
-- and are swept with expired pairings.
CREATE TABLE rate_limits (
    key    TEXT    PRIMARY KEY,               -- `<limiter>:<client ip>`
    tat_ms INTEGER NOT NULL
) STRICT;
