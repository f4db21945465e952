//! One writer per database. The engine holds this lock for its whole life, so a second
//! server started on the same database (a deploy that overlaps, a mistyped URL) refuses to
//! start instead of competing for the journal.

use sqlx::Connection;

use crate::{Storage, StorageError};

/// The PostgreSQL advisory lock key: "Coalitio" in ASCII.
const POSTGRES_WRITER_LOCK_KEY: i64 = 0x436f_616c_6974_696f;

/// Held while a writer runs; dropping it releases the lock.
#[derive(Debug)]
pub enum WriterLock {
    /// An open file with an exclusive lock, beside the SQLite database.
    Sqlite(std::fs::File),
    /// A session holding an advisory lock.
    Postgres(sqlx::PgConnection),
    /// An in-memory SQLite database cannot be shared; nothing to lock.
    Unshared,
}

impl WriterLock {
    /// Releases the lock now (it is also released when dropped or when the process dies).
    pub async fn release(self) {
        if let WriterLock::Postgres(mut connection) = self {
            // Unlocked by a statement that returns once the lock is free: closing the session
            // alone frees it only when the server has ended that session, which a server
            // started right after may not see yet (a restart then found the lock held).
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(POSTGRES_WRITER_LOCK_KEY)
                .execute(&mut connection)
                .await;
            let _ = connection.close().await;
        }
    }
}

/// The database file of a `sqlite:` URL, if it names one.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(std::path::PathBuf::from(path))
    }
}

impl Storage {
    /// Whether this database keeps a WAL that `checkpoint_wal` copies (SQLite).
    pub fn keeps_wal(&self) -> bool {
        matches!(self, Storage::Sqlite(..))
    }

    /// SQLite: copies what the WAL holds into the database file as far as no reader still
    /// needs it (a passive checkpoint), on one of the pool's connections, so neither the
    /// writer nor readers wait for it. Durability does not depend on it: a commit is durable
    /// once its WAL frames are synced. PostgreSQL: nothing (it checkpoints by itself).
    pub async fn checkpoint_wal(&self) -> Result<(), StorageError> {
        if let Storage::Sqlite(pool, _) = self {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Takes the single-writer lock of this database, or says who holds it.
    pub async fn lock_writer(&self, url: &str) -> Result<WriterLock, StorageError> {
        match self {
            Storage::Sqlite(..) => {
                let Some(path) = sqlite_path(url) else {
                    return Ok(WriterLock::Unshared);
                };
                let lock_path = std::path::PathBuf::from(format!("{}.writer-lock", path.display()));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|error| {
                        StorageError::WriterLocked(format!(
                            "cannot open {}: {error}",
                            lock_path.display()
                        ))
                    })?;
                match file.try_lock() {
                    Ok(()) => Ok(WriterLock::Sqlite(file)),
                    Err(_) => Err(StorageError::WriterLocked(format!(
                        "another Coalition server holds {}",
                        lock_path.display()
                    ))),
                }
            }
            Storage::Postgres(pool) => {
                let mut connection = pool.acquire().await?.detach();
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(POSTGRES_WRITER_LOCK_KEY)
                    .fetch_one(&mut connection)
                    .await?;
                if locked {
                    Ok(WriterLock::Postgres(connection))
                } else {
                    let _ = connection.close().await;
                    Err(StorageError::WriterLocked(
                        "another Coalition server holds this database's writer lock".into(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://coalition.db"),
            Some("coalition.db".into())
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/a.db?mode=rwc"),
            Some("/tmp/a.db".into())
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
