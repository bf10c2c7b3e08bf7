-- A merchant's payout of a day is what its payable holds at the day's end, not only that day's net:
-- a day whose refunds exceeded its payments leaves a debt that the next payouts take back, and a
-- posting dated in a day already settled is paid with the next one.
-- carried_minor: what earlier days left on the payable (negative: a debt); payout_minor: what was
-- paid, max(0, net_minor + carried_minor).
ALTER TABLE merchant_settlements ADD COLUMN carried_minor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE merchant_settlements ADD COLUMN payout_minor INTEGER NOT NULL DEFAULT 0;
UPDATE merchant_settlements SET payout_minor = CASE WHEN net_minor > 0 THEN net_minor ELSE 0 END;
