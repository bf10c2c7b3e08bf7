-- The ledger's books. Money is BIGINT minor units, times are BIGINT unix microseconds.

CREATE TABLE ledger_accounts (
    id              uuid PRIMARY KEY,
    code            text NOT NULL UNIQUE,
    kind            text NOT NULL,
    currency        text NOT NULL,
    flags           integer NOT NULL,
    debits_posted   bigint NOT NULL DEFAULT 0,
    credits_posted  bigint NOT NULL DEFAULT 0,
    debits_pending  bigint NOT NULL DEFAULT 0,
    credits_pending bigint NOT NULL DEFAULT 0,
    created_at_us   bigint NOT NULL
);

-- Immutable journal entries; `id` is the idempotency key.
CREATE TABLE ledger_entries (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    reference        uuid,
    phase            text NOT NULL,
    pending_id       uuid,
    timeout_ms       bigint,
    metadata         jsonb NOT NULL,
    effective_at_us  bigint NOT NULL,
    created_at_us    bigint NOT NULL,
    postings_digest  uuid NOT NULL
);
CREATE INDEX ledger_entries_reference ON ledger_entries (reference) WHERE reference IS NOT NULL;

-- Postings in the order they were applied (`seq`); `*_after` are the account's posted totals after
-- this posting, which makes a statement with running balance a plain range read.
CREATE TABLE ledger_postings (
    entry_id             uuid NOT NULL,
    leg                  smallint NOT NULL,
    seq                  bigint GENERATED ALWAYS AS IDENTITY,
    account_id           uuid NOT NULL,
    is_credit            boolean NOT NULL,
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    is_pending           boolean NOT NULL,
    effective_at_us      bigint NOT NULL,
    debits_posted_after  bigint NOT NULL,
    credits_posted_after bigint NOT NULL,
    PRIMARY KEY (entry_id, leg)
);
CREATE INDEX ledger_postings_account ON ledger_postings (account_id, seq);

-- The mutable state of each two-phase (pending) entry: 0 open, 1 posted, 2 voided, 3 expired.
CREATE TABLE ledger_pending (
    entry_id        uuid PRIMARY KEY,
    timeout_at_us   bigint NOT NULL,
    state           smallint NOT NULL,
    resolved_by     uuid,
    resolved_at_us  bigint
);
CREATE INDEX ledger_pending_open ON ledger_pending (timeout_at_us) WHERE state = 0;
