-- The ledger's books. Money is BIGINT minor units, times are BIGINT unix microseconds.

CREATE TABLE ledger_accounts (
    id              BLOB PRIMARY KEY,
    code            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    flags           INTEGER NOT NULL,
    debits_posted   INTEGER NOT NULL DEFAULT 0,
    credits_posted  INTEGER NOT NULL DEFAULT 0,
    debits_pending  INTEGER NOT NULL DEFAULT 0,
    credits_pending INTEGER NOT NULL DEFAULT 0,
    created_at_us   INTEGER NOT NULL
);

-- Immutable journal entries; `id` is the idempotency key.
CREATE TABLE ledger_entries (
    id               BLOB PRIMARY KEY,
    kind             TEXT NOT NULL,
    reference        BLOB,
    phase            TEXT NOT NULL,
    pending_id       BLOB,
    timeout_ms       INTEGER,
    metadata         TEXT NOT NULL,
    effective_at_us  INTEGER NOT NULL,
    created_at_us    INTEGER NOT NULL,
    postings_digest  BLOB NOT NULL
);
CREATE INDEX ledger_entries_reference ON ledger_entries (reference) WHERE reference IS NOT NULL;

-- Postings in the order they were applied (`seq`); `*_after` are the account's posted totals after
-- this posting, which makes a statement with running balance a plain range read.
CREATE TABLE ledger_postings (
    entry_id             BLOB NOT NULL,
    leg                  INTEGER NOT NULL,
    seq                  INTEGER PRIMARY KEY,
    account_id           BLOB NOT NULL,
    is_credit            INTEGER NOT NULL,
    amount_minor         INTEGER NOT NULL CHECK (amount_minor > 0),
    is_pending           INTEGER NOT NULL,
    effective_at_us      INTEGER NOT NULL,
    debits_posted_after  INTEGER NOT NULL,
    credits_posted_after INTEGER NOT NULL,
    UNIQUE (entry_id, leg)
);
CREATE INDEX ledger_postings_account ON ledger_postings (account_id, seq);

-- The mutable state of each two-phase (pending) entry: 0 open, 1 posted, 2 voided, 3 expired.
CREATE TABLE ledger_pending (
    entry_id        BLOB PRIMARY KEY,
    timeout_at_us   INTEGER NOT NULL,
    state           INTEGER NOT NULL,
    resolved_by     BLOB,
    resolved_at_us  INTEGER
);
CREATE INDEX ledger_pending_open ON ledger_pending (timeout_at_us) WHERE state = 0;
