CREATE TABLE merchants (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at_us INTEGER NOT NULL
);

CREATE TABLE merchant_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    merchant_id BLOB NOT NULL REFERENCES merchants(id),
    secret_nonce BLOB NOT NULL,
    secret_ciphertext BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    revoked_at_us INTEGER
);
CREATE INDEX merchant_keys_by_merchant ON merchant_keys (merchant_id);

CREATE TABLE payments (
    id BLOB PRIMARY KEY NOT NULL,
    merchant_id BLOB NOT NULL,
    merchant_order_no TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    wallet TEXT,
    status TEXT NOT NULL,
    notify_url TEXT,
    store_id TEXT,
    terminal_id TEXT,
    metadata TEXT,
    refunded_amount_minor INTEGER NOT NULL DEFAULT 0,
    channel_account_id BLOB,
    channel_trade_no TEXT,
    late_success INTEGER NOT NULL DEFAULT 0,
    failure_code TEXT,
    failure_message TEXT,
    closed_reason TEXT,
    expires_at_us INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    paid_at_us INTEGER,
    UNIQUE (merchant_id, merchant_order_no)
);
CREATE INDEX payments_open_by_expiry ON payments (expires_at_us) WHERE status IN ('created', 'processing');
CREATE INDEX payments_by_merchant ON payments (merchant_id, id);
