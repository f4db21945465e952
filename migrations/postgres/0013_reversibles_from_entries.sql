-- What remains reversible of an earn, burn or capture is derived from the journal when the
-- writer loads a referred entry (the entry, and the sum of the reversals whose refers_to is
-- it, through entries_by_refers_to), not kept in a table of its own: a row per earn, burn and
-- capture written in every batch's transaction cost the write path more than the derivation
-- costs the loads (docs/benchmarks.md, "Reversibles from the journal").
DROP TABLE reversibles;
