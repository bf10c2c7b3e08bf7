-- Merchant webhooks: the transactional outbox (one row per event, written in the transaction of the
-- state change that causes it) and the log of every delivery attempt.
CREATE TABLE webhook_outbox (
    id UUID PRIMARY KEY,
    merchant_id UUID NOT NULL,
    payment_id UUID NOT NULL REFERENCES payments (id),
    event_type TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    next_attempt_at_us BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at_us BIGINT,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at_us) WHERE delivered_at_us IS NULL;
CREATE INDEX webhook_outbox_payment ON webhook_outbox (payment_id);
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    outbox_id UUID NOT NULL REFERENCES webhook_outbox (id),
    attempt INTEGER NOT NULL,
    at_us BIGINT NOT NULL,
    http_status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_outbox ON webhook_deliveries (outbox_id);
