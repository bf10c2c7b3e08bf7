CREATE TABLE refunds (
    id BLOB PRIMARY KEY,
    payment_id BLOB NOT NULL ,
    merchant_id BLOB NOT NULL,
    merchant_refund_no TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    reason TEXT,
    status TEXT NOT NULL,
    channel_refund_no TEXT,
    failure_code TEXT,
    failure_message TEXT,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    succeeded_at_us INTEGER,
    UNIQUE (merchant_id, merchant_refund_no)
);
CREATE INDEX refunds_payment ON refunds (payment_id);
