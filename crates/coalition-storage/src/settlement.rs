//! Reads for settlement and exports: a period's entries, the lot attribution of its
//! redemptions, opening balances, and the record of finalised periods.

use coalition_domain::chain::GENESIS_HASH;
use coalition_domain::settlement::{Attribution, Settlement};
use coalition_domain::{AccountKey, Asset, Entry, FinalisedPeriod};
use sqlx::Row;

use crate::{Storage, StorageError, with_pool};

fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

/// A period's entries read a page at a time, each page with the lot attribution of its
/// redemptions: what settlement needs, in memory bounded by the page length.
pub struct PeriodPages<'a> {
    storage: &'a Storage,
    /// The chain hash before the period's first entry.
    pub previous_hash: [u8; 32],
    after: u64,
    last: u64,
    page_len: u64,
}

impl PeriodPages<'_> {
    /// Skips the period's entries through `sequence` (those a caller has already read).
    pub fn resume_after(&mut self, sequence: u64) {
        self.after = self.after.max(sequence);
    }

    /// The next page, or `None` after the period's last entry.
    pub async fn next_page(
        &mut self,
    ) -> Result<Option<(Vec<Entry>, Vec<Attribution>)>, StorageError> {
        if self.after >= self.last {
            return Ok(None);
        }
        let limit = self.page_len.min(self.last - self.after);
        let entries = self.storage.entries_after(self.after, limit as i64).await?;
        let (Some(first), Some(tail)) = (entries.first(), entries.last()) else {
            return Err(corrupt(format!(
                "entries {}..{} are missing",
                self.after + 1,
                self.last
            )));
        };
        let attributions = self
            .storage
            .period_attributions(first.sequence, tail.sequence)
            .await?;
        self.after = tail.sequence;
        Ok(Some((entries, attributions)))
    }
}

impl Storage {
    /// Reads the entries accepted in `[start_ms, end_ms)` a page of `page_len` at a time.
    pub async fn period_pages(
        &self,
        start_ms: i64,
        end_ms: i64,
        page_len: u64,
    ) -> Result<PeriodPages<'_>, StorageError> {
        assert!(page_len > 0, "a page holds at least one entry");
        let previous_hash = self.hash_before(start_ms).await?;
        let (after, last) = match self.period_range(start_ms, end_ms).await? {
            Some((first, last)) => (first - 1, last),
            None => (0, 0),
        };
        Ok(PeriodPages {
            storage: self,
            previous_hash,
            after,
            last,
            page_len,
        })
    }

    /// The partners' signed envelopes kept for entries `first..=last`, by sequence: (entry
    /// sequence, key id, body, signature). Entries without one (operator entries, and those
    /// booked before envelopes were kept) are absent.
    pub async fn envelopes_between(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, String, Vec<u8>, Vec<u8>)>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT entry_sequence, key_id, body, signature FROM envelopes \
                 WHERE entry_sequence >= $1 AND entry_sequence <= $2 ORDER BY entry_sequence",
            )
            .bind(first as i64)
            .bind(last as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("entry_sequence")? as u64,
                    row.try_get::<String, _>("key_id")?,
                    row.try_get::<Vec<u8>, _>("body")?,
                    row.try_get::<Vec<u8>, _>("signature")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The members of the earns among entries `first..=last` whose points the earn rules
    /// gave (they record an earn rule version).
    pub async fn members_earning_by_rules(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<String>, StorageError> {
        let members = with_pool!(self, pool => {
            sqlx::query(
                "SELECT DISTINCT member_id FROM entries \
                 WHERE sequence >= $1 AND sequence <= $2 AND earn_rule_version IS NOT NULL",
            )
            .bind(first as i64)
            .bind(last as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("member_id"))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(members)
    }

    /// The tier each of `members` was enrolled with (`None`: no tier); members not enrolled
    /// are absent. Tiers never change after enrolment, so this is the tier of every earn.
    pub async fn member_tiers(
        &self,
        members: &[String],
    ) -> Result<std::collections::BTreeMap<String, Option<String>>, StorageError> {
        let mut tiers = std::collections::BTreeMap::new();
        for chunk in members.chunks(500) {
            let placeholders = (1..=chunk.len())
                .map(|index| format!("${index}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("SELECT member_id, tier FROM members WHERE member_id IN ({placeholders})");
            let rows = with_pool!(self, pool => {
                // Only numbered placeholders are formatted into the text; the ids are bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for member in chunk {
                    query = query.bind(member.as_str());
                }
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<String, _>("member_id")?,
                            row.try_get::<Option<String>, _>("tier")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            tiers.extend(rows);
        }
        Ok(tiers)
    }

    /// The range of sequence numbers accepted in `[start_ms, end_ms)`, if any.
    pub async fn period_range(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<(u64, u64)>, StorageError> {
        let (first, last) = with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT MIN(sequence) AS first, MAX(sequence) AS last FROM entries \
                 WHERE accepted_at_ms >= $1 AND accepted_at_ms < $2",
            )
            .bind(start_ms)
            .bind(end_ms)
            .fetch_one(pool)
            .await?;
            (
                row.try_get::<Option<i64>, _>("first")?,
                row.try_get::<Option<i64>, _>("last")?,
            )
        });
        Ok(match (first, last) {
            (Some(first), Some(last)) => Some((first as u64, last as u64)),
            _ => None,
        })
    }

    /// The chain hash after the last entry accepted before `start_ms` (genesis if none).
    async fn hash_before(&self, start_ms: i64) -> Result<[u8; 32], StorageError> {
        let hash = with_pool!(self, pool => {
            sqlx::query(
                "SELECT hash FROM entries WHERE sequence = \
                 (SELECT MAX(sequence) FROM entries WHERE accepted_at_ms < $1)",
            )
            .bind(start_ms)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<Vec<u8>, _>("hash"))
            .transpose()?
        });
        match hash {
            None => Ok(GENESIS_HASH),
            Some(bytes) => bytes
                .try_into()
                .map_err(|_| corrupt("an entry hash is not 32 bytes")),
        }
    }

    /// Which issuer's lots each redemption (burn, capture, exchange out) with sequence in
    /// `[first, last]` consumed.
    pub async fn period_attributions(
        &self,
        first: u64,
        last: u64,
    ) -> Result<Vec<Attribution>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT c.entry_sequence, l.issuer, c.points FROM lot_consumptions c \
                 JOIN lots l ON l.entry_sequence = c.lot_entry_sequence AND l.lot_index = c.lot_index \
                 JOIN entries e ON e.sequence = c.entry_sequence \
                 WHERE c.entry_sequence >= $1 AND c.entry_sequence <= $2 \
                 AND e.kind IN ('burn', 'capture', 'exchange_out') \
                 ORDER BY c.entry_sequence, c.lot_entry_sequence, c.lot_index",
            )
            .bind(first as i64)
            .bind(last as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("entry_sequence")?,
                    row.try_get::<String, _>("issuer")?,
                    row.try_get::<i64, _>("points")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows
            .into_iter()
            .map(|(entry_sequence, issuer, points)| Attribution {
                entry_sequence: entry_sequence as u64,
                issuer,
                points,
            })
            .collect())
    }

    /// Every account's balance per asset after the entries before `sequence`.
    pub async fn balances_before(
        &self,
        sequence: u64,
    ) -> Result<Vec<(AccountKey, Asset, i64)>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT a.kind, a.owner, p.asset, CAST(SUM(p.amount) AS BIGINT) AS balance FROM postings p \
                 JOIN accounts a ON a.account_id = p.account_id \
                 WHERE p.entry_sequence < $1 GROUP BY a.kind, a.owner, p.asset",
            )
            .bind(sequence as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("kind")?,
                    row.try_get::<String, _>("owner")?,
                    row.try_get::<String, _>("asset")?,
                    row.try_get::<i64, _>("balance")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(kind, owner, asset, balance)| {
                let account = AccountKey::from_parts(&kind, &owner)
                    .ok_or_else(|| corrupt(format!("account {kind}:{owner}")))?;
                let asset =
                    Asset::from_code(&asset).ok_or_else(|| corrupt(format!("asset {asset}")))?;
                Ok((account, asset, balance))
            })
            .collect()
    }

    /// What is payable to each merchant (negative: what it owes) in `asset` after the entries
    /// up to and including `sequence`; merchants at zero are left out.
    pub async fn merchant_payables_through(
        &self,
        sequence: u64,
        asset: Asset,
    ) -> Result<std::collections::BTreeMap<String, i64>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT a.owner, CAST(SUM(p.amount) AS BIGINT) AS balance FROM postings p \
                 JOIN accounts a ON a.account_id = p.account_id \
                 WHERE a.kind = $1 AND p.asset = $2 AND p.entry_sequence <= $3 GROUP BY a.owner",
            )
            // The stored kind of `AccountKey::MerchantPayable`.
            .bind("merchant_payable")
            .bind(asset.code())
            .bind(sequence as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<String, _>("owner")?, row.try_get::<i64, _>("balance")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows
            .into_iter()
            .filter(|(_, balance)| *balance != 0)
            .collect())
    }

    /// Each merchant's breakage share in the terms in force at `at_ms` (merchants without
    /// terms then are absent: they have no share).
    pub async fn breakage_shares_at(
        &self,
        at_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, rust_decimal::Decimal>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT t.merchant_id, t.breakage_share FROM merchant_terms t \
                 WHERE t.version = (SELECT MAX(v.version) FROM merchant_terms v \
                 WHERE v.merchant_id = t.merchant_id AND v.effective_from_ms <= $1)",
            )
            .bind(at_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("merchant_id")?,
                    row.try_get::<String, _>("breakage_share")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(merchant, share)| {
                let share = rust_decimal::Decimal::from_str_exact(&share)
                    .map_err(|_| corrupt(format!("breakage share {share:?} of {merchant}")))?;
                Ok((merchant, share))
            })
            .collect()
    }

    /// The labels of every finalised period.
    pub async fn finalised_labels(&self) -> Result<Vec<String>, StorageError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>("SELECT period FROM settlement_periods")
                .fetch_all(pool)
                .await?
        }))
    }

    /// The finalised period named `label`, if it is.
    pub async fn finalised_period(
        &self,
        label: &str,
    ) -> Result<Option<FinalisedPeriod>, StorageError> {
        let row = with_pool!(self, pool => {
            sqlx::query(
                "SELECT closing_sequence, finalised_at_ms, settlement FROM settlement_periods \
                 WHERE period = $1",
            )
            .bind(label)
            .fetch_optional(pool)
            .await?
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<Option<i64>, _>("closing_sequence")?,
                    row.try_get::<i64, _>("finalised_at_ms")?,
                    row.try_get::<String, _>("settlement")?,
                ))
            })
            .transpose()?
        });
        row.map(|(closing_sequence, finalised_at_ms, settlement)| {
            let settlement: Settlement = serde_json::from_str(&settlement)
                .map_err(|error| corrupt(format!("a stored settlement: {error}")))?;
            Ok(FinalisedPeriod {
                settlement,
                closing_sequence: closing_sequence.map(|sequence| sequence as u64),
                finalised_at_ms,
            })
        })
        .transpose()
    }
}
