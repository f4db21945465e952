-- Reversals, holds and expiry. An entry may refer to an earlier one (the original of a
-- reversal, the hold of a capture, void or hold expiry) and may create something that expires
-- (an earn's lot, a hold); lots record when they expire; terms say whether a merchant may
-- reverse other merchants' transactions (1) or not (0). Entry hashes cover the two new
-- entry columns, so a journal written before this version does not verify after it.

ALTER TABLE entries ADD COLUMN refers_to INTEGER;
ALTER TABLE entries ADD COLUMN expires_at_ms INTEGER;
CREATE INDEX entries_by_refers_to ON entries (refers_to) WHERE refers_to IS NOT NULL;
ALTER TABLE lots ADD COLUMN expires_at_ms INTEGER;
ALTER TABLE merchant_terms ADD COLUMN cross_merchant_reversals INTEGER NOT NULL DEFAULT 0;
