//! Connecting, configuring and migrating.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlSafeStr};

use crate::{Storage, StorageError};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `sqlite://PATH` (the file is created on first use) or `postgres://...`.
    pub url: String,
    /// Pool size. SQLite has one writer at a time anyway; the rest serve reads.
    pub connections_max: u32,
    /// Whether a missing SQLite file is created (the server) or is an error (the check,
    /// which must not report an empty new database as sound).
    pub create_if_missing: bool,
    /// The page cache of the writer's SQLite connection, in MiB (ignored on PostgreSQL).
    pub sqlite_writer_cache_mib: u32,
}

impl ConnectOptions {
    /// An existing database, for the tools that read it or audit it beside (or instead of) a
    /// server: two connections, never created, the default writer cache.
    pub fn existing(url: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            connections_max: 2,
            create_if_missing: false,
            sqlite_writer_cache_mib: SQLITE_WRITER_CACHE_MIB_DEFAULT,
        }
    }
}

/// The default page cache of the writer's SQLite connection, in MiB. The batch write updates
/// indexes at random places (receipts, postings by account, wallet lots by member); with
/// SQLite's default 2 MB every batch read most of those pages again (docs/benchmarks.md:
/// 3,744 against about 5,200 tx/s with 64 MiB). Since the WAL checkpoint runs beside the
/// writer, 64 MiB measured at most 3% faster than 32 and cost 35–45 MiB of resident memory. It is
/// the largest single part of the server's memory under load, so it is a setting
/// (`sqlite_writer_cache_mib`).
pub const SQLITE_WRITER_CACHE_MIB_DEFAULT: u32 = 32;

/// Prepared statements each SQLite connection keeps. The batch write's statements change with
/// the batch (and are not cached); the writer's and queries' fixed statements are a few dozen.
const SQLITE_STATEMENT_CACHE_CAPACITY: usize = 16;

/// WAL pages after which the writer's own commit copies the WAL into the database file
/// (SQLite's automatic checkpoint; its default is 1,000). The writer asks for a passive
/// checkpoint on a pool connection after each commit (`Storage::checkpoint_wal`), off its
/// path; this is the backstop should that fall behind, and it bounds the WAL's size.
const SQLITE_WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../../migrations/sqlite/0001_ledger.sql"),
    ),
    (
        2,
        "terms",
        include_str!("../../../migrations/sqlite/0002_terms.sql"),
    ),
    (
        3,
        "fees",
        include_str!("../../../migrations/sqlite/0003_fees.sql"),
    ),
    (
        5,
        "reversals holds expiry",
        include_str!("../../../migrations/sqlite/0005_reversals_holds_expiry.sql"),
    ),
    (
        6,
        "credit limits",
        include_str!("../../../migrations/sqlite/0006_credit_limits.sql"),
    ),
    (
        7,
        "earn by spend",
        include_str!("../../../migrations/sqlite/0007_earn_by_spend.sql"),
    ),
    (
        8,
        "exchange rates",
        include_str!("../../../migrations/sqlite/0008_exchange_rates.sql"),
    ),
    (
        9,
        "settlement",
        include_str!("../../../migrations/sqlite/0009_settlement.sql"),
    ),
    (
        10,
        "debt repayments",
        include_str!("../../../migrations/sqlite/0010_debt_repayments.sql"),
    ),
    (
        11,
        "writer state",
        include_str!("../../../migrations/sqlite/0011_writer_state.sql"),
    ),
    (
        12,
        "member states",
        include_str!("../../../migrations/sqlite/0012_member_states.sql"),
    ),
    (
        13,
        "reversibles from entries",
        include_str!("../../../migrations/sqlite/0013_reversibles_from_entries.sql"),
    ),
    (
        14,
        "relay positions",
        include_str!("../../../migrations/sqlite/0014_relay_positions.sql"),
    ),
    (
        15,
        "member history from postings",
        include_str!("../../../migrations/sqlite/0015_member_history_from_postings.sql"),
    ),
    (
        16,
        "partners' signed envelopes",
        include_str!("../../../migrations/sqlite/0016_envelopes.sql"),
    ),
];

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../../migrations/postgres/0001_ledger.sql"),
    ),
    (
        2,
        "terms",
        include_str!("../../../migrations/postgres/0002_terms.sql"),
    ),
    (
        3,
        "fees",
        include_str!("../../../migrations/postgres/0003_fees.sql"),
    ),
    (
        4,
        "writer owned integrity",
        include_str!("../../../migrations/postgres/0004_writer_owned_integrity.sql"),
    ),
    (
        5,
        "reversals holds expiry",
        include_str!("../../../migrations/postgres/0005_reversals_holds_expiry.sql"),
    ),
    (
        6,
        "credit limits",
        include_str!("../../../migrations/postgres/0006_credit_limits.sql"),
    ),
    (
        7,
        "earn by spend",
        include_str!("../../../migrations/postgres/0007_earn_by_spend.sql"),
    ),
    (
        8,
        "exchange rates",
        include_str!("../../../migrations/postgres/0008_exchange_rates.sql"),
    ),
    (
        9,
        "settlement",
        include_str!("../../../migrations/postgres/0009_settlement.sql"),
    ),
    (
        10,
        "debt repayments",
        include_str!("../../../migrations/postgres/0010_debt_repayments.sql"),
    ),
    (
        11,
        "writer state",
        include_str!("../../../migrations/postgres/0011_writer_state.sql"),
    ),
    (
        12,
        "member states",
        include_str!("../../../migrations/postgres/0012_member_states.sql"),
    ),
    (
        13,
        "reversibles from entries",
        include_str!("../../../migrations/postgres/0013_reversibles_from_entries.sql"),
    ),
    (
        14,
        "relay positions",
        include_str!("../../../migrations/postgres/0014_relay_positions.sql"),
    ),
    (
        15,
        "member history from postings",
        include_str!("../../../migrations/postgres/0015_member_history_from_postings.sql"),
    ),
    (
        16,
        "partners' signed envelopes",
        include_str!("../../../migrations/postgres/0016_envelopes.sql"),
    ),
];

fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// SQLite's code for `synchronous = FULL`.
const SQLITE_SYNCHRONOUS_FULL: i64 = 2;

impl Storage {
    /// Connects, applies pending migrations, and checks durability settings.
    pub async fn connect(options: &ConnectOptions) -> Result<Storage, StorageError> {
        let url = options.url.as_str();
        if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(options.create_if_missing)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                .statement_cache_capacity(SQLITE_STATEMENT_CACHE_CAPACITY);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.connections_max.max(2))
                .connect_with(connect.clone())
                .await?;
            let synchronous: i64 = sqlx::query("PRAGMA synchronous")
                .fetch_one(&pool)
                .await?
                .try_get(0)?;
            if synchronous != SQLITE_SYNCHRONOUS_FULL {
                return Err(StorageError::NotDurable(synchronous));
            }
            migrator(SQLITE_MIGRATIONS).run(&pool).await?;
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    connect
                        .pragma(
                            "cache_size",
                            format!("-{}", i64::from(options.sqlite_writer_cache_mib) * 1024),
                        )
                        .pragma(
                            "wal_autocheckpoint",
                            SQLITE_WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                        )
                        // Statement journals in memory: a batch's multi-row inserts each keep
                        // the pages they change until the statement ends, and SQLite spills
                        // that journal to a temporary file past 64 KiB. Over a mall day that
                        // was 5 of the writer's 12 GB written (docs/benchmarks.md). It only
                        // undoes a failed statement inside the open transaction, so where it
                        // lives does not touch durability: the WAL and its sync do.
                        .pragma("temp_store", "memory"),
                )
                .await?;
            Ok(Storage::Sqlite(pool, writer))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // Plans are made for each execution's own key arrays: a plan cached for the
            // statement (PostgreSQL's generic plan, chosen after five runs) cannot see how many
            // keys a batch brings and, with statistics from when the tables were small, it
            // scanned whole tables for a few thousand keys (30× slower loads, measured).
            // No JIT either: every statement here is short, and JIT compilation (tens to
            // hundreds of milliseconds) was triggered by cost estimates of tables that had
            // not been analysed yet.
            let connect = PgConnectOptions::from_str(url)?
                .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
            let pool = PgPoolOptions::new()
                .max_connections(options.connections_max.max(2))
                .connect_with(connect)
                .await?;
            migrator(POSTGRES_MIGRATIONS).run(&pool).await?;
            Ok(Storage::Postgres(pool))
        } else {
            Err(StorageError::UnsupportedUrl(options.url.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqlitePool;

    /// Every file in `migrations/<backend>/` is applied, in the order of its number, with its
    /// own text: a migration written and never listed here is never run.
    #[test]
    fn every_migration_file_is_applied() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        for (backend, listed) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let folder = std::path::Path::new(&manifest)
                .join("../../migrations")
                .join(backend);
            let mut files: Vec<(i64, String)> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|file| {
                    let path = file.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    let version = name.split('_').next().unwrap().parse().unwrap();
                    (version, std::fs::read_to_string(&path).unwrap())
                })
                .collect();
            files.sort();
            let applied: Vec<(i64, String)> = listed
                .iter()
                .map(|&(version, _, sql)| (version, sql.to_owned()))
                .collect();
            assert_eq!(applied, files, "{backend}");
        }
    }

    /// A new SQLite database in a directory of its own (removed by the test), with a writer
    /// cache of 3 MiB.
    async fn scratch_sqlite(name: &str) -> (Storage, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("coalition-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = Storage::connect(&ConnectOptions {
            url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            connections_max: 2,
            create_if_missing: true,
            sqlite_writer_cache_mib: 3,
        })
        .await
        .unwrap();
        (storage, dir)
    }

    /// The writer's connection gets the page cache it is configured with; the pool's keep
    /// SQLite's default.
    #[tokio::test]
    async fn the_sqlite_writer_cache_is_the_configured_one() {
        let (storage, dir) = scratch_sqlite("cache").await;
        let Storage::Sqlite(pool, writer) = &storage else {
            panic!("a SQLite URL gives SQLite storage")
        };
        let pragma = |pool: SqlitePool, name: &'static str| async move {
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
                .fetch_one(&pool)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        };
        assert_eq!(pragma(writer.clone(), "cache_size").await, -3 * 1024);
        assert_eq!(pragma(pool.clone(), "cache_size").await, -2000);
        // 2 is MEMORY: the batch write's statement journals stay off the disk.
        assert_eq!(pragma(writer.clone(), "temp_store").await, 2);
        assert_eq!(pragma(pool.clone(), "temp_store").await, 0);
        storage.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The batch write checks SQLite's foreign keys at its commit rather than row by row: a
    /// batch whose postings name accounts it does not create still fails as a whole, writes
    /// nothing, and leaves the writer's connection usable for the next batch.
    #[tokio::test]
    async fn a_batch_that_breaks_a_foreign_key_fails_at_its_commit_and_writes_nothing() {
        use coalition_domain::{Changes, Ledger, MerchantId};
        let (storage, dir) = scratch_sqlite("fk").await;
        let mut ledger = Ledger::default();
        let mut changes = Changes::default();
        ledger
            .fund_merchant(
                &MerchantId::new("m-1").unwrap(),
                5_000,
                "wire 1",
                0,
                &mut changes,
            )
            .unwrap();
        let balances = changes.balances(&ledger);
        let state = changes.state_rows(&ledger).unwrap();
        assert!(!changes.accounts.is_empty() && !changes.entries.is_empty());
        let accounts = std::mem::take(&mut changes.accounts);
        let error = storage
            .write_changes(&changes, &balances, &state)
            .await
            .expect_err("postings of accounts that do not exist");
        assert!(
            format!("{error:?}").contains("FOREIGN KEY"),
            "the database refused the batch for its foreign key: {error:?}"
        );
        let Storage::Sqlite(pool, _) = &storage else {
            panic!("a SQLite URL gives SQLite storage")
        };
        let count = |table: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table}"
                )))
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        for table in ["entries", "postings", "account_balances", "accounts"] {
            assert_eq!(count(table).await, 0, "{table} after the failed batch");
        }
        changes.accounts = accounts;
        storage
            .write_changes(&changes, &balances, &state)
            .await
            .unwrap();
        assert_eq!(count("entries").await, 1);
        assert_eq!(
            count("postings").await,
            changes.entries[0].postings.len() as i64
        );
        storage.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
