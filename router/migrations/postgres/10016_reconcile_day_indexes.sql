-- Reconciliation reads an account's successes of a day, and merchant settlement every success of a
-- day: both by the time they succeeded, never by scanning every payment and refund ever made.
CREATE INDEX payments_succeeded_by_day ON payments (paid_at_us) WHERE status = 'succeeded';
CREATE INDEX refunds_succeeded_by_day ON refunds (succeeded_at_us) WHERE status = 'succeeded';
