-- Coalition ledger schema for SQLite. Amounts and times are integers (minor units, points,
-- Unix milliseconds). The journal tables (entries, postings, lots, lot_consumptions) are
-- append-only: triggers refuse updates and deletes.

CREATE TABLE merchants (
    merchant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL
);

CREATE TABLE merchant_keys (
    merchant_id TEXT NOT NULL REFERENCES merchants (merchant_id),
    key_id TEXT NOT NULL,
    public_key BLOB NOT NULL,
    valid_from_ms INTEGER NOT NULL,
    valid_until_ms INTEGER,
    revoked_at_ms INTEGER,
    PRIMARY KEY (merchant_id, key_id)
);

CREATE TABLE members (
    member_id TEXT PRIMARY KEY,
    tier TEXT,
    enrolled_at_ms INTEGER NOT NULL
);

CREATE TABLE member_aliases (
    alias TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE accounts (
    account_id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    UNIQUE (kind, owner)
);

CREATE TABLE entries (
    sequence INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    merchant_id TEXT,
    merchant_transaction_id TEXT,
    store_id TEXT,
    terminal_id TEXT,
    occurred_at_ms INTEGER,
    body_hash BLOB,
    member_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    spend_minor INTEGER,
    member_points_after INTEGER NOT NULL,
    memo TEXT NOT NULL,
    previous_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (merchant_id, merchant_transaction_id)
);
CREATE INDEX entries_by_member ON entries (member_id, sequence);
CREATE INDEX entries_by_accepted_at ON entries (accepted_at_ms);

CREATE TABLE postings (
    entry_sequence INTEGER NOT NULL REFERENCES entries (sequence),
    posting_index INTEGER NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (entry_sequence, posting_index)
);
CREATE INDEX postings_by_account ON postings (account_id, entry_sequence);

CREATE TABLE lots (
    entry_sequence INTEGER NOT NULL REFERENCES entries (sequence),
    lot_index INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    points INTEGER NOT NULL,
    earned_at_ms INTEGER NOT NULL,
    PRIMARY KEY (entry_sequence, lot_index)
);

CREATE TABLE lot_consumptions (
    entry_sequence INTEGER NOT NULL REFERENCES entries (sequence),
    lot_entry_sequence INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    points INTEGER NOT NULL,
    PRIMARY KEY (entry_sequence, lot_entry_sequence, lot_index)
);

CREATE TABLE account_balances (
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    asset TEXT NOT NULL,
    balance INTEGER NOT NULL,
    PRIMARY KEY (account_id, asset)
);

CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: entries cannot be updated'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: entries cannot be deleted'); END;
CREATE TRIGGER postings_append_only_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: postings cannot be updated'); END;
CREATE TRIGGER postings_append_only_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: postings cannot be deleted'); END;
