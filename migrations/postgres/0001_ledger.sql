-- Coalition ledger schema for PostgreSQL. Amounts and times are integers (minor units, points,
-- Unix milliseconds). The journal tables (entries, postings) are append-only: a trigger
-- refuses updates and deletes.

CREATE TABLE merchants (
    merchant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at_ms BIGINT NOT NULL
);

CREATE TABLE merchant_keys (
    merchant_id TEXT NOT NULL REFERENCES merchants (merchant_id),
    key_id TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    valid_from_ms BIGINT NOT NULL,
    valid_until_ms BIGINT,
    revoked_at_ms BIGINT,
    PRIMARY KEY (merchant_id, key_id)
);

CREATE TABLE members (
    member_id TEXT PRIMARY KEY,
    tier TEXT,
    enrolled_at_ms BIGINT NOT NULL
);

CREATE TABLE member_aliases (
    alias TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE accounts (
    account_id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    UNIQUE (kind, owner)
);

CREATE TABLE entries (
    sequence BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    merchant_id TEXT,
    merchant_transaction_id TEXT,
    store_id TEXT,
    terminal_id TEXT,
    occurred_at_ms BIGINT,
    body_hash BYTEA,
    member_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    spend_minor BIGINT,
    member_points_after BIGINT NOT NULL,
    memo TEXT NOT NULL,
    previous_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    UNIQUE (merchant_id, merchant_transaction_id)
);
CREATE INDEX entries_by_member ON entries (member_id, sequence);
CREATE INDEX entries_by_accepted_at ON entries (accepted_at_ms);

CREATE TABLE postings (
    entry_sequence BIGINT NOT NULL REFERENCES entries (sequence),
    posting_index INTEGER NOT NULL,
    account_id BIGINT NOT NULL REFERENCES accounts (account_id),
    asset TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (entry_sequence, posting_index)
);
CREATE INDEX postings_by_account ON postings (account_id, entry_sequence);

CREATE TABLE lots (
    entry_sequence BIGINT NOT NULL REFERENCES entries (sequence),
    lot_index INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    points BIGINT NOT NULL,
    earned_at_ms BIGINT NOT NULL,
    PRIMARY KEY (entry_sequence, lot_index)
);

CREATE TABLE lot_consumptions (
    entry_sequence BIGINT NOT NULL REFERENCES entries (sequence),
    lot_entry_sequence BIGINT NOT NULL,
    lot_index INTEGER NOT NULL,
    points BIGINT NOT NULL,
    PRIMARY KEY (entry_sequence, lot_entry_sequence, lot_index)
);

CREATE TABLE account_balances (
    account_id BIGINT NOT NULL REFERENCES accounts (account_id),
    asset TEXT NOT NULL,
    balance BIGINT NOT NULL,
    PRIMARY KEY (account_id, asset)
);

CREATE FUNCTION journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % is refused', TG_OP, TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
