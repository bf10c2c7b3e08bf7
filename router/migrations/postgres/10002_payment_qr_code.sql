ALTER TABLE payments ADD COLUMN qr_code TEXT;
