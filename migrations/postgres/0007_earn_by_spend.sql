-- Earn by spend: a merchant's base earn rate (points per minor unit, an exact decimal as
-- text; NULL when earns must name their points), the alliance's versioned earn rules (tier
-- multipliers and time-boxed campaigns), and the rule version each earn by spend used.

ALTER TABLE merchant_terms ADD COLUMN earn_points_per_minor TEXT;
ALTER TABLE entries ADD COLUMN earn_rule_version BIGINT;

CREATE TABLE earn_rules (
    version BIGINT PRIMARY KEY,
    effective_from_ms BIGINT NOT NULL
);

CREATE TABLE earn_rule_multipliers (
    version BIGINT NOT NULL REFERENCES earn_rules (version),
    position BIGINT NOT NULL,
    -- 'tier' (name is the tier) or 'campaign'.
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    merchant_id TEXT,
    starts_at_ms BIGINT,
    ends_at_ms BIGINT,
    multiplier TEXT NOT NULL,
    PRIMARY KEY (version, position)
);

CREATE TRIGGER earn_rules_append_only BEFORE UPDATE OR DELETE ON earn_rules
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER earn_rule_multipliers_append_only BEFORE UPDATE OR DELETE ON earn_rule_multipliers
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
