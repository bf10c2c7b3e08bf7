-- A merchant's webhook events, newest first (GET /v1/webhooks), without scanning the outbox.
CREATE INDEX webhook_outbox_merchant ON webhook_outbox (merchant_id, id);
