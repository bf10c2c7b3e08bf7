-- Code payments still processing, oldest change first: what the sweeper's recovery looks at.
CREATE INDEX payments_processing_by_update ON payments (updated_at_us) WHERE status = 'processing';
