-- Merchant webhooks: the transactional outbox (one row per event, written in the transaction of the
-- state change that causes it) and the log of every delivery attempt.
CREATE TABLE webhook_outbox (
    id BLOB PRIMARY KEY,
    merchant_id BLOB NOT NULL,
    payment_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    next_attempt_at_us INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at_us INTEGER,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at_us) WHERE delivered_at_us IS NULL;
CREATE INDEX webhook_outbox_payment ON webhook_outbox (payment_id);
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id BLOB NOT NULL REFERENCES webhook_outbox (id),
    attempt INTEGER NOT NULL,
    at_us INTEGER NOT NULL,
    http_status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_outbox ON webhook_deliveries (outbox_id);
