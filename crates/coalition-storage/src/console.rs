//! Reads for the finance console's overview: entries per hour of a period, and the points
//! outstanding in members' wallets, each answered from an index or a few hundred rows
//! rather than a scan of the journal or of the members.

use coalition_domain::account::Asset;
use sqlx::Row;

use crate::{Storage, StorageError, with_pool};

/// An hour's count of entries of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyCount {
    /// Hours since the start asked for, from 0.
    pub hour: i64,
    pub kind: String,
    pub entries: i64,
}

const HOUR_MS: i64 = 3_600_000;

impl Storage {
    /// Entries accepted in `[start_ms, end_ms)`, counted by hour since `start_ms` and kind,
    /// from the acceptance-time index.
    pub async fn entries_per_hour(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<HourlyCount>, StorageError> {
        assert!(start_ms <= end_ms, "a range that ends before it starts");
        let counts = with_pool!(self, pool => {
            sqlx::query(
                "SELECT CAST((accepted_at_ms - $1) / $3 AS BIGINT) AS hour, kind, \
                        CAST(COUNT(*) AS BIGINT) AS entries \
                 FROM entries WHERE accepted_at_ms >= $1 AND accepted_at_ms < $2 \
                 GROUP BY hour, kind ORDER BY hour, kind",
            )
            .bind(start_ms)
            .bind(end_ms)
            .bind(HOUR_MS)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(HourlyCount {
                    hour: row.try_get("hour")?,
                    kind: row.try_get("kind")?,
                    entries: row.try_get("entries")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(counts)
    }

    /// The points in members' wallets and holds now: minus the points of every other
    /// account, since points sum to zero across the ledger.
    pub async fn points_in_wallets(&self) -> Result<i64, StorageError> {
        // Every asset sums to zero across all accounts, so the points in wallets and holds
        // are minus the points of every other account: the merchants' and the operator's,
        // a few per merchant, where summing the wallets would read a row per member.
        let kinds = coalition_domain::AccountKey::RESIDENT_KINDS
            .iter()
            .map(|kind| format!("'{kind}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(b.balance), 0) AS BIGINT) AS outside \
             FROM accounts a JOIN account_balances b ON b.account_id = a.account_id \
             WHERE a.kind IN ({kinds}) AND b.asset = $1"
        );
        let outside: i64 = with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(Asset::Points.code())
                .fetch_one(pool)
                .await?
                .try_get("outside")?
        });
        Ok(-outside)
    }
}

impl Storage {
    /// Each merchant's money position with the operator, as the credit limit reads it: the
    /// balances of its settlement, fees and payable accounts in `currency` (positive: the
    /// operator owes it). Merchants never posted to are absent.
    pub async fn merchant_positions(
        &self,
        currency: Asset,
    ) -> Result<std::collections::BTreeMap<String, i64>, StorageError> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query(
                "SELECT a.owner AS owner, CAST(SUM(b.balance) AS BIGINT) AS position \
                 FROM accounts a JOIN account_balances b ON b.account_id = a.account_id \
                 WHERE a.kind IN ('merchant_settlement', 'merchant_fees', 'merchant_payable') \
                   AND b.asset = $1 \
                 GROUP BY a.owner",
            )
            .bind(currency.code())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("owner")?, row.try_get("position")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows.into_iter().collect())
    }
}

/// Entries read per query when entries are fetched by their sequence numbers.
const ENTRIES_BY_SEQUENCE_PAGE_LEN: usize = 2_000;

impl Storage {
    /// The entries with sequence in `[first, last]` that post to any of `accounts`, in
    /// sequence order, found through `postings_by_account` (one range per account) rather
    /// than by reading the whole range: a merchant's statement reads its own entries only.
    pub async fn entries_posting_to(
        &self,
        accounts: &[coalition_domain::AccountKey],
        first: u64,
        last: u64,
    ) -> Result<Vec<coalition_domain::Entry>, StorageError> {
        let first = crate::batch::to_i64(first);
        let last = crate::batch::to_i64(last);
        let mut sequences = std::collections::BTreeSet::new();
        for account in accounts {
            let account_id: Option<i64> = with_pool!(self, pool => {
                sqlx::query("SELECT account_id FROM accounts WHERE kind = $1 AND owner = $2")
                    .bind(account.kind())
                    .bind(account.owner())
                    .fetch_optional(pool)
                    .await?
                    .map(|row| row.try_get("account_id"))
                    .transpose()?
            });
            let Some(account_id) = account_id else {
                continue;
            };
            let found: Vec<i64> = with_pool!(self, pool => {
                sqlx::query(
                    "SELECT entry_sequence FROM postings WHERE account_id = $1 \
                     AND entry_sequence >= $2 AND entry_sequence <= $3",
                )
                .bind(account_id)
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get("entry_sequence"))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            sequences.extend(found);
        }
        let sequences: Vec<i64> = sequences.into_iter().collect();
        let mut entries = Vec::with_capacity(sequences.len());
        for page in sequences.chunks(ENTRIES_BY_SEQUENCE_PAGE_LEN) {
            let entry_rows = match self {
                Storage::Sqlite(pool, _) => {
                    let list = page
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    // Built only from integers.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        concat!(
                            "SELECT ",
                            crate::load::entry_columns!(),
                            " FROM entries WHERE sequence IN ({}) ORDER BY sequence"
                        ),
                        list
                    )))
                    .persistent(false)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok(crate::load::entry_row!(row)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
                }
                Storage::Postgres(pool) => sqlx::query(concat!(
                    "SELECT ",
                    crate::load::entry_columns!(),
                    " FROM entries WHERE sequence = ANY($1::BIGINT[]) ORDER BY sequence"
                ))
                .bind(page)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok(crate::load::entry_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
            };
            if entry_rows.len() != page.len() {
                return Err(StorageError::Corrupt(format!(
                    "postings name {} entries of which {} exist",
                    page.len(),
                    entry_rows.len()
                )));
            }
            let posting_rows = self.postings_of(page).await?;
            entries.extend(crate::load::assemble(entry_rows, posting_rows)?);
        }
        Ok(entries)
    }
}
