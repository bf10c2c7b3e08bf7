-- Nightly reconciliation against the channels' bills, and settlement (see router/src/reconciliation.rs).
-- One run per (channel account, day): a rerun updates the same row and keeps the items found before.
CREATE TABLE reconciliation_runs (
    id UUID PRIMARY KEY,
    channel_account_id UUID NOT NULL,
    day TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    channel_records BIGINT NOT NULL DEFAULT 0,
    platform_records BIGINT NOT NULL DEFAULT 0,
    summary TEXT,
    channel_net_minor BIGINT,
    receivable_residual_minor BIGINT,
    error TEXT,
    report_dir TEXT,
    started_at_us BIGINT NOT NULL,
    finished_at_us BIGINT,
    UNIQUE (channel_account_id, day)
);

CREATE TABLE reconciliation_items (
    id UUID PRIMARY KEY,
    run_id UUID NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    out_refund_no TEXT,
    channel_trade_no TEXT,
    platform_amount_minor BIGINT,
    channel_amount_minor BIGINT,
    platform_status TEXT,
    channel_fee_minor BIGINT,
    expected_fee_minor BIGINT,
    resolution TEXT NOT NULL,
    resolved_by TEXT,
    resolved_at_us BIGINT,
    created_at_us BIGINT NOT NULL
);
CREATE INDEX reconciliation_items_run ON reconciliation_items (run_id);

CREATE TABLE reconciliation_exceptions (
    item_id UUID PRIMARY KEY REFERENCES reconciliation_items (id),
    run_id UUID NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT,
    created_at_us BIGINT NOT NULL,
    resolved_at_us BIGINT
);
CREATE INDEX reconciliation_exceptions_open ON reconciliation_exceptions (created_at_us) WHERE status = 'open';

-- Successes of ours a channel's bill did not list near the day's end: looked for in the next days' bills.
CREATE TABLE reconciliation_carry_overs (
    channel_account_id UUID NOT NULL,
    record_key TEXT NOT NULL,
    item_id UUID NOT NULL REFERENCES reconciliation_items (id),
    from_day TEXT NOT NULL,
    status TEXT NOT NULL,
    resolved_day TEXT,
    resolved_at_us BIGINT,
    PRIMARY KEY (channel_account_id, record_key)
);

CREATE TABLE merchant_settlements (
    id UUID PRIMARY KEY,
    merchant_id UUID NOT NULL,
    day TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross_minor BIGINT NOT NULL,
    refunds_minor BIGINT NOT NULL,
    fees_minor BIGINT NOT NULL,
    net_minor BIGINT NOT NULL,
    entry_id UUID,
    payout_file TEXT,
    created_at_us BIGINT NOT NULL,
    UNIQUE (merchant_id, day)
);
