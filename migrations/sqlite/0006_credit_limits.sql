-- Credit limits: how far a merchant's net money position may go below zero before its earns
-- are refused (NULL for no limit, 0 for a prepaid merchant).

ALTER TABLE merchant_terms ADD COLUMN credit_limit_minor INTEGER;
