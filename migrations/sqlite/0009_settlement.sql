-- Settlement: merchants' fees move to their own account kind (merchant_fees) and settled
-- amounts to merchant_payable (both need no schema change: accounts are kind and owner);
-- terms give the share of an issuer's breakage paid back to it at settlement (an exact
-- decimal as text); finalised periods are recorded once and never change.

ALTER TABLE merchant_terms ADD COLUMN breakage_share TEXT NOT NULL DEFAULT '0';

CREATE TABLE settlement_periods (
    period TEXT PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    first_sequence INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    closing_sequence INTEGER,
    finalised_at_ms INTEGER NOT NULL,
    settlement TEXT NOT NULL
);

CREATE TRIGGER settlement_periods_immutable_update BEFORE UPDATE ON settlement_periods
BEGIN SELECT RAISE(ABORT, 'a finalised settlement period is immutable'); END;
CREATE TRIGGER settlement_periods_immutable_delete BEFORE DELETE ON settlement_periods
BEGIN SELECT RAISE(ABORT, 'a finalised settlement period is immutable'); END;
