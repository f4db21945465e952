-- Earn by spend: a merchant's base earn rate (points per minor unit, an exact decimal as
-- text; NULL when earns must name their points), the alliance's versioned earn rules (tier
-- multipliers and time-boxed campaigns), and the rule version each earn by spend used.

ALTER TABLE merchant_terms ADD COLUMN earn_points_per_minor TEXT;
ALTER TABLE entries ADD COLUMN earn_rule_version INTEGER;

CREATE TABLE earn_rules (
    version INTEGER PRIMARY KEY,
    effective_from_ms INTEGER NOT NULL
);

CREATE TABLE earn_rule_multipliers (
    version INTEGER NOT NULL REFERENCES earn_rules (version),
    position INTEGER NOT NULL,
    -- 'tier' (name is the tier) or 'campaign'.
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    merchant_id TEXT,
    starts_at_ms INTEGER,
    ends_at_ms INTEGER,
    multiplier TEXT NOT NULL,
    PRIMARY KEY (version, position)
);

CREATE TRIGGER earn_rules_append_only_update BEFORE UPDATE ON earn_rules
BEGIN SELECT RAISE(ABORT, 'earn rules are append-only: add a new version'); END;
CREATE TRIGGER earn_rules_append_only_delete BEFORE DELETE ON earn_rules
BEGIN SELECT RAISE(ABORT, 'earn rules are append-only: add a new version'); END;
CREATE TRIGGER earn_rule_multipliers_append_only_update BEFORE UPDATE ON earn_rule_multipliers
BEGIN SELECT RAISE(ABORT, 'earn rules are append-only: add a new version'); END;
CREATE TRIGGER earn_rule_multipliers_append_only_delete BEFORE DELETE ON earn_rule_multipliers
BEGIN SELECT RAISE(ABORT, 'earn rules are append-only: add a new version'); END;
