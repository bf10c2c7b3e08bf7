-- Refunds still processing, oldest change first: what the sweeper's recovery looks at (a refund
-- whose channel call or follow-up was cut short by a restart is finished from here).
CREATE INDEX refunds_processing_by_update ON refunds (updated_at_us) WHERE status = 'processing';
