-- The operations API (/ops/v1): operators with roles, their audit log, the exception workflow.
-- An operator's token is shown once; only its SHA-256 is stored.
CREATE TABLE operators (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash BLOB NOT NULL UNIQUE,
    created_at_us INTEGER NOT NULL,
    disabled_at_us INTEGER
);

-- Every operator action, written in the transaction of the change. operator_id NULL: the command line.
CREATE TABLE ops_audit_log (
    id BLOB PRIMARY KEY,
    operator_id BLOB REFERENCES operators (id),
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
CREATE INDEX ops_audit_log_at ON ops_audit_log (at_us);

-- Exception workflow: status open → assigned → resolved (with a resolution type).
ALTER TABLE reconciliation_exceptions ADD COLUMN assignee_id BLOB REFERENCES operators (id);
ALTER TABLE reconciliation_exceptions ADD COLUMN resolution TEXT;
ALTER TABLE reconciliation_exceptions ADD COLUMN resolved_by BLOB REFERENCES operators (id);
CREATE INDEX reconciliation_exceptions_status ON reconciliation_exceptions (status, created_at_us);

CREATE TABLE reconciliation_exception_comments (
    id BLOB PRIMARY KEY,
    item_id BLOB NOT NULL REFERENCES reconciliation_exceptions (item_id),
    operator_id BLOB NOT NULL REFERENCES operators (id),
    text TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
CREATE INDEX reconciliation_exception_comments_item ON reconciliation_exception_comments (item_id, at_us);

-- Payment search across merchants (ops): by order number and by the channel's trade number.
CREATE INDEX payments_by_order_no ON payments (merchant_order_no);
CREATE INDEX payments_by_channel_trade_no ON payments (channel_trade_no) WHERE channel_trade_no IS NOT NULL;
