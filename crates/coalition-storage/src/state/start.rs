//! Start-up without replay: the small state, the hash chain verified from the last
//! checkpoint, and the one-time replay that fills the state tables of an older journal.

use super::*;
use crate::with_pool;

/// The state tables `rebuild_state` empties and fills.
const STATE_TABLES: [&str; 3] = ["member_states", "open_holds", "state_pieces"];

/// Replaces the state tables' rows with `$rows` in an open transaction and commits it.
macro_rules! refill {
    ($transaction:ident, $write_state:ident, $insert:ident, $rows:expr, $checkpoint:expr) => {{
        for table in STATE_TABLES {
            // The names are the constants above.
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *$transaction)
                .await?;
        }
        $write_state(&mut $transaction, $rows, None).await?;
        if let Some(table) = $checkpoint {
            table.$insert(&mut $transaction).await?;
        }
        sqlx::query("UPDATE writer_state SET state_built = 1 WHERE id = 1")
            .execute(&mut *$transaction)
            .await?;
        $transaction.commit().await?;
    }};
}

/// What the writer starts from.
#[derive(Debug)]
pub struct StartState {
    /// Terms, earn rules, the merchants' and operator's accounts and balances, and the chain
    /// head; members and referred entries are loaded as batches need them.
    pub ledger: Ledger,
    pub registry: Registry,
    /// Entries whose hash chain start-up verified (those after the last checkpoint).
    pub verified_entries: u64,
    /// Whether the state tables had to be filled by replaying the journal (once, after an
    /// upgrade).
    pub rebuilt_state: bool,
}

impl Storage {
    /// The state the writer starts from, without replaying the journal: terms, earn rules,
    /// registry, the accounts and balances of merchants and the operator, and the chain head,
    /// verified from the last checkpoint. A journal whose state tables were never filled (one
    /// written before them) is replayed once to fill them.
    pub async fn load_start(&self) -> Result<StartState, StorageError> {
        let registry = self.load_registry().await?;
        let built: i64 = with_pool!(self, pool => {
            sqlx::query("SELECT state_built FROM writer_state WHERE id = 1")
                .fetch_one(pool)
                .await?
                .try_get("state_built")?
        });
        let rebuilt_state = built == 0;
        if rebuilt_state {
            self.rebuild_state().await?;
        }
        let mut ledger = Ledger::default();
        for terms in self.load_terms().await? {
            ledger.restore_terms(terms);
        }
        for rules in self.load_earn_rules().await? {
            ledger.restore_earn_rules(rules);
        }
        // A few indexed reads whatever the number of members. The kinds are listed so the
        // index on (kind, owner) finds the accounts ("not a member's" scanned every member's
        // two accounts). Their balances are read account by account: SQLite always joins
        // that way; PostgreSQL is made to (`OFFSET 0` keeps the subquery a subquery), since
        // without fresh statistics it estimated thousands of rows and scanned every balance.
        let kinds = AccountKey::RESIDENT_KINDS
            .iter()
            .map(|kind| format!("'{kind}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let balances = match self {
            Storage::Sqlite(..) => "LEFT JOIN account_balances b ON b.account_id = a.account_id",
            Storage::Postgres(_) => {
                "LEFT JOIN LATERAL (SELECT asset, balance FROM account_balances \
                 WHERE account_id = a.account_id OFFSET 0) b ON true"
            }
        };
        let resident_accounts = format!(
            "SELECT a.account_id, a.kind, a.owner, b.asset, b.balance FROM accounts a \
             {balances} WHERE a.kind IN ({kinds})"
        );
        let (accounts, next_account_id) = with_pool!(self, pool => {
            // Built only from the static texts above.
            let accounts = sqlx::query(sqlx::AssertSqlSafe(resident_accounts.clone()))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("account_id")?,
                    row.try_get::<String, _>("kind")?,
                    row.try_get::<String, _>("owner")?,
                    row.try_get::<Option<String>, _>("asset")?,
                    row.try_get::<Option<i64>, _>("balance")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let next: Option<i64> = sqlx::query("SELECT MAX(account_id) AS last FROM accounts")
                .fetch_one(pool)
                .await?
                .try_get("last")?;
            (accounts, next.unwrap_or(0) + 1)
        });
        for (id, kind, owner, asset, balance) in accounts {
            let key = AccountKey::from_parts(&kind, &owner)
                .ok_or_else(|| corrupt(format!("unknown account {kind}:{owner}")))?;
            let id = AccountId(u64::try_from(id).map_err(|_| corrupt("negative account id"))?);
            ledger.restore_account(id, key);
            if let (Some(asset), Some(balance)) = (asset, balance) {
                let asset = Asset::from_code(&asset)
                    .ok_or_else(|| corrupt(format!("unknown asset {asset:?}")))?;
                ledger.restore_balance(id, asset, balance);
            }
        }
        ledger.restore_next_account_id(
            u64::try_from(next_account_id).map_err(|_| corrupt("negative account id"))?,
        );
        let (head, verified_entries) = self.verify_from_checkpoint().await?;
        ledger.restore_head(head.0, head.1);
        ledger.keep_working_set();
        Ok(StartState {
            ledger,
            registry,
            verified_entries,
            rebuilt_state,
        })
    }

    /// Verifies the hash chain (links, hashes, balance) from the last checkpoint to the head
    /// and records a checkpoint at the head. Returns the head with its acceptance time, and
    /// how many entries were verified.
    async fn verify_from_checkpoint(&self) -> Result<((ChainHead, i64), u64), StorageError> {
        let checkpoint: Option<(i64, Vec<u8>)> = with_pool!(self, pool => {
            sqlx::query("SELECT sequence, hash FROM checkpoints ORDER BY sequence DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get::<i64, _>("sequence")?, row.try_get::<Vec<u8>, _>("hash")?)))
                .transpose()?
        });
        let mut head = ChainHead::GENESIS;
        let mut accepted_at_ms = i64::MIN;
        if let Some((checkpoint_sequence, hash)) = checkpoint {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| corrupt("a checkpoint hash is not 32 bytes"))?;
            let stored: Option<(Vec<u8>, i64)> = with_pool!(self, pool => {
                sqlx::query("SELECT hash, accepted_at_ms FROM entries WHERE sequence = $1")
                    .bind(checkpoint_sequence)
                    .fetch_optional(pool)
                    .await?
                    .map(|row| Ok::<_, sqlx::Error>((row.try_get::<Vec<u8>, _>("hash")?, row.try_get::<i64, _>("accepted_at_ms")?)))
                    .transpose()?
            });
            match stored {
                Some((stored_hash, at_ms)) if stored_hash == hash => {
                    head = ChainHead {
                        sequence: sequence(checkpoint_sequence)?,
                        hash,
                    };
                    accepted_at_ms = at_ms;
                }
                _ => {
                    return Err(corrupt(format!(
                        "entry {checkpoint_sequence} no longer has the hash its checkpoint verified"
                    )));
                }
            }
        }
        let mut verified = 0u64;
        loop {
            let page = self.entries_after(head.sequence, VERIFY_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for entry in page {
                // `entries_after` already checked that each entry balances.
                if entry.sequence != head.sequence + 1 || entry.previous_hash != head.hash {
                    return Err(corrupt(format!(
                        "entry {} does not link to entry {}",
                        entry.sequence, head.sequence
                    )));
                }
                if entry_hash(&entry) != entry.hash {
                    return Err(corrupt(format!(
                        "entry {}: its hash does not match its contents",
                        entry.sequence
                    )));
                }
                head = ChainHead {
                    sequence: entry.sequence,
                    hash: entry.hash,
                };
                accepted_at_ms = accepted_at_ms.max(entry.accepted_at_ms);
                verified += 1;
            }
        }
        if verified > 0 {
            insert_checkpoint(self, "checkpoints", head, accepted_at_ms).await?;
        }
        Ok(((head, accepted_at_ms), verified))
    }

    /// Fills the state tables from a replay of the whole journal: once, for a journal written
    /// before them. Refuses if the replay finds the books unsound.
    async fn rebuild_state(&self) -> Result<(), StorageError> {
        tracing::info!(
            "filling the writer's state tables from the journal (once, after an upgrade)"
        );
        let (ledger, report) = self.replay(i64::MAX).await?;
        if !report.is_sound() {
            return Err(corrupt(report.problems.join("; ")));
        }
        let rows = ledger.whole_state_rows();
        let head = ledger.head();
        let checkpoint = (head.sequence > 0)
            .then(|| checkpoint_row(head.sequence, head.hash, ledger.last_accepted_at_ms()));
        match self {
            Storage::Sqlite(_, pool) => {
                let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
                refill!(
                    transaction,
                    write_state_sqlite,
                    insert_sqlite,
                    &rows,
                    checkpoint
                );
            }
            Storage::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                refill!(
                    transaction,
                    write_state_postgres,
                    insert_postgres,
                    &rows,
                    checkpoint
                );
            }
        }
        Ok(())
    }
}
