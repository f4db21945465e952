//! Reconciliation in the database: the merchant's rows go into a temporary table as they
//! arrive, and the matching is two joins against `entries` in one snapshot, streamed. Memory
//! holds a page of rows at a time, whatever the size of the period or of the file; the
//! database keeps the rest on disk (PostgreSQL's temporary buffers spill; on SQLite the
//! session has a connection of its own that keeps temporary tables in a file).
//!
//! The rules are the domain's ([`coalition_domain::reconciliation`]): a row is compared with
//! the entry the merchant booked under the same transaction id in the period; a row whose id
//! an earlier row already has is a duplicate; an entry no row names is missing at the
//! merchant. Outcomes come in the record's order, then the missing ones by entry sequence.

use coalition_domain::MerchantId;
use coalition_domain::reconciliation::{
    ClearedTransaction, Difference, Malformed, MerchantRow, Summary, compare, missing_at_merchant,
};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Row, SqliteConnection, Transaction};
use tokio_stream::StreamExt;

use crate::{Storage, StorageError};

/// Rows written to the temporary table per statement (four parameters each: within both
/// backends' limits).
const PAGE_ROWS: usize = 2_000;

const CREATE_TABLE: &str = "CREATE TEMPORARY TABLE reconcile_rows (\
     line BIGINT PRIMARY KEY, merchant_transaction_id TEXT NOT NULL, \
     points BIGINT NOT NULL, amount_minor BIGINT)";
const CREATE_INDEX: &str =
    "CREATE INDEX reconcile_rows_by_id ON reconcile_rows (merchant_transaction_id, line)";

/// The record's rows in order, each with whether an earlier row has its id and the entry
/// booked under it in the period.
const ROWS_IN_ORDER: &str = "SELECT r.line, r.merchant_transaction_id, r.points, r.amount_minor, \
     CAST(CASE WHEN EXISTS (SELECT 1 FROM reconcile_rows d \
         WHERE d.merchant_transaction_id = r.merchant_transaction_id AND d.line < r.line) \
         THEN 1 ELSE 0 END AS BIGINT) AS duplicated, \
     e.sequence, e.points AS clearing_points, e.spend_minor \
     FROM reconcile_rows r \
     LEFT JOIN entries e ON e.merchant_id = $1 \
         AND e.merchant_transaction_id = r.merchant_transaction_id \
         AND e.accepted_at_ms >= $2 AND e.accepted_at_ms < $3 \
     ORDER BY r.line";

/// The merchant's entries in the period that no row names, in order.
const MISSING_IN_ORDER: &str = "SELECT e.merchant_transaction_id, e.points, e.spend_minor, e.sequence \
     FROM entries e \
     WHERE e.merchant_id = $1 AND e.accepted_at_ms >= $2 AND e.accepted_at_ms < $3 \
       AND NOT EXISTS (SELECT 1 FROM reconcile_rows r \
           WHERE r.merchant_transaction_id = e.merchant_transaction_id) \
     ORDER BY e.sequence";

/// Clearing's totals for the merchant in the period.
const CLEARING_TOTALS: &str = "SELECT COUNT(*) AS transactions, \
     CAST(COALESCE(SUM(points), 0) AS BIGINT) AS points, \
     CAST(COALESCE(SUM(spend_minor), 0) AS BIGINT) AS amount_minor \
     FROM entries WHERE merchant_id = $1 AND accepted_at_ms >= $2 AND accepted_at_ms < $3";

enum Session {
    /// A connection of its own, outside the pool, with temporary tables in a file (this
    /// build's SQLite keeps them in memory unless told): the table is as large as the file.
    /// Closed when the session ends, so nothing of it returns to the pool.
    Sqlite(SqliteConnection),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs the same code against whichever connection the session has.
macro_rules! with_connection {
    ($session:expr, $connection:ident => $body:expr) => {
        match $session {
            Session::Sqlite(connection) => {
                let $connection: &mut SqliteConnection = connection;
                $body
            }
            Session::Postgres(transaction) => {
                let $connection: &mut PgConnection = &mut **transaction;
                $body
            }
        }
    };
}

/// A reconciliation under way: rows are added as they are read, then [`finish`] streams the
/// outcomes. Holds one connection (on PostgreSQL from the pool) until it finishes or is
/// dropped; nothing it does is ever committed (the temporary table goes with the
/// transaction).
///
/// [`finish`]: Reconciliation::finish
pub struct Reconciliation {
    session: Session,
    merchant_id: String,
    from_ms: i64,
    to_ms: i64,
    pending: Vec<MerchantRow>,
    summary: Summary,
}

impl Storage {
    /// Starts reconciling `merchant_id`'s record against the entries it booked with
    /// `from_ms <= accepted_at_ms < to_ms`.
    pub async fn begin_reconciliation(
        &self,
        merchant_id: &MerchantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Reconciliation, StorageError> {
        let mut session = match self {
            Storage::Sqlite(pool, _) => {
                let options = (*pool.connect_options())
                    .clone()
                    .pragma("temp_store", "file");
                let mut connection = SqliteConnection::connect_with(&options).await?;
                // One snapshot (WAL) for the totals and both passes.
                sqlx::raw_sql("BEGIN").execute(&mut connection).await?;
                Session::Sqlite(connection)
            }
            Storage::Postgres(pool) => Session::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await?,
            ),
        };
        with_connection!(&mut session, connection => {
            sqlx::query(CREATE_TABLE).execute(&mut *connection).await?;
            sqlx::query(CREATE_INDEX).execute(&mut *connection).await?;
        });
        Ok(Reconciliation {
            session,
            merchant_id: merchant_id.to_string(),
            from_ms,
            to_ms,
            pending: Vec::with_capacity(PAGE_ROWS),
            summary: Summary::default(),
        })
    }
}

impl Reconciliation {
    /// Adds a row of the merchant's record. Rows are numbered by the caller (`line`), each
    /// number once, in the order the record has them.
    pub async fn add(&mut self, row: MerchantRow) -> Result<(), StorageError> {
        self.summary.merchant_row(&row);
        self.pending.push(row);
        if self.pending.len() >= PAGE_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Counts a row that could not be read.
    pub fn malformed(&mut self, row: Malformed) {
        self.summary.malformed(row);
    }

    async fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        with_connection!(&mut self.session, connection => {
            let mut builder = QueryBuilder::new(
                "INSERT INTO reconcile_rows (line, merchant_transaction_id, points, amount_minor) ",
            );
            builder.push_values(&rows, |mut values, row| {
                values
                    .push_bind(row.line as i64)
                    .push_bind(row.merchant_transaction_id.clone())
                    .push_bind(row.points)
                    .push_bind(row.amount_minor);
            });
            builder.build().execute(&mut *connection).await?;
        });
        self.pending = rows;
        self.pending.clear();
        Ok(())
    }

    /// Matches the rows added with clearing's entries, handing every outcome that is a
    /// difference to `difference` in order, and returns the totals and counts.
    pub async fn finish(
        mut self,
        mut difference: impl FnMut(Difference) -> std::io::Result<()>,
    ) -> Result<Summary, StorageError> {
        self.flush().await?;
        let Reconciliation {
            mut session,
            merchant_id,
            from_ms,
            to_ms,
            mut summary,
            ..
        } = self;
        if let Session::Postgres(transaction) = &mut session {
            // Statistics for the planner: without them it guesses the table's size.
            sqlx::query("ANALYZE reconcile_rows")
                .execute(&mut **transaction)
                .await?;
        }
        with_connection!(&mut session, connection => {
            let totals = sqlx::query(CLEARING_TOTALS)
                .bind(&merchant_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_one(&mut *connection)
                .await?;
            summary.clearing.transactions = totals.try_get::<i64, _>("transactions")? as u64;
            summary.clearing.points = totals.try_get("points")?;
            summary.clearing.amount_minor = totals.try_get("amount_minor")?;
            let mut rows = sqlx::query(ROWS_IN_ORDER)
                .bind(&merchant_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch(&mut *connection);
            while let Some(row) = rows.next().await {
                let row = row?;
                let merchant_row = MerchantRow {
                    line: row.try_get::<i64, _>("line")? as u64,
                    merchant_transaction_id: row.try_get("merchant_transaction_id")?,
                    kind: String::new(),
                    points: row.try_get("points")?,
                    amount_minor: row.try_get("amount_minor")?,
                };
                let cleared = match row.try_get::<Option<i64>, _>("sequence")? {
                    Some(sequence) => Some(ClearedTransaction {
                        merchant_transaction_id: merchant_row.merchant_transaction_id.clone(),
                        kind: String::new(),
                        points: row.try_get("clearing_points")?,
                        spend_minor: row.try_get("spend_minor")?,
                        sequence: sequence as u64,
                    }),
                    None => None,
                };
                let duplicated = row.try_get::<i64, _>("duplicated")? != 0;
                let outcome = compare(&merchant_row, duplicated, cleared.as_ref());
                if summary.record(&outcome) {
                    difference(outcome)?;
                }
            }
            drop(rows);
            let mut missing = sqlx::query(MISSING_IN_ORDER)
                .bind(&merchant_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch(&mut *connection);
            while let Some(row) = missing.next().await {
                let row = row?;
                let outcome = missing_at_merchant(&ClearedTransaction {
                    merchant_transaction_id: row.try_get("merchant_transaction_id")?,
                    kind: String::new(),
                    points: row.try_get("points")?,
                    spend_minor: row.try_get("spend_minor")?,
                    sequence: row.try_get::<i64, _>("sequence")? as u64,
                });
                summary.record(&outcome);
                difference(outcome)?;
            }
        });
        match session {
            Session::Sqlite(mut connection) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut connection).await?;
                connection.close().await?;
            }
            Session::Postgres(transaction) => transaction.rollback().await?,
        }
        Ok(summary)
    }
}
