-- Read model: the user's devices, folded from `device` events.
-- Disposable: `echolia replay` rebuilds it from the log.
CREATE TABLE devices (
    device_id    TEXT    PRIMARY KEY,
    device_name  TEXT    NOT NULL,
    device_type  TEXT    NOT NULL,
    platform     TEXT    NOT NULL,
    public_key   TEXT    NOT NULL,
    capabilities TEXT    NOT NULL,            -- JSON object
    created_at   TEXT    NOT NULL,
    paired_by    TEXT,                        -- the approving device, NULL for the first one
    revoked_at   TEXT,
    revoked_by   TEXT,
    version      INTEGER NOT NULL,            -- number of device events folded
    updated_seq  INTEGER NOT NULL
) STRICT;
