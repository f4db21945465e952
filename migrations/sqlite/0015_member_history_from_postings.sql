-- A member's history is read through the postings of the member's wallet and held accounts
-- (`postings_by_account`), which every entry naming a member posts to, instead of through an
-- index of its own: one random insert fewer per entry, the larger part of what the writer's
-- commit pays for secondary indexes (docs/benchmarks.md, "What the journal's secondary
-- indexes cost the SQLite writer").
DROP INDEX entries_by_member;
