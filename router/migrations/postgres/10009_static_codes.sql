CREATE TABLE static_codes (
    id UUID PRIMARY KEY,
    merchant_id UUID NOT NULL,
    store_id TEXT,
    terminal_id TEXT,
    fixed_amount_minor BIGINT CHECK (fixed_amount_minor IS NULL OR fixed_amount_minor > 0),
    description TEXT,
    status TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    disabled_at_us BIGINT
);
CREATE INDEX static_codes_by_merchant ON static_codes (merchant_id, id);
