-- Every batch rewrites the balance rows it touches. Half of each page is left free so that those
-- updates stay on their page (HOT updates): no new entries in the indexes on id and code, and the
-- table does not grow by a full copy of the touched rows per batch.
ALTER TABLE ledger_accounts SET (fillfactor = 50);
