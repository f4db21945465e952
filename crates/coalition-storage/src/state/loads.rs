//! Loads of the writer's working set (members and referred entries a batch needs, in a few
//! set-based queries) and the indexed queries that find the work of hold timeouts and expiry
//! runs.

use super::*;
use crate::with_pool;

/// Two SQL texts for a query on a list of keys bound as `$1`: SQLite gets the keys as one JSON
/// array, PostgreSQL as an array.
macro_rules! keyed_sql {
    ($head:literal, $tail:literal) => {
        (
            concat!($head, " IN (SELECT value FROM json_each($1))", $tail),
            concat!($head, " = ANY($1)", $tail),
        )
    };
}

/// Runs a keyed query and decodes each row with `$decode`.
macro_rules! fetch_keyed {
    ($storage:expr, $sql:expr, $keys:expr, |$row:ident| $decode:expr) => {{
        let (sqlite_sql, postgres_sql) = $sql;
        let keys = $keys;
        match $storage {
            // On SQLite the pool's connections, not the writer's: a load then runs while the
            // batch before commits on the writer's connection (WAL readers see what is
            // committed; what is not is in the writer's memory).
            Storage::Sqlite(pool, _) => {
                let json = serde_json::to_string(&keys).expect("keys serialise");
                sqlx::query(sqlite_sql)
                    .bind(json)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|$row| Ok($decode))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Storage::Postgres(pool) => sqlx::query(postgres_sql)
                .bind(keys)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|$row| Ok($decode))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        }
    }};
}

impl Storage {
    /// Loads what `needs` names: each member id as stored (an alias, an enrolled member with
    /// wallet, debt, tier and accounts, or nothing), and each referred entry's reversible
    /// remainder and open hold. Four queries, whatever the number of ids, run at once: a
    /// member is one row of `member_states` (one primary-key probe), its alias included.
    pub async fn load_working_set(&self, needs: &Needs) -> Result<WorkingSet, StorageError> {
        let mut set = WorkingSet::default();
        let references = async {
            if needs.references.is_empty() {
                Ok(Vec::new())
            } else {
                self.load_references(needs).await
            }
        };
        if needs.members.is_empty() {
            set.references = references.await?;
            return Ok(set);
        }
        let ids: Vec<String> = needs.members.iter().map(ToString::to_string).collect();
        let rows = async {
            Ok::<_, StorageError>(fetch_keyed!(
                self,
                keyed_sql!(
                    "SELECT member_id, enrolled, alias_of, tier, debt, wallet_account_id, wallet_points, \
                     held_account_id, held_points, lots FROM member_states WHERE member_id",
                    ""
                ),
                ids,
                |row| (
                    row.try_get::<String, _>("member_id")?,
                    row.try_get::<i64, _>("enrolled")?,
                    row.try_get::<Option<String>, _>("alias_of")?,
                    row.try_get::<Option<String>, _>("tier")?,
                    row.try_get::<i64, _>("debt")?,
                    [
                        (
                            row.try_get::<Option<i64>, _>("wallet_account_id")?,
                            row.try_get::<Option<i64>, _>("wallet_points")?,
                        ),
                        (
                            row.try_get::<Option<i64>, _>("held_account_id")?,
                            row.try_get::<Option<i64>, _>("held_points")?,
                        ),
                    ],
                    row.try_get::<String, _>("lots")?
                )
            ))
        };
        // The queries are independent: each runs on a connection of its own, at once.
        let (references, rows) = tokio::try_join!(references, rows)?;
        set.references = references;
        let mut states: std::collections::BTreeMap<String, MemberState> = needs
            .members
            .iter()
            .map(|id| (id.to_string(), MemberState::unknown(id.clone())))
            .collect();
        for (member, enrolled, alias_of, tier, debt, accounts, lots) in rows {
            let entry = states
                .get_mut(&member)
                .ok_or_else(|| corrupt(format!("member {member} loaded but not asked for")))?;
            entry.alias_of = alias_of.map(member_id).transpose()?;
            // A member merged away is not enrolled and has no tier of its own.
            entry.enrolled = enrolled != 0 && entry.alias_of.is_none();
            entry.tier = tier.filter(|_| entry.enrolled);
            entry.debt = debt;
            entry.lots = decode_lots(&member, &lots)?;
            for ((id, points), held) in accounts.into_iter().zip([false, true]) {
                let (Some(id), Some(points)) = (id, points) else {
                    continue;
                };
                let id = AccountId(u64::try_from(id).map_err(|_| corrupt("negative account id"))?);
                let key = if held {
                    AccountKey::MemberHeld(entry.member_id.clone())
                } else {
                    AccountKey::MemberWallet(entry.member_id.clone())
                };
                entry
                    .accounts
                    .push((id, key, vec![(Asset::Points, points)]));
            }
        }
        for state in states.values() {
            if state.alias_of.is_some() && !state.lots.is_empty() {
                return Err(corrupt(format!(
                    "member {} was merged away but its wallet still has lots",
                    state.member_id
                )));
            }
        }
        set.members = states.into_values().collect();
        Ok(set)
    }

    async fn load_references(&self, needs: &Needs) -> Result<Vec<ReferenceState>, StorageError> {
        let keys: Vec<i64> = needs.references.iter().map(|s| to_i64(*s)).collect();
        let reversibles = fetch_keyed!(
            self,
            // What remains reversible of an earn, burn or capture, from the journal (the rule
            // of `Reversible::of_entry`): the entry, its hold's merchant for a capture, and
            // the points of the reversals that refer to it (by `entries_by_refers_to`).
            keyed_sql!(
                "SELECT e.sequence, e.kind, \
                 CASE WHEN e.kind = 'capture' THEN \
                     (SELECT h.merchant_id FROM entries h WHERE h.sequence = e.refers_to) \
                     ELSE e.merchant_id END AS merchant_id, \
                 e.member_id, e.points, e.terms_version, \
                 COALESCE((SELECT CAST(SUM(r.points) AS BIGINT) FROM entries r \
                     WHERE r.refers_to = e.sequence \
                       AND r.kind IN ('earn_reversal', 'burn_reversal')), 0) AS reversed \
                 FROM entries e WHERE e.kind IN ('earn', 'burn', 'capture') AND e.sequence",
                ""
            ),
            keys.clone(),
            |row| (
                row.try_get::<i64, _>("sequence")?,
                row.try_get::<String, _>("kind")?,
                row.try_get::<String, _>("merchant_id")?,
                row.try_get::<String, _>("member_id")?,
                row.try_get::<i64, _>("points")?,
                row.try_get::<i64, _>("reversed")?,
                row.try_get::<i64, _>("terms_version")?
            )
        );
        let holds = fetch_keyed!(
            self,
            keyed_sql!(
                "SELECT sequence, merchant_id, member_id, points, terms_version, expires_at_ms \
                 FROM open_holds WHERE sequence",
                ""
            ),
            keys.clone(),
            |row| (
                row.try_get::<i64, _>("sequence")?,
                row.try_get::<String, _>("merchant_id")?,
                row.try_get::<String, _>("member_id")?,
                row.try_get::<i64, _>("points")?,
                row.try_get::<i64, _>("terms_version")?,
                row.try_get::<i64, _>("expires_at_ms")?
            )
        );
        let pieces = fetch_keyed!(
            self,
            keyed_sql!(
                "SELECT owner_sequence, lot_entry_sequence, lot_index, issuer, earned_at_ms, \
                 expires_at_ms, issue_terms_version, points FROM state_pieces WHERE owner_sequence",
                " ORDER BY owner_sequence, position"
            ),
            keys,
            |row| (
                row.try_get::<i64, _>("owner_sequence")?,
                (
                    row.try_get::<i64, _>("lot_entry_sequence")?,
                    row.try_get::<i64, _>("lot_index")?,
                    row.try_get::<String, _>("issuer")?,
                    row.try_get::<i64, _>("earned_at_ms")?,
                    row.try_get::<Option<i64>, _>("expires_at_ms")?,
                    row.try_get::<Option<i64>, _>("issue_terms_version")?,
                    row.try_get::<i64, _>("points")?,
                )
            )
        );
        let mut taken: std::collections::HashMap<u64, Vec<Lot>> = Default::default();
        for (owner, lot) in pieces {
            taken
                .entry(sequence(owner)?)
                .or_default()
                .push(lot_from_row(lot)?);
        }
        let mut states: std::collections::BTreeMap<u64, ReferenceState> = needs
            .references
            .iter()
            .map(|&sequence| {
                (
                    sequence,
                    ReferenceState {
                        sequence,
                        reversible: None,
                        hold: None,
                    },
                )
            })
            .collect();
        for (seq, kind, merchant, member, points, reversed, terms_version) in reversibles {
            let seq = sequence(seq)?;
            let kind = EntryKind::from_code(&kind)
                .ok_or_else(|| corrupt(format!("reversible {seq}: unknown kind {kind:?}")))?;
            let state = states
                .get_mut(&seq)
                .ok_or_else(|| corrupt(format!("reversible {seq} loaded but not asked for")))?;
            state.reversible = Some(Reversible {
                kind,
                merchant_id: merchant_id(merchant)?,
                member_id: member_id(member)?,
                points,
                reversed,
                terms_version: version(terms_version)?,
                taken: taken.remove(&seq).unwrap_or_default(),
            });
        }
        for (seq, merchant, member, points, terms_version, expires_at_ms) in holds {
            let seq = sequence(seq)?;
            let state = states
                .get_mut(&seq)
                .ok_or_else(|| corrupt(format!("hold {seq} loaded but not asked for")))?;
            state.hold = Some(OpenHold {
                merchant_id: merchant_id(merchant)?,
                member_id: member_id(member)?,
                points,
                terms_version: version(terms_version)?,
                expires_at_ms,
                taken: taken.remove(&seq).unwrap_or_default(),
            });
        }
        Ok(states.into_values().collect())
    }

    /// Open holds whose deadline has passed at `at_ms`, by entry sequence.
    pub async fn holds_due(&self, at_ms: i64) -> Result<Vec<u64>, StorageError> {
        let rows: Vec<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT sequence FROM open_holds WHERE expires_at_ms <= $1 ORDER BY sequence")
                .bind(at_ms)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>("sequence"))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter().map(sequence).collect()
    }

    /// Up to `limit` members with a lot that has expired at `at_ms`, the longest expired
    /// first, and whether the limit was reached (more may be due). An expiry run takes its
    /// members in parts of `limit`; a member whose expired lots are gone has a later
    /// `next_expiry_ms` (or none), so each part finds the next members. Read in the expiry
    /// index's order with a limit, which every planner serves from that index.
    pub async fn members_with_lots_due(
        &self,
        at_ms: i64,
        limit: usize,
    ) -> Result<(Vec<MemberId>, bool), StorageError> {
        let full_at = limit;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<String> = with_pool!(self, pool => {
            sqlx::query(
                "SELECT member_id FROM member_states \
                 WHERE next_expiry_ms IS NOT NULL AND next_expiry_ms <= $1 \
                 ORDER BY next_expiry_ms LIMIT $2",
            )
            .bind(at_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("member_id"))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let full = rows.len() >= full_at;
        let mut seen = std::collections::HashSet::new();
        let members = rows
            .into_iter()
            .filter(|member| seen.insert(member.clone()))
            .map(member_id)
            .collect::<Result<_, _>>()?;
        Ok((members, full))
    }
}
