//! Where each `coalition relay` stands in the journal.

use sqlx::Row;

use crate::batch::to_i64;
use crate::{Storage, StorageError, with_pool};

impl Storage {
    /// The last entry relay `name` published and saw acknowledged; 0 before its first.
    pub async fn relay_position(&self, name: &str) -> Result<u64, StorageError> {
        let sequence: Option<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT sequence FROM relay_positions WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get("sequence"))
                .transpose()?
        });
        Ok(sequence.map_or(0, |sequence| sequence as u64))
    }

    /// Records that relay `name` published everything through `sequence`.
    pub async fn set_relay_position(
        &self,
        name: &str,
        sequence: u64,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO relay_positions (name, sequence, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence, \
                 updated_at_ms = excluded.updated_at_ms",
            )
            .bind(name)
            .bind(to_i64(sequence))
            .bind(now_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
