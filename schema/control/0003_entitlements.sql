-- Store subscriptions: what the App Store and the Play Store last said about
-- each subscription, and whose it is. A user's entitlement is computed from
-- its rows (GET /account/entitlement, the LLM quota tier).
CREATE TABLE store_subscriptions (
    source           TEXT    NOT NULL CHECK (source IN ('apple', 'google')),
    environment      TEXT    NOT NULL CHECK (environment IN ('production', 'sandbox')),
    store_id         TEXT    NOT NULL,  -- Apple originalTransactionId; Google purchase token
    user_id          TEXT,              -- NULL until a user is known (a webhook came first)
    product_id       TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('active', 'grace', 'billing_retry', 'expired', 'revoked')),
    expires_at       INTEGER,           -- unix milliseconds; NULL: no end
    grace_expires_at INTEGER,           -- unix milliseconds, in grace
    signed_at        INTEGER NOT NULL,  -- the store's date of this state: older news never overwrites it
    retired          INTEGER NOT NULL DEFAULT 0,  -- Google: replaced by a newer purchase token
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (source, environment, store_id)
) STRICT;

CREATE INDEX store_subscriptions_by_user ON store_subscriptions (user_id);

-- Every store notification received, once: Apple's notificationUUID, Pub/Sub's
-- messageId. A redelivery finds its row and changes nothing.
CREATE TABLE store_notifications (
    source          TEXT NOT NULL CHECK (source IN ('apple', 'google')),
    notification_id TEXT NOT NULL,
    kind            TEXT NOT NULL,   -- e.g. DID_FAIL_TO_RENEW/GRACE_PERIOD, or Google's type number
    store_id        TEXT,
    outcome         TEXT NOT NULL,   -- applied | stale | unlinked | ignored
    signed_at       INTEGER,
    received_at     TEXT NOT NULL,
    PRIMARY KEY (source, notification_id)
) STRICT;
