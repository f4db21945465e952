-- The partner's signed envelope of each entry a merchant submitted (the key that signed,
-- the body's exact bytes, the signature), so that an export lets an auditor check the
-- partner's signature and not only the operator's. Written by the writer's batch with its
-- entries; an entry booked before this table existed has none. Like the journal's other
-- tables, its link to `entries` is held by the writer (0004_writer_owned_integrity.sql).
CREATE TABLE envelopes (
    entry_sequence BIGINT PRIMARY KEY,
    key_id TEXT NOT NULL,
    body BYTEA NOT NULL,
    signature BYTEA NOT NULL
);
