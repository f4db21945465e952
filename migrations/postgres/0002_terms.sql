-- Merchants' commercial terms (prices per point), versioned and insert-only, and the terms
-- version that priced each entry's money leg. Prices are exact decimals stored as text.

CREATE TABLE merchant_terms (
    merchant_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    effective_from_ms BIGINT NOT NULL,
    issue_price_minor_per_point TEXT NOT NULL,
    redeem_price_minor_per_point TEXT NOT NULL,
    PRIMARY KEY (merchant_id, version)
);

CREATE TRIGGER merchant_terms_append_only BEFORE UPDATE OR DELETE ON merchant_terms
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();

ALTER TABLE entries ADD COLUMN terms_version BIGINT;
