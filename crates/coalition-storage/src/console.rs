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

/// The account kinds that hold points outside members' wallets. Every asset sums to zero
/// across all accounts, so the points in wallets and holds are minus these accounts' sum:
/// a few rows per merchant, where summing the wallets would read a row per member.
const POINTS_ACCOUNT_KINDS_OUTSIDE_WALLETS: [&str; 11] = [
    "merchant_issued",
    "merchant_redeemed",
    "merchant_settlement",
    "merchant_fees",
    "merchant_payable",
    "merchant_breakage",
    "operator_float",
    "operator_rounding",
    "operator_fees",
    "operator_cash",
    "operator_trading",
];

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
        let kinds = POINTS_ACCOUNT_KINDS_OUTSIDE_WALLETS
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
