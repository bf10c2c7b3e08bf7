-- Incremented by every write of an account's balances. The standalone ledger, which plans a batch
-- before it locks the balance rows, checks the version it planned against: balances alone can come
-- back to the same values (a hold created and another of the same amount released meanwhile).
ALTER TABLE ledger_accounts ADD COLUMN version bigint NOT NULL DEFAULT 0;
