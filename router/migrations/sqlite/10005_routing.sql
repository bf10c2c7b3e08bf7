-- Per-merchant channel accounts (credentials encrypted under the master key, bound to the account id),
-- routes per (wallet, method) with a rule and their targets, the merchant's own fee rate, and the
-- routing version every node polls to see changes made elsewhere.
CREATE TABLE channel_accounts (
    id BLOB PRIMARY KEY NOT NULL,
    merchant_id BLOB NOT NULL REFERENCES merchants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    credentials_nonce BLOB NOT NULL,
    credentials_ciphertext BLOB NOT NULL,
    cost_rate_bps INTEGER NOT NULL CHECK (cost_rate_bps >= 0 AND cost_rate_bps <= 10000),
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL
);
CREATE INDEX channel_accounts_by_merchant ON channel_accounts (merchant_id);

CREATE TABLE routes (
    id BLOB PRIMARY KEY NOT NULL,
    merchant_id BLOB NOT NULL REFERENCES merchants(id),
    wallet TEXT NOT NULL,
    method TEXT NOT NULL,
    rule TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    UNIQUE (merchant_id, wallet, method)
);

CREATE TABLE route_targets (
    route_id BLOB NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
    merchant_id BLOB NOT NULL,
    channel_account_id BLOB NOT NULL REFERENCES channel_accounts(id),
    priority INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    PRIMARY KEY (route_id, channel_account_id)
);
CREATE INDEX route_targets_by_account ON route_targets (channel_account_id);

ALTER TABLE merchants ADD COLUMN fee_rate_bps INTEGER;

CREATE TABLE routing_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO routing_version (id, version) VALUES (1, 0);
