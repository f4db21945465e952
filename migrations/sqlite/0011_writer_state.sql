-- The writer's state, kept current in the same transaction as the entries that change it, so
-- the writer loads what a batch needs instead of replaying the journal (docs/design/
-- working-set.md). Everything here is derived from the journal and `coalition check` compares
-- it with a replay; the journal tables stay the books.
--
-- wallet_lots: the points that remain in each lot of a member's wallet (a lot with none left
-- has no row), with the terms version of the earn that issued them (the price expiry moves to
-- breakage). member_debts: points a member owes after a reversed earn. reversibles: each
-- earn, burn and capture with the points reversed so far. open_holds: holds not yet captured,
-- voided or expired. state_pieces: the lot pieces a burn, capture or open hold took out of a
-- wallet, in take order, which a reversal, capture or void gives back.

-- Keyed by member first: a member's lots are one range of the key, read in one probe and
-- written without a second index.
CREATE TABLE wallet_lots (
    member_id TEXT NOT NULL,
    lot_entry_sequence INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    issuer TEXT NOT NULL,
    earned_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    issue_terms_version INTEGER,
    points INTEGER NOT NULL,
    PRIMARY KEY (member_id, lot_entry_sequence, lot_index)
) WITHOUT ROWID;
CREATE INDEX wallet_lots_by_expiry ON wallet_lots (expires_at_ms) WHERE expires_at_ms IS NOT NULL;

CREATE TABLE member_debts (
    member_id TEXT PRIMARY KEY,
    points INTEGER NOT NULL
);

CREATE TABLE reversibles (
    sequence INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    reversed INTEGER NOT NULL,
    terms_version INTEGER NOT NULL
);

CREATE TABLE open_holds (
    sequence INTEGER PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    terms_version INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX open_holds_by_expiry ON open_holds (expires_at_ms);

CREATE TABLE state_pieces (
    owner_sequence INTEGER NOT NULL,
    position INTEGER NOT NULL,
    lot_entry_sequence INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    issuer TEXT NOT NULL,
    earned_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    issue_terms_version INTEGER,
    points INTEGER NOT NULL,
    PRIMARY KEY (owner_sequence, position)
) WITHOUT ROWID;

-- Verified points of the hash chain: start-up verifies only from the last one to the head.
CREATE TABLE checkpoints (
    sequence INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    verified_at_ms INTEGER NOT NULL
);

-- Heads that `coalition check` verified, where a later check may start its chain walk. Kept
-- apart from the writer's own checkpoints: start-up trusts only what the writer verified.
CREATE TABLE audit_checkpoints (
    sequence INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    verified_at_ms INTEGER NOT NULL
);

-- Whether the state tables above are current. A journal written before them is replayed once
-- at the next start to fill them (state_built 0 until then).
CREATE TABLE writer_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state_built INTEGER NOT NULL
);
INSERT INTO writer_state (id, state_built)
SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM entries) THEN 0 ELSE 1 END;
