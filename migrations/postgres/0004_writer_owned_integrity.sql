-- The journal's references (postings and lots to their entry, postings and balances to their
-- account) are made by the single writer in the same transaction as the rows they point to,
-- and `coalition check` verifies them. As row triggers, PostgreSQL's foreign-key checks took
-- about 40% of the writer's database time on the benchmark (10,400 against 17,600
-- transactions per second without them), so here they are dropped. SQLite keeps its foreign
-- keys, which cost it about 10%.

ALTER TABLE postings DROP CONSTRAINT postings_entry_sequence_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_account_id_fkey;
ALTER TABLE lots DROP CONSTRAINT lots_entry_sequence_fkey;
ALTER TABLE lot_consumptions DROP CONSTRAINT lot_consumptions_entry_sequence_fkey;
ALTER TABLE account_balances DROP CONSTRAINT account_balances_account_id_fkey;
