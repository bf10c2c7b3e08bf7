-- A channel account's own time of day (Asia/Shanghai, HH:MM:SS) for the nightly reconciliation;
-- accounts without a row use the configured `reconcile_schedule`.
CREATE TABLE reconciliation_schedules (
    channel_account_id UUID PRIMARY KEY REFERENCES channel_accounts(id),
    at TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
