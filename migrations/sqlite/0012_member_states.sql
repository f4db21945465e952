-- One row per member id that was ever enrolled, merged away or given an account: everything
-- the writer needs to admit the member into its working set, read with one primary-key probe
-- and written with one upsert per member a batch changed. It replaces `wallet_lots` and
-- `member_debts`: loading a member took five probes (the member, its debt, its lots, its two
-- accounts with their balances) and a batch wrote a row per lot it touched (docs/design/
-- working-set.md). Derived from the journal like the other state tables; `coalition check`
-- compares it with the journal.
--
-- enrolled: 1 while the id is an enrolled member, 0 once merged away; alias_of: the member
-- it was merged into (as in `member_aliases`), so that a load needs no second table. wallet/held: the member's two accounts and their points, null until the
-- account exists. lots: the wallet's lots in the order burns take them, a JSON array of
-- [lot_entry_sequence, lot_index, issuer, earned_at_ms, expires_at_ms or null,
-- issue_terms_version or null, points]. next_expiry_ms: the earliest expiry among the lots,
-- which the expiry run finds members by.
CREATE TABLE member_states (
    member_id TEXT PRIMARY KEY,
    enrolled INTEGER NOT NULL,
    alias_of TEXT,
    tier TEXT,
    debt INTEGER NOT NULL,
    wallet_account_id INTEGER,
    wallet_points INTEGER,
    held_account_id INTEGER,
    held_points INTEGER,
    lots TEXT NOT NULL,
    next_expiry_ms INTEGER
);
CREATE INDEX member_states_by_expiry ON member_states (next_expiry_ms)
    WHERE next_expiry_ms IS NOT NULL;

DROP TABLE wallet_lots;
DROP TABLE member_debts;

-- A journal written before this table is replayed once at the next start to fill it.
UPDATE writer_state SET state_built = 0 WHERE EXISTS (SELECT 1 FROM entries);
