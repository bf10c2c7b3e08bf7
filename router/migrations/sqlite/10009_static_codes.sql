CREATE TABLE static_codes (
    id BLOB PRIMARY KEY,
    merchant_id BLOB NOT NULL,
    store_id TEXT,
    terminal_id TEXT,
    fixed_amount_minor INTEGER CHECK (fixed_amount_minor IS NULL OR fixed_amount_minor > 0),
    description TEXT,
    status TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    disabled_at_us INTEGER
);
CREATE INDEX static_codes_by_merchant ON static_codes (merchant_id, id);
