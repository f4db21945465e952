-- The operator's clearing fee per point, part of a merchant's terms. Existing versions had
-- no fee.

ALTER TABLE merchant_terms ADD COLUMN fee_minor_per_point TEXT NOT NULL DEFAULT '0';
