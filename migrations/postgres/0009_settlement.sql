-- Settlement: merchants' fees move to their own account kind (merchant_fees) and settled
-- amounts to merchant_payable (both need no schema change: accounts are kind and owner);
-- terms give the share of an issuer's breakage paid back to it at settlement (an exact
-- decimal as text); finalised periods are recorded once and never change.

ALTER TABLE merchant_terms ADD COLUMN breakage_share TEXT NOT NULL DEFAULT '0';

CREATE TABLE settlement_periods (
    period TEXT PRIMARY KEY,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    first_sequence BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    closing_sequence BIGINT,
    finalised_at_ms BIGINT NOT NULL,
    settlement TEXT NOT NULL
);

CREATE FUNCTION settlement_periods_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a finalised settlement period is immutable: % is refused', TG_OP;
END;
$$;
CREATE TRIGGER settlement_periods_immutable BEFORE UPDATE OR DELETE ON settlement_periods
    FOR EACH ROW EXECUTE FUNCTION settlement_periods_immutable();
