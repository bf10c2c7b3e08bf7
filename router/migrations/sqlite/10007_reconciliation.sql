-- Nightly reconciliation against the channels' bills, and settlement (see router/src/reconciliation.rs).
-- One run per (channel account, day): a rerun updates the same row and keeps the items found before.
CREATE TABLE reconciliation_runs (
    id BLOB PRIMARY KEY,
    channel_account_id BLOB NOT NULL,
    day TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    channel_records INTEGER NOT NULL DEFAULT 0,
    platform_records INTEGER NOT NULL DEFAULT 0,
    summary TEXT,
    channel_net_minor INTEGER,
    receivable_residual_minor INTEGER,
    error TEXT,
    report_dir TEXT,
    started_at_us INTEGER NOT NULL,
    finished_at_us INTEGER,
    UNIQUE (channel_account_id, day)
);

CREATE TABLE reconciliation_items (
    id BLOB PRIMARY KEY,
    run_id BLOB NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    out_refund_no TEXT,
    channel_trade_no TEXT,
    platform_amount_minor INTEGER,
    channel_amount_minor INTEGER,
    platform_status TEXT,
    channel_fee_minor INTEGER,
    expected_fee_minor INTEGER,
    resolution TEXT NOT NULL,
    resolved_by TEXT,
    resolved_at_us INTEGER,
    created_at_us INTEGER NOT NULL
);
CREATE INDEX reconciliation_items_run ON reconciliation_items (run_id);

CREATE TABLE reconciliation_exceptions (
    item_id BLOB PRIMARY KEY REFERENCES reconciliation_items (id),
    run_id BLOB NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT,
    created_at_us INTEGER NOT NULL,
    resolved_at_us INTEGER
);
CREATE INDEX reconciliation_exceptions_open ON reconciliation_exceptions (created_at_us) WHERE status = 'open';

-- Successes of ours a channel's bill did not list near the day's end: looked for in the next days' bills.
CREATE TABLE reconciliation_carry_overs (
    channel_account_id BLOB NOT NULL,
    record_key TEXT NOT NULL,
    item_id BLOB NOT NULL REFERENCES reconciliation_items (id),
    from_day TEXT NOT NULL,
    status TEXT NOT NULL,
    resolved_day TEXT,
    resolved_at_us INTEGER,
    PRIMARY KEY (channel_account_id, record_key)
);

CREATE TABLE merchant_settlements (
    id BLOB PRIMARY KEY,
    merchant_id BLOB NOT NULL,
    day TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross_minor INTEGER NOT NULL,
    refunds_minor INTEGER NOT NULL,
    fees_minor INTEGER NOT NULL,
    net_minor INTEGER NOT NULL,
    entry_id BLOB,
    payout_file TEXT,
    created_at_us INTEGER NOT NULL,
    UNIQUE (merchant_id, day)
);
