//! Storage for Coalition: the only crate that sees sqlx. It owns the schemas (one set of
//! migrations per backend), the batch write of a writer's group commit, the recovery load
//! that rebuilds the ledger by replaying the journal, and the read queries.
//!
//! Two backends: SQLite, the embedded default (WAL, `synchronous = FULL`, `BEGIN IMMEDIATE`
//! write transactions), and PostgreSQL for production. Writes use few, large statements per
//! batch (multi-row `VALUES` on SQLite, `UNNEST` arrays on PostgreSQL) because statement count,
//! not row count, bounds throughput.

mod audit;
mod batch;
mod connect;
mod console;
mod load;
mod lock;
mod query;
mod reconcile;
mod relay;
mod settlement;
mod state;

pub use audit::{AuditReport, AuditStart};
pub use connect::{ConnectOptions, SQLITE_WRITER_CACHE_MIB_DEFAULT};
pub use console::HourlyCount;
pub use load::{CheckReport, LoadedState};
pub use lock::WriterLock;
pub use query::{
    AGE_BANDS_DAYS, AccountBalance, AccountHistoryLine, ClearedTransaction, HistoryPage,
    OutstandingPoints,
};
pub use reconcile::Reconciliation;
pub use settlement::PeriodPages;
pub use state::{CHECKPOINT_INTERVAL, MemberSummary, StartState};

use sqlx::{PgPool, SqlitePool};

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error(
        "SQLite is not in synchronous=FULL mode (found {0}); acknowledged writes would not survive a power loss"
    )]
    NotDurable(i64),
    #[error("this database already has a writer: {0}")]
    WriterLocked(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("cannot write the outcome")]
    Output(#[from] std::io::Error),
    #[error("the batch before this one failed to commit; nothing of this one was written")]
    PreviousBatchFailed,
}

/// A connection pool to one of the two backends.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The pool for reads and admin writes, and the writer's own connection, with a page
    /// cache large enough for the indexes a batch touches: the batch write and the loads
    /// before it run there.
    Sqlite(SqlitePool, SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool this storage has. The body is type-checked once
/// per backend, so it may only use what both drivers support.
macro_rules! with_pool {
    ($storage:expr, $pool:ident => $body:expr) => {
        match $storage {
            $crate::Storage::Sqlite($pool, _) => $body,
            $crate::Storage::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

impl Storage {
    /// Closes the pool, waiting for connections to return.
    pub async fn close(&self) {
        if let Storage::Sqlite(_, writer) = self {
            writer.close().await;
        }
        with_pool!(self, pool => pool.close().await)
    }
}
