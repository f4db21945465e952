-- Where each `coalition relay` stands: the last journal entry it published and saw
-- acknowledged by the broker. After a restart (also after kill -9) it publishes again from
-- the entry after it; the broker drops what it already holds by message id.
CREATE TABLE relay_positions (
    name TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
