//! Read queries for the gRPC query service. They read committed state only: what a client
//! reads was acknowledged.

use coalition_domain::account::{AccountKey, Asset};
use coalition_domain::journal::{Entry, EntryKind};
pub use coalition_domain::reconciliation::ClearedTransaction;
use coalition_domain::{MemberId, MerchantId, MerchantTransactionId, Receipt, ReceiptKey};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use crate::load::{
    PostingRow, account_by_key, assemble, entry_columns, entry_row, posting_columns, posting_row,
};
use crate::{Storage, StorageError, with_pool};

/// An account's balance of one asset at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBalance {
    pub account: AccountKey,
    pub asset: Asset,
    pub balance: i64,
    /// The last entry included.
    pub as_of_sequence: u64,
}

/// One page of a member's history, newest first.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<Entry>,
    /// Pass as `before_sequence` for the next page; `None` on the last page.
    pub next_before_sequence: Option<u64>,
}

impl Storage {
    /// The balance of an account, now (`as_of_ms` = None, from the stored balance, one index
    /// lookup) or as of an acceptance time (inclusive, summed from the postings).
    pub async fn account_balance(
        &self,
        account: &AccountKey,
        asset: Asset,
        as_of_ms: Option<i64>,
    ) -> Result<AccountBalance, StorageError> {
        let Some(as_of_ms) = as_of_ms else {
            return self.current_balance(account, asset).await;
        };
        let (balance, last): (Option<i64>, Option<i64>) = with_pool!(self, pool => {
            let row = sqlx::query(self.by_key(
                "SELECT CAST(SUM(p.amount) AS BIGINT) AS balance, MAX(p.entry_sequence) AS last \
                 FROM postings p \
                 JOIN accounts a ON a.account_id = p.account_id \
                 JOIN entries e ON e.sequence = p.entry_sequence \
                 WHERE a.kind = $1 AND a.owner = $2 AND p.asset = $3 AND e.accepted_at_ms <= $4",
                "SELECT CAST(SUM(p.amount) AS BIGINT) AS balance, MAX(p.entry_sequence) AS last \
                 FROM (SELECT account_id FROM accounts WHERE kind = $1 AND owner = $2) a \
                 CROSS JOIN LATERAL (SELECT entry_sequence, amount FROM postings \
                    WHERE account_id = a.account_id AND asset = $3 OFFSET 0) p \
                 CROSS JOIN LATERAL (SELECT 1 FROM entries \
                    WHERE sequence = p.entry_sequence AND accepted_at_ms <= $4 OFFSET 0) e",
            ))
            .bind(account.kind())
            .bind(account.owner().to_owned())
            .bind(asset.code())
            .bind(as_of_ms)
            .fetch_one(pool)
            .await?;
            (row.try_get("balance")?, row.try_get("last")?)
        });
        Ok(AccountBalance {
            account: account.clone(),
            asset,
            balance: balance.unwrap_or(0),
            as_of_sequence: last.unwrap_or(0) as u64,
        })
    }

    /// The stored balance and the last entry that moved it, read in one statement so both
    /// come from the same committed state.
    async fn current_balance(
        &self,
        account: &AccountKey,
        asset: Asset,
    ) -> Result<AccountBalance, StorageError> {
        let found: Option<(Option<i64>, Option<i64>)> = with_pool!(self, pool => {
            sqlx::query(
                "SELECT \
                   (SELECT b.balance FROM account_balances b WHERE b.account_id = a.account_id AND b.asset = $3) AS balance, \
                   (SELECT MAX(p.entry_sequence) FROM postings p WHERE p.account_id = a.account_id AND p.asset = $3) AS last \
                 FROM accounts a WHERE a.kind = $1 AND a.owner = $2",
            )
            .bind(account.kind())
            .bind(account.owner().to_owned())
            .bind(asset.code().to_owned())
            .fetch_optional(pool)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get("balance")?, row.try_get("last")?)))
            .transpose()?
        });
        let (balance, last) = found.unwrap_or((None, None));
        Ok(AccountBalance {
            account: account.clone(),
            asset,
            balance: balance.unwrap_or(0),
            as_of_sequence: last.unwrap_or(0) as u64,
        })
    }

    /// A member's entries, newest first, optionally only those made at one merchant.
    pub async fn member_history(
        &self,
        member_id: &MemberId,
        merchant_id: Option<&MerchantId>,
        before_sequence: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, StorageError> {
        let before = before_sequence.map_or(i64::MAX, |sequence| sequence as i64);
        let merchant = merchant_id.map(|merchant| merchant.to_string());
        let limit = i64::from(limit);
        // Every entry that names a member posts to its wallet or held account, so the
        // member's entries are found through those accounts' postings (no index of entries by
        // member is kept: it cost the writer a random insert per entry); the member condition
        // keeps out entries of other members that posted there (a merge's alias).
        let sql = self.by_key(
            concat!(
                "SELECT ", entry_columns!(), " FROM entries WHERE sequence IN ( \
                   SELECT p.entry_sequence FROM accounts a JOIN postings p ON p.account_id = a.account_id \
                   WHERE a.kind IN ('member_wallet', 'member_held') AND a.owner = $1 AND p.entry_sequence < $2) \
                 AND member_id = $1 AND (CAST($3 AS TEXT) IS NULL OR merchant_id = $3) \
                 ORDER BY sequence DESC LIMIT $4"
            ),
            concat!(
                "SELECT ", entry_columns!(), " FROM ( \
                   SELECT DISTINCT p.entry_sequence AS candidate FROM accounts a \
                   CROSS JOIN LATERAL (SELECT entry_sequence FROM postings \
                     WHERE account_id = a.account_id AND entry_sequence < $2 OFFSET 0) p \
                   WHERE a.kind IN ('member_wallet', 'member_held') AND a.owner = $1) s \
                 CROSS JOIN LATERAL (SELECT * FROM entries WHERE sequence = s.candidate OFFSET 0) e \
                 WHERE member_id = $1 AND (CAST($3 AS TEXT) IS NULL OR merchant_id = $3) \
                 ORDER BY sequence DESC LIMIT $4"
            ),
        );
        let entry_rows = with_pool!(self, pool => {
            sqlx::query(sql)
            .bind(member_id.to_string())
            .bind(before)
            .bind(merchant.clone())
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok(entry_row!(row)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let sequences: Vec<i64> = entry_rows.iter().map(|row| row.sequence).collect();
        let posting_rows = self.postings_of(&sequences).await?;
        let entries = assemble(entry_rows, posting_rows)?;
        let next_before_sequence = if entries.len() as i64 == limit {
            entries.last().map(|entry| entry.sequence)
        } else {
            None
        };
        Ok(HistoryPage {
            entries,
            next_before_sequence,
        })
    }

    /// The text of a query that reads one account's postings: `sqlite`'s joins, or on
    /// PostgreSQL `postgres`, the same query driven from the account by lateral subqueries
    /// that only the indexes can serve. Without fresh statistics PostgreSQL planned the
    /// joins as scans of every posting (80 million at 12 million entries).
    fn by_key(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Storage::Sqlite(..) => sqlite,
            Storage::Postgres(_) => postgres,
        }
    }

    /// The postings of the entries `sequences`, in entry and posting order. On PostgreSQL
    /// each entry's postings and each posting's account are found by key (lateral
    /// subqueries, as `account_by_key!`): a join or an `IN` over `postings` was planned as a
    /// scan of all of it without fresh statistics (8 s for a member's page of history at 12
    /// million entries).
    pub(crate) async fn postings_of(
        &self,
        sequences: &[i64],
    ) -> Result<Vec<PostingRow>, StorageError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let rows = match self {
            Storage::Sqlite(pool, _) => {
                let list = sequences
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                // Built only from integers.
                sqlx::query(AssertSqlSafe(format!(
                    concat!(
                        "SELECT ", posting_columns!(), " FROM postings p JOIN accounts a ON a.account_id = p.account_id \
                         WHERE p.entry_sequence IN ({}) ORDER BY p.entry_sequence, p.posting_index"
                    ),
                    list
                )))
                .persistent(false)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok(posting_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Storage::Postgres(pool) => {
                sqlx::query(concat!(
                    "SELECT ", posting_columns!(), " FROM UNNEST($1::BIGINT[]) AS s (sequence) \
                     CROSS JOIN LATERAL (SELECT * FROM postings WHERE entry_sequence = s.sequence OFFSET 0) p",
                    account_by_key!(),
                    "ORDER BY p.entry_sequence, p.posting_index"
                ))
                .bind(sequences)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok(posting_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        Ok(rows)
    }

    /// The entry a merchant's transaction made, if any.
    pub async fn entry_by_transaction(
        &self,
        merchant_id: &MerchantId,
        merchant_transaction_id: &MerchantTransactionId,
    ) -> Result<Option<Entry>, StorageError> {
        let sequence: Option<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT sequence FROM entries WHERE merchant_id = $1 AND merchant_transaction_id = $2")
                .bind(merchant_id.to_string())
                .bind(merchant_transaction_id.to_string())
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get("sequence"))
                .transpose()?
        });
        match sequence {
            Some(sequence) => Ok(self.entries_after(sequence as u64 - 1, 1).await?.pop()),
            None => Ok(None),
        }
    }

    /// The sequence of the last committed entry, 0 for an empty journal.
    pub async fn last_sequence(&self) -> Result<u64, StorageError> {
        let last: Option<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT MAX(sequence) AS last FROM entries")
                .fetch_one(pool)
                .await?
                .try_get("last")?
        });
        Ok(last.map_or(0, |last| last as u64))
    }

    /// The merchant that submitted entry `sequence`, if a merchant did.
    pub async fn entry_merchant(&self, sequence: u64) -> Result<Option<MerchantId>, StorageError> {
        let merchant: Option<Option<String>> = with_pool!(self, pool => {
            sqlx::query("SELECT merchant_id FROM entries WHERE sequence = $1")
                .bind(crate::batch::to_i64(sequence))
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get("merchant_id"))
                .transpose()?
        });
        merchant
            .flatten()
            .map(|id| {
                MerchantId::new(id.clone()).map_err(|error| {
                    StorageError::Corrupt(format!(
                        "entry {sequence} has merchant id {id:?}: {error}"
                    ))
                })
            })
            .transpose()
    }
}

impl Storage {
    /// Every transaction `merchant_id` submitted that was accepted in [from_ms, to_ms).
    pub async fn merchant_transactions(
        &self,
        merchant_id: &MerchantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ClearedTransaction>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT merchant_transaction_id, kind, points, spend_minor, sequence FROM entries \
                 WHERE merchant_id = $1 AND accepted_at_ms >= $2 AND accepted_at_ms < $3 \
                 ORDER BY sequence",
            )
            .bind(merchant_id.to_string())
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("merchant_transaction_id")?,
                    row.try_get::<String, _>("kind")?,
                    row.try_get::<i64, _>("points")?,
                    row.try_get::<Option<i64>, _>("spend_minor")?,
                    row.try_get::<i64, _>("sequence")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows
            .into_iter()
            .map(
                |(merchant_transaction_id, kind, points, spend_minor, sequence)| {
                    ClearedTransaction {
                        merchant_transaction_id,
                        kind,
                        points,
                        spend_minor,
                        sequence: sequence as u64,
                    }
                },
            )
            .collect())
    }
}

/// How many alias hops a lookup follows; matches the ledger's limit.
const ALIAS_DEPTH_MAX: usize = coalition_domain::ledger::ALIAS_DEPTH_MAX;

impl Storage {
    /// Follows stored aliases to the member id that owns the wallet.
    pub async fn resolve_member(&self, member_id: &MemberId) -> Result<MemberId, StorageError> {
        let mut current = member_id.to_string();
        for _ in 0..ALIAS_DEPTH_MAX {
            let target: Option<String> = with_pool!(self, pool => {
                sqlx::query("SELECT target FROM member_aliases WHERE alias = $1")
                    .bind(current.clone())
                    .fetch_optional(pool)
                    .await?
                    .map(|row| row.try_get("target"))
                    .transpose()?
            });
            match target {
                Some(target) => current = target,
                None => break,
            }
        }
        MemberId::new(current)
            .map_err(|error| StorageError::Corrupt(format!("alias target {error}")))
    }

    /// Whether exactly this member id is enrolled (aliases are not followed).
    pub async fn member_enrolled(&self, member_id: &MemberId) -> Result<bool, StorageError> {
        Ok(with_pool!(self, pool => {
            sqlx::query("SELECT 1 FROM members WHERE member_id = $1")
                .bind(member_id.as_str())
                .fetch_optional(pool)
                .await?
                .is_some()
        }))
    }
}

/// How many keys one SQLite receipt lookup binds (two parameters each).
const RECEIPT_KEYS_PER_SQLITE_QUERY_MAX: usize = 10_000;

/// Reads a receipt row of either backend.
macro_rules! receipt_row {
    ($row:expr) => {{
        let row = &$row;
        (
            row.try_get::<String, _>("merchant_id")?,
            row.try_get::<String, _>("merchant_transaction_id")?,
            row.try_get::<i64, _>("sequence")?,
            row.try_get::<String, _>("kind")?,
            row.try_get::<i64, _>("accepted_at_ms")?,
            row.try_get::<Option<i64>, _>("occurred_at_ms")?,
            row.try_get::<Option<Vec<u8>>, _>("body_hash")?,
            row.try_get::<String, _>("member_id")?,
            row.try_get::<i64, _>("points")?,
            row.try_get::<i64, _>("member_points_after")?,
        )
    }};
}

type ReceiptRow = (
    String,
    String,
    i64,
    String,
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    String,
    i64,
    i64,
);

fn receipt_from_row(row: ReceiptRow) -> Result<(ReceiptKey, Receipt), StorageError> {
    let (
        merchant_id,
        transaction_id,
        sequence,
        kind,
        accepted_at_ms,
        occurred_at_ms,
        body_hash,
        member_id,
        points,
        member_points_after,
    ) = row;
    let corrupt = |what: &str| StorageError::Corrupt(format!("entry {sequence}: {what}"));
    let key = (
        MerchantId::new(merchant_id).map_err(|_| corrupt("merchant id"))?,
        MerchantTransactionId::new(transaction_id).map_err(|_| corrupt("transaction id"))?,
    );
    let receipt = Receipt {
        sequence: u64::try_from(sequence).map_err(|_| corrupt("sequence"))?,
        occurred_at_ms: occurred_at_ms.unwrap_or_default(),
        kind: EntryKind::from_code(&kind).ok_or_else(|| corrupt("kind"))?,
        accepted_at_ms,
        body_hash: body_hash
            .unwrap_or_default()
            .try_into()
            .map_err(|_| corrupt("body hash"))?,
        member_id: MemberId::new(member_id).map_err(|_| corrupt("member id"))?,
        points,
        member_points_after,
    };
    Ok((key, receipt))
}

impl Storage {
    /// The receipts of those of `keys` that the journal holds: one query (per 10,000 keys on
    /// SQLite), each key one probe of the unique index on (merchant, transaction id).
    pub async fn receipts_for(
        &self,
        keys: &[ReceiptKey],
    ) -> Result<Vec<(ReceiptKey, Receipt)>, StorageError> {
        let mut rows: Vec<ReceiptRow> = Vec::new();
        match self {
            Storage::Sqlite(pool, _) => {
                for chunk in keys.chunks(RECEIPT_KEYS_PER_SQLITE_QUERY_MAX) {
                    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
                        "WITH wanted (merchant_id, merchant_transaction_id) AS (",
                    );
                    builder.push_values(chunk, |mut row, (merchant, transaction)| {
                        row.push_bind(merchant.to_string())
                            .push_bind(transaction.to_string());
                    });
                    builder.push(
                        ") SELECT e.merchant_id, e.merchant_transaction_id, e.sequence, e.kind, e.accepted_at_ms, \
                         e.occurred_at_ms, e.body_hash, e.member_id, e.points, e.member_points_after \
                         FROM wanted w JOIN entries e \
                         ON e.merchant_id = w.merchant_id AND e.merchant_transaction_id = w.merchant_transaction_id",
                    );
                    // Not cached: the text changes with the number of keys.
                    for row in builder.build().persistent(false).fetch_all(pool).await? {
                        rows.push(receipt_row!(row));
                    }
                }
            }
            Storage::Postgres(pool) => {
                let merchants: Vec<String> = keys
                    .iter()
                    .map(|(merchant, _)| merchant.to_string())
                    .collect();
                let transactions: Vec<String> = keys
                    .iter()
                    .map(|(_, transaction)| transaction.to_string())
                    .collect();
                // LATERAL makes each key one probe of the unique index, whatever the planner
                // guesses about the array's length; a plain join may scan the whole journal.
                let fetched = sqlx::query(
                    "SELECT e.merchant_id, e.merchant_transaction_id, e.sequence, e.kind, e.accepted_at_ms, \
                     e.occurred_at_ms, e.body_hash, e.member_id, e.points, e.member_points_after \
                     FROM UNNEST($1::text[], $2::text[]) AS w (merchant_id, merchant_transaction_id) \
                     CROSS JOIN LATERAL (SELECT * FROM entries x \
                        WHERE x.merchant_id = w.merchant_id \
                        AND x.merchant_transaction_id = w.merchant_transaction_id) e",
                )
                .bind(merchants)
                .bind(transactions)
                .fetch_all(pool)
                .await?;
                for row in fetched {
                    rows.push(receipt_row!(row));
                }
            }
        }
        rows.into_iter().map(receipt_from_row).collect()
    }
}

/// One posting to an account with the balance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountHistoryLine {
    pub entry_sequence: u64,
    pub accepted_at_ms: i64,
    pub kind: String,
    pub merchant_transaction_id: Option<String>,
    pub amount: i64,
    pub balance_after: i64,
}

/// Outstanding points of one issuer in one age band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutstandingPoints {
    pub issuer: String,
    pub age_days: &'static str,
    pub points: i64,
}

/// The age bands of outstanding points, in days since earned, youngest first.
pub const AGE_BANDS_DAYS: [&str; 5] = ["0-29", "30-89", "90-179", "180-364", "365+"];

impl Storage {
    /// One account's postings of one asset, newest first, with the balance after each, and the
    /// cursor of the next page.
    pub async fn account_history(
        &self,
        account: &AccountKey,
        asset: Asset,
        before_sequence: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<AccountHistoryLine>, Option<u64>), StorageError> {
        let before = before_sequence.map_or(i64::MAX, |sequence| sequence as i64);
        let rows: Vec<(i64, i64, String, Option<String>, i64)> = with_pool!(self, pool => {
            sqlx::query(self.by_key(
                "SELECT p.entry_sequence AS entry_sequence, e.accepted_at_ms AS accepted_at_ms, e.kind AS kind, \
                 e.merchant_transaction_id AS merchant_transaction_id, CAST(SUM(p.amount) AS BIGINT) AS amount \
                 FROM postings p \
                 JOIN accounts a ON a.account_id = p.account_id \
                 JOIN entries e ON e.sequence = p.entry_sequence \
                 WHERE a.kind = $1 AND a.owner = $2 AND p.asset = $3 AND p.entry_sequence < $4 \
                 GROUP BY p.entry_sequence, e.accepted_at_ms, e.kind, e.merchant_transaction_id \
                 ORDER BY p.entry_sequence DESC LIMIT $5",
                "SELECT p.entry_sequence AS entry_sequence, e.accepted_at_ms AS accepted_at_ms, e.kind AS kind, \
                 e.merchant_transaction_id AS merchant_transaction_id, p.amount AS amount \
                 FROM (SELECT account_id FROM accounts WHERE kind = $1 AND owner = $2) a \
                 CROSS JOIN LATERAL (SELECT entry_sequence, CAST(SUM(amount) AS BIGINT) AS amount FROM postings \
                    WHERE account_id = a.account_id AND asset = $3 AND entry_sequence < $4 \
                    GROUP BY entry_sequence ORDER BY entry_sequence DESC LIMIT $5 OFFSET 0) p \
                 CROSS JOIN LATERAL (SELECT accepted_at_ms, kind, merchant_transaction_id FROM entries \
                    WHERE sequence = p.entry_sequence OFFSET 0) e \
                 ORDER BY p.entry_sequence DESC",
            ))
            .bind(account.kind())
            .bind(account.owner().to_owned())
            .bind(asset.code().to_owned())
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("entry_sequence")?,
                    row.try_get("accepted_at_ms")?,
                    row.try_get("kind")?,
                    row.try_get("merchant_transaction_id")?,
                    row.try_get("amount")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let Some(&(newest, ..)) = rows.first() else {
            return Ok((Vec::new(), None));
        };
        let balance_at_newest: Option<i64> = with_pool!(self, pool => {
            sqlx::query(self.by_key(
                "SELECT CAST(SUM(p.amount) AS BIGINT) AS balance FROM postings p \
                 JOIN accounts a ON a.account_id = p.account_id \
                 WHERE a.kind = $1 AND a.owner = $2 AND p.asset = $3 AND p.entry_sequence <= $4",
                "SELECT CAST(SUM(p.amount) AS BIGINT) AS balance \
                 FROM (SELECT account_id FROM accounts WHERE kind = $1 AND owner = $2) a \
                 CROSS JOIN LATERAL (SELECT amount FROM postings \
                    WHERE account_id = a.account_id AND asset = $3 AND entry_sequence <= $4 OFFSET 0) p",
            ))
            .bind(account.kind())
            .bind(account.owner().to_owned())
            .bind(asset.code().to_owned())
            .bind(newest)
            .fetch_one(pool)
            .await?
            .try_get("balance")?
        });
        let mut balance = balance_at_newest.unwrap_or(0);
        let full_page = rows.len() as u32 == limit;
        let mut lines = Vec::with_capacity(rows.len());
        for (sequence, accepted_at_ms, kind, merchant_transaction_id, amount) in rows {
            lines.push(AccountHistoryLine {
                entry_sequence: sequence as u64,
                accepted_at_ms,
                kind,
                merchant_transaction_id,
                amount,
                balance_after: balance,
            });
            balance -= amount;
        }
        let next = if full_page {
            lines.last().map(|line| line.entry_sequence)
        } else {
            None
        };
        Ok((lines, next))
    }

    /// Points not yet redeemed, by issuer and age band at `now_ms`, from the lots; only one
    /// issuer's when `issuer` is given.
    pub async fn outstanding_points(
        &self,
        issuer: Option<&MerchantId>,
        now_ms: i64,
    ) -> Result<Vec<OutstandingPoints>, StorageError> {
        const DAY_MS: i64 = 86_400_000;
        let issuer = issuer.map(|issuer| issuer.to_string());
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => {
            sqlx::query(
                "SELECT l.issuer AS issuer, \
                   CASE WHEN $1 - l.earned_at_ms < $3 THEN '0-29' \
                        WHEN $1 - l.earned_at_ms < $4 THEN '30-89' \
                        WHEN $1 - l.earned_at_ms < $5 THEN '90-179' \
                        WHEN $1 - l.earned_at_ms < $6 THEN '180-364' \
                        ELSE '365+' END AS age_days, \
                   CAST(SUM(l.points - COALESCE(c.consumed, 0)) AS BIGINT) AS points \
                 FROM lots l LEFT JOIN ( \
                    SELECT lot_entry_sequence, lot_index, SUM(points) AS consumed FROM ( \
                      SELECT lot_entry_sequence, lot_index, points FROM lot_consumptions UNION ALL \
                      SELECT lot_entry_sequence, lot_index, points FROM debt_repayments) u \
                    GROUP BY lot_entry_sequence, lot_index) c \
                 ON c.lot_entry_sequence = l.entry_sequence AND c.lot_index = l.lot_index \
                 WHERE (CAST($2 AS TEXT) IS NULL OR l.issuer = $2) \
                 GROUP BY l.issuer, age_days",
            )
            .bind(now_ms)
            .bind(issuer)
            .bind(30 * DAY_MS)
            .bind(90 * DAY_MS)
            .bind(180 * DAY_MS)
            .bind(365 * DAY_MS)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("issuer")?, row.try_get("age_days")?, row.try_get("points")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let mut outstanding: Vec<OutstandingPoints> = rows
            .into_iter()
            .filter(|(_, _, points)| *points != 0)
            .filter_map(|(issuer, band, points)| {
                AGE_BANDS_DAYS
                    .iter()
                    .find(|known| **known == band)
                    .map(|age_days| OutstandingPoints {
                        issuer,
                        age_days,
                        points,
                    })
            })
            .collect();
        outstanding.sort_by_key(|row| {
            (
                row.issuer.clone(),
                AGE_BANDS_DAYS.iter().position(|band| *band == row.age_days),
            )
        });
        Ok(outstanding)
    }
}
