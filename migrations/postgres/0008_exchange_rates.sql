-- Exchange rates: a merchant's own legacy points unit and its rate in alliance points per
-- unit (an exact decimal as text), part of its versioned terms; both NULL when it has none.

ALTER TABLE merchant_terms ADD COLUMN legacy_unit TEXT;
ALTER TABLE merchant_terms ADD COLUMN points_per_legacy_unit TEXT;
