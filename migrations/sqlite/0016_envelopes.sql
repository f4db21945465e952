-- The partner's signed envelope of each entry a merchant submitted (the key that signed,
-- the body's exact bytes, the signature), so that an export lets an auditor check the
-- partner's signature and not only the operator's. Written by the writer's batch with its
-- entries; an entry booked before this table existed has none.
CREATE TABLE envelopes (
    entry_sequence INTEGER PRIMARY KEY REFERENCES entries (sequence),
    key_id TEXT NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL
);
