-- Merchants' commercial terms (prices per point), versioned and insert-only, and the terms
-- version that priced each entry's money leg. Prices are exact decimals stored as text.

CREATE TABLE merchant_terms (
    merchant_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    issue_price_minor_per_point TEXT NOT NULL,
    redeem_price_minor_per_point TEXT NOT NULL,
    PRIMARY KEY (merchant_id, version)
);

CREATE TRIGGER merchant_terms_append_only_update BEFORE UPDATE ON merchant_terms
BEGIN SELECT RAISE(ABORT, 'terms are append-only: add a new version'); END;
CREATE TRIGGER merchant_terms_append_only_delete BEFORE DELETE ON merchant_terms
BEGIN SELECT RAISE(ABORT, 'terms are append-only: add a new version'); END;

ALTER TABLE entries ADD COLUMN terms_version INTEGER;
