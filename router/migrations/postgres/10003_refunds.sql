CREATE TABLE refunds (
    id UUID PRIMARY KEY,
    payment_id UUID NOT NULL REFERENCES payments (id),
    merchant_id UUID NOT NULL,
    merchant_refund_no TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    reason TEXT,
    status TEXT NOT NULL,
    channel_refund_no TEXT,
    failure_code TEXT,
    failure_message TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    succeeded_at_us BIGINT,
    UNIQUE (merchant_id, merchant_refund_no)
);
CREATE INDEX refunds_payment ON refunds (payment_id);
