//! The group-commit write: everything one writer batch changed, in one database transaction,
//! with one statement per table (per chunk of rows on SQLite, whose statements take at most
//! 32766 parameters).
//!
//! Longer than 800 lines: most of it is the column-by-column description of each journal
//! table (one block per table), which is as long as the tables are wide.

use coalition_domain::account::{AccountId, Asset};
use coalition_domain::ledger::Changes;
use coalition_domain::{
    KeyId, LotConsumption, Merchant, MerchantId, MerchantKey, MerchantStatus, StateRows,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};
use std::time::Instant;

use crate::{Storage, StorageError, with_pool};

/// The most bind parameters one SQLite statement gets; SQLite's limit is 32766.
const SQLITE_PARAMETERS_PER_STATEMENT_MAX: usize = 32_000;

/// One column of rows to insert, typed so PostgreSQL can receive it as one array.
pub(crate) enum Column {
    BigInt(Vec<i64>),
    NullableBigInt(Vec<Option<i64>>),
    Text(Vec<String>),
    NullableText(Vec<Option<String>>),
    Bytes(Vec<Vec<u8>>),
    NullableBytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::BigInt(values) => values.len(),
            Column::NullableBigInt(values) => values.len(),
            Column::Text(values) => values.len(),
            Column::NullableText(values) => values.len(),
            Column::Bytes(values) => values.len(),
            Column::NullableBytes(values) => values.len(),
        }
    }

    fn postgres_array_type(&self) -> &'static str {
        match self {
            Column::BigInt(_) | Column::NullableBigInt(_) => "bigint[]",
            Column::Text(_) | Column::NullableText(_) => "text[]",
            Column::Bytes(_) | Column::NullableBytes(_) => "bytea[]",
        }
    }
}

/// Rows for one table, stored column by column.
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: Vec<(&'static str, Column)>,
    /// Appended after the rows, for upserts.
    pub on_conflict: &'static str,
}

impl Table {
    fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, column)| column.len())
    }

    fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) async fn insert_postgres(
        self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StorageError> {
        if self.rows() == 0 {
            return Ok(());
        }
        let arrays: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, (_, column))| format!("${}::{}", index + 1, column.postgres_array_type()))
            .collect();
        // The statement is built only from the static table and column names above.
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) {}",
            self.name,
            self.column_names(),
            arrays.join(", "),
            self.on_conflict
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (_, column) in self.columns {
            query = match column {
                Column::BigInt(values) => query.bind(values),
                Column::NullableBigInt(values) => query.bind(values),
                Column::Text(values) => query.bind(values),
                Column::NullableText(values) => query.bind(values),
                Column::Bytes(values) => query.bind(values),
                Column::NullableBytes(values) => query.bind(values),
            };
        }
        query.execute(&mut **transaction).await?;
        Ok(())
    }

    pub(crate) async fn insert_sqlite(
        &self,
        transaction: &mut sqlx::Transaction<'_, Sqlite>,
    ) -> Result<(), StorageError> {
        let rows = self.rows();
        let rows_per_statement = (SQLITE_PARAMETERS_PER_STATEMENT_MAX / self.columns.len()).max(1);
        let mut start = 0;
        while start < rows {
            let end = (start + rows_per_statement).min(rows);
            let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "INSERT INTO {} ({}) ",
                self.name,
                self.column_names()
            ));
            builder.push_values(start..end, |mut row, index| {
                for (_, column) in &self.columns {
                    match column {
                        Column::BigInt(values) => row.push_bind(values[index]),
                        Column::NullableBigInt(values) => row.push_bind(values[index]),
                        Column::Text(values) => row.push_bind(values[index].clone()),
                        Column::NullableText(values) => row.push_bind(values[index].clone()),
                        Column::Bytes(values) => row.push_bind(values[index].clone()),
                        Column::NullableBytes(values) => row.push_bind(values[index].clone()),
                    };
                }
            });
            builder.push(" ");
            builder.push(self.on_conflict);
            // Not kept in the connection's statement cache: the text changes with the row
            // count, and a prepared statement of thousands of rows holds megabytes.
            builder
                .build()
                .persistent(false)
                .execute(&mut **transaction)
                .await?;
            start = end;
        }
        Ok(())
    }
}

/// Inserts a batch's tables in order, timing each.
async fn insert_tables_postgres(
    tables: Vec<Table>,
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), StorageError> {
    for table in tables {
        let started = Instant::now();
        let name = table.name;
        table.insert_postgres(transaction).await?;
        metrics::histogram!("coalition_write_table_seconds", "table" => name)
            .record(started.elapsed().as_secs_f64());
    }
    Ok(())
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("sequences and ids stay below 2^63")
}

/// Turns a batch's changes into tables, in foreign-key order.
/// Points taken out of lots (`lot_consumptions`) or that repaid a member's debt
/// (`debt_repayments`): the same columns.
fn consumption_table(name: &'static str, consumptions: &[&LotConsumption]) -> Table {
    Table {
        name,
        columns: vec![
            (
                "entry_sequence",
                Column::BigInt(
                    consumptions
                        .iter()
                        .map(|c| to_i64(c.entry_sequence))
                        .collect(),
                ),
            ),
            (
                "lot_entry_sequence",
                Column::BigInt(
                    consumptions
                        .iter()
                        .map(|c| to_i64(c.lot_id.entry_sequence))
                        .collect(),
                ),
            ),
            (
                "lot_index",
                Column::BigInt(
                    consumptions
                        .iter()
                        .map(|c| i64::from(c.lot_id.index))
                        .collect(),
                ),
            ),
            (
                "points",
                Column::BigInt(consumptions.iter().map(|c| c.points).collect()),
            ),
        ],
        on_conflict: "",
    }
}

fn tables(changes: &Changes, balances: &[(AccountId, Asset, i64)]) -> Vec<Table> {
    let accounts = Table {
        name: "accounts",
        columns: vec![
            (
                "account_id",
                Column::BigInt(
                    changes
                        .accounts
                        .iter()
                        .map(|(id, _)| to_i64(id.0))
                        .collect(),
                ),
            ),
            (
                "kind",
                Column::Text(
                    changes
                        .accounts
                        .iter()
                        .map(|(_, key)| key.kind().to_owned())
                        .collect(),
                ),
            ),
            (
                "owner",
                Column::Text(
                    changes
                        .accounts
                        .iter()
                        .map(|(_, key)| key.owner().to_owned())
                        .collect(),
                ),
            ),
        ],
        on_conflict: "",
    };
    let members = Table {
        name: "members",
        columns: vec![
            (
                "member_id",
                Column::Text(
                    changes
                        .members
                        .iter()
                        .map(|m| m.member_id.to_string())
                        .collect(),
                ),
            ),
            (
                "tier",
                Column::NullableText(changes.members.iter().map(|m| m.tier.clone()).collect()),
            ),
            (
                "enrolled_at_ms",
                Column::BigInt(changes.members.iter().map(|m| m.enrolled_at_ms).collect()),
            ),
        ],
        on_conflict: "",
    };
    let aliases = Table {
        name: "member_aliases",
        columns: vec![
            (
                "alias",
                Column::Text(
                    changes
                        .aliases
                        .iter()
                        .map(|a| a.alias.to_string())
                        .collect(),
                ),
            ),
            (
                "target",
                Column::Text(
                    changes
                        .aliases
                        .iter()
                        .map(|a| a.target.to_string())
                        .collect(),
                ),
            ),
            (
                "created_at_ms",
                Column::BigInt(changes.aliases.iter().map(|a| a.created_at_ms).collect()),
            ),
        ],
        on_conflict: "",
    };
    let entries = &changes.entries;
    let origin_text = |pick: fn(&coalition_domain::MerchantOrigin) -> String| {
        Column::NullableText(
            entries
                .iter()
                .map(|e| e.origin.as_ref().map(pick))
                .collect(),
        )
    };
    let entry_table = Table {
        name: "entries",
        columns: vec![
            (
                "sequence",
                Column::BigInt(entries.iter().map(|e| to_i64(e.sequence)).collect()),
            ),
            (
                "kind",
                Column::Text(entries.iter().map(|e| e.kind.code().to_owned()).collect()),
            ),
            (
                "accepted_at_ms",
                Column::BigInt(entries.iter().map(|e| e.accepted_at_ms).collect()),
            ),
            ("merchant_id", origin_text(|o| o.merchant_id.to_string())),
            (
                "merchant_transaction_id",
                origin_text(|o| o.merchant_transaction_id.to_string()),
            ),
            ("store_id", origin_text(|o| o.store_id.clone())),
            ("terminal_id", origin_text(|o| o.terminal_id.clone())),
            (
                "occurred_at_ms",
                Column::NullableBigInt(
                    entries
                        .iter()
                        .map(|e| e.origin.as_ref().map(|o| o.occurred_at_ms))
                        .collect(),
                ),
            ),
            (
                "body_hash",
                Column::NullableBytes(
                    entries
                        .iter()
                        .map(|e| e.origin.as_ref().map(|o| o.body_hash.to_vec()))
                        .collect(),
                ),
            ),
            (
                "member_id",
                // Empty for an entry without a member (no member id is empty).
                Column::Text(
                    entries
                        .iter()
                        .map(|e| {
                            e.member_id
                                .as_ref()
                                .map_or_else(String::new, |m| m.to_string())
                        })
                        .collect(),
                ),
            ),
            (
                "points",
                Column::BigInt(entries.iter().map(|e| e.points).collect()),
            ),
            (
                "spend_minor",
                Column::NullableBigInt(entries.iter().map(|e| e.spend_minor).collect()),
            ),
            (
                "member_points_after",
                Column::BigInt(entries.iter().map(|e| e.member_points_after).collect()),
            ),
            (
                "memo",
                Column::Text(entries.iter().map(|e| e.memo.clone()).collect()),
            ),
            (
                "terms_version",
                Column::NullableBigInt(
                    entries
                        .iter()
                        .map(|e| e.terms_version.map(i64::from))
                        .collect(),
                ),
            ),
            (
                "refers_to",
                Column::NullableBigInt(entries.iter().map(|e| e.refers_to.map(to_i64)).collect()),
            ),
            (
                "expires_at_ms",
                Column::NullableBigInt(entries.iter().map(|e| e.expires_at_ms).collect()),
            ),
            (
                "earn_rule_version",
                Column::NullableBigInt(
                    entries
                        .iter()
                        .map(|e| e.earn_rule_version.map(i64::from))
                        .collect(),
                ),
            ),
            (
                "previous_hash",
                Column::Bytes(entries.iter().map(|e| e.previous_hash.to_vec()).collect()),
            ),
            (
                "hash",
                Column::Bytes(entries.iter().map(|e| e.hash.to_vec()).collect()),
            ),
        ],
        on_conflict: "",
    };
    let mut posting_sequence = Vec::new();
    let mut posting_index = Vec::new();
    let mut posting_asset = Vec::new();
    let mut posting_amount = Vec::new();
    for entry in entries {
        for (index, posting) in entry.postings.iter().enumerate() {
            posting_sequence.push(to_i64(entry.sequence));
            posting_index.push(index as i64);
            posting_asset.push(posting.asset.code().to_owned());
            posting_amount.push(posting.amount);
        }
    }
    assert_eq!(
        posting_sequence.len(),
        changes.posting_account_ids.len(),
        "every posting has its account id"
    );
    let postings = Table {
        name: "postings",
        columns: vec![
            ("entry_sequence", Column::BigInt(posting_sequence)),
            ("posting_index", Column::BigInt(posting_index)),
            (
                "account_id",
                Column::BigInt(
                    changes
                        .posting_account_ids
                        .iter()
                        .map(|id| to_i64(id.0))
                        .collect(),
                ),
            ),
            ("asset", Column::Text(posting_asset)),
            ("amount", Column::BigInt(posting_amount)),
        ],
        on_conflict: "",
    };
    let lots = Table {
        name: "lots",
        columns: vec![
            (
                "entry_sequence",
                Column::BigInt(
                    changes
                        .lots
                        .iter()
                        .map(|l| to_i64(l.lot_id.entry_sequence))
                        .collect(),
                ),
            ),
            (
                "lot_index",
                Column::BigInt(
                    changes
                        .lots
                        .iter()
                        .map(|l| i64::from(l.lot_id.index))
                        .collect(),
                ),
            ),
            (
                "member_id",
                Column::Text(
                    changes
                        .lots
                        .iter()
                        .map(|l| l.member_id.to_string())
                        .collect(),
                ),
            ),
            (
                "issuer",
                Column::Text(changes.lots.iter().map(|l| l.issuer.to_string()).collect()),
            ),
            (
                "points",
                Column::BigInt(changes.lots.iter().map(|l| l.points).collect()),
            ),
            (
                "earned_at_ms",
                Column::BigInt(changes.lots.iter().map(|l| l.earned_at_ms).collect()),
            ),
            (
                "expires_at_ms",
                Column::NullableBigInt(changes.lots.iter().map(|l| l.expires_at_ms).collect()),
            ),
        ],
        on_conflict: "",
    };
    let (repaid, taken): (Vec<&LotConsumption>, Vec<&LotConsumption>) = changes
        .lot_consumptions
        .iter()
        .partition(|consumption| consumption.repaid);
    let lot_consumptions = consumption_table("lot_consumptions", &taken);
    let debt_repayments = consumption_table("debt_repayments", &repaid);
    let balance_table = Table {
        name: "account_balances",
        columns: vec![
            (
                "account_id",
                Column::BigInt(balances.iter().map(|(id, _, _)| to_i64(id.0)).collect()),
            ),
            (
                "asset",
                Column::Text(
                    balances
                        .iter()
                        .map(|(_, asset, _)| asset.code().to_owned())
                        .collect(),
                ),
            ),
            (
                "balance",
                Column::BigInt(balances.iter().map(|(_, _, balance)| *balance).collect()),
            ),
        ],
        on_conflict: "ON CONFLICT (account_id, asset) DO UPDATE SET balance = excluded.balance",
    };
    let terms = &changes.terms;
    let terms_table = Table {
        name: "merchant_terms",
        columns: vec![
            (
                "merchant_id",
                Column::Text(terms.iter().map(|t| t.merchant_id.to_string()).collect()),
            ),
            (
                "version",
                Column::BigInt(terms.iter().map(|t| i64::from(t.version)).collect()),
            ),
            (
                "effective_from_ms",
                Column::BigInt(terms.iter().map(|t| t.effective_from_ms).collect()),
            ),
            (
                "issue_price_minor_per_point",
                Column::Text(
                    terms
                        .iter()
                        .map(|t| t.issue_price_minor_per_point.to_string())
                        .collect(),
                ),
            ),
            (
                "redeem_price_minor_per_point",
                Column::Text(
                    terms
                        .iter()
                        .map(|t| t.redeem_price_minor_per_point.to_string())
                        .collect(),
                ),
            ),
            (
                "fee_minor_per_point",
                Column::Text(
                    terms
                        .iter()
                        .map(|t| t.fee_minor_per_point.to_string())
                        .collect(),
                ),
            ),
            (
                "credit_limit_minor",
                Column::NullableBigInt(terms.iter().map(|t| t.credit_limit_minor).collect()),
            ),
            (
                "legacy_unit",
                Column::NullableText(
                    terms
                        .iter()
                        .map(|t| t.exchange.map(|(unit, _)| unit.as_str().to_owned()))
                        .collect(),
                ),
            ),
            (
                "points_per_legacy_unit",
                Column::NullableText(
                    terms
                        .iter()
                        .map(|t| t.exchange.map(|(_, rate)| rate.to_string()))
                        .collect(),
                ),
            ),
            (
                "earn_points_per_minor",
                Column::NullableText(
                    terms
                        .iter()
                        .map(|t| t.earn_points_per_minor.map(|rate| rate.to_string()))
                        .collect(),
                ),
            ),
            (
                "cross_merchant_reversals",
                Column::BigInt(
                    terms
                        .iter()
                        .map(|t| i64::from(t.cross_merchant_reversals))
                        .collect(),
                ),
            ),
            (
                "breakage_share",
                Column::Text(terms.iter().map(|t| t.breakage_share.to_string()).collect()),
            ),
        ],
        on_conflict: "",
    };
    let periods = &changes.settlements;
    let settlement_periods = Table {
        name: "settlement_periods",
        columns: vec![
            (
                "period",
                Column::Text(
                    periods
                        .iter()
                        .map(|p| p.settlement.period.clone())
                        .collect(),
                ),
            ),
            (
                "start_ms",
                Column::BigInt(periods.iter().map(|p| p.settlement.start_ms).collect()),
            ),
            (
                "end_ms",
                Column::BigInt(periods.iter().map(|p| p.settlement.end_ms).collect()),
            ),
            (
                "first_sequence",
                Column::BigInt(
                    periods
                        .iter()
                        .map(|p| to_i64(p.settlement.first_sequence))
                        .collect(),
                ),
            ),
            (
                "last_sequence",
                Column::BigInt(
                    periods
                        .iter()
                        .map(|p| to_i64(p.settlement.last_sequence))
                        .collect(),
                ),
            ),
            (
                "closing_sequence",
                Column::NullableBigInt(
                    periods
                        .iter()
                        .map(|p| p.closing_sequence.map(to_i64))
                        .collect(),
                ),
            ),
            (
                "finalised_at_ms",
                Column::BigInt(periods.iter().map(|p| p.finalised_at_ms).collect()),
            ),
            (
                "settlement",
                Column::Text(
                    periods
                        .iter()
                        .map(|p| {
                            serde_json::to_string(&p.settlement)
                                .expect("a settlement always serialises")
                        })
                        .collect(),
                ),
            ),
        ],
        on_conflict: "",
    };
    let rules = &changes.earn_rules;
    let earn_rules = Table {
        name: "earn_rules",
        columns: vec![
            (
                "version",
                Column::BigInt(rules.iter().map(|r| i64::from(r.version)).collect()),
            ),
            (
                "effective_from_ms",
                Column::BigInt(rules.iter().map(|r| r.effective_from_ms).collect()),
            ),
        ],
        on_conflict: "",
    };
    // One row per tier multiplier and per campaign, in order.
    type MultiplierRow = (
        i64,
        i64,
        &'static str,
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
    );
    let mut multiplier_rows: Vec<MultiplierRow> = Vec::new();
    for rules in rules {
        let version = i64::from(rules.version);
        for (tier, multiplier) in &rules.tier_multipliers {
            let position = multiplier_rows
                .iter()
                .filter(|row| row.0 == version)
                .count() as i64;
            multiplier_rows.push((
                version,
                position,
                "tier",
                tier.clone(),
                None,
                None,
                None,
                multiplier.to_string(),
            ));
        }
        for campaign in &rules.campaigns {
            let position = multiplier_rows
                .iter()
                .filter(|row| row.0 == version)
                .count() as i64;
            multiplier_rows.push((
                version,
                position,
                "campaign",
                campaign.name.clone(),
                campaign.merchant_id.as_ref().map(ToString::to_string),
                Some(campaign.starts_at_ms),
                Some(campaign.ends_at_ms),
                campaign.multiplier.to_string(),
            ));
        }
    }
    let earn_rule_multipliers = Table {
        name: "earn_rule_multipliers",
        columns: vec![
            (
                "version",
                Column::BigInt(multiplier_rows.iter().map(|r| r.0).collect()),
            ),
            (
                "position",
                Column::BigInt(multiplier_rows.iter().map(|r| r.1).collect()),
            ),
            (
                "kind",
                Column::Text(multiplier_rows.iter().map(|r| r.2.to_owned()).collect()),
            ),
            (
                "name",
                Column::Text(multiplier_rows.iter().map(|r| r.3.clone()).collect()),
            ),
            (
                "merchant_id",
                Column::NullableText(multiplier_rows.iter().map(|r| r.4.clone()).collect()),
            ),
            (
                "starts_at_ms",
                Column::NullableBigInt(multiplier_rows.iter().map(|r| r.5).collect()),
            ),
            (
                "ends_at_ms",
                Column::NullableBigInt(multiplier_rows.iter().map(|r| r.6).collect()),
            ),
            (
                "multiplier",
                Column::Text(multiplier_rows.iter().map(|r| r.7.clone()).collect()),
            ),
        ],
        on_conflict: "",
    };
    let envelopes = Table {
        name: "envelopes",
        columns: vec![
            (
                "entry_sequence",
                Column::BigInt(
                    changes
                        .envelopes
                        .iter()
                        .map(|(sequence, _)| to_i64(*sequence))
                        .collect(),
                ),
            ),
            (
                "key_id",
                Column::Text(
                    changes
                        .envelopes
                        .iter()
                        .map(|(_, envelope)| envelope.key_id.clone())
                        .collect(),
                ),
            ),
            (
                "body",
                Column::Bytes(
                    changes
                        .envelopes
                        .iter()
                        .map(|(_, envelope)| envelope.body.clone())
                        .collect(),
                ),
            ),
            (
                "signature",
                Column::Bytes(
                    changes
                        .envelopes
                        .iter()
                        .map(|(_, envelope)| envelope.signature.to_vec())
                        .collect(),
                ),
            ),
        ],
        on_conflict: "",
    };
    vec![
        terms_table,
        earn_rules,
        earn_rule_multipliers,
        accounts,
        members,
        aliases,
        entry_table,
        envelopes,
        postings,
        lots,
        lot_consumptions,
        debt_repayments,
        balance_table,
        settlement_periods,
    ]
}

/// Builds the insert of one merchant key; a macro so it type-checks against either backend.
macro_rules! insert_key_query {
    ($merchant_id:expr, $key:expr) => {
        sqlx::query(
            "INSERT INTO merchant_keys \
             (merchant_id, key_id, public_key, valid_from_ms, valid_until_ms, revoked_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($merchant_id.to_string())
        .bind($key.key_id.to_string())
        .bind($key.public_key.as_bytes().to_vec())
        .bind($key.valid_from_ms)
        .bind($key.valid_until_ms)
        .bind($key.revoked_at_ms)
    };
}

impl Storage {
    /// Writes one batch in one database transaction. Nothing of the batch is visible, or
    /// survives a crash, unless all of it does.
    pub async fn write_changes(
        &self,
        changes: &Changes,
        balances: &[(AccountId, Asset, i64)],
        state: &StateRows,
    ) -> Result<(), StorageError> {
        self.write_changes_after(changes, balances, state, std::future::ready(true))
            .await
    }

    /// How many batch writes may be under way at once (`write_changes_after`): two on
    /// PostgreSQL, where a batch's journal rows go in on a second connection while the batch
    /// before it finishes; one on SQLite, whose single writer connection serialises them.
    pub fn batch_writes_in_flight_max(&self) -> usize {
        match self {
            Storage::Sqlite(..) => 1,
            Storage::Postgres(_) => 2,
        }
    }

    /// Writes a batch that chains on the batch before it, whose commit may still be under
    /// way: `before` resolves to whether that batch committed. Nothing of this batch commits
    /// before it did, and nothing commits at all if it did not
    /// (`StorageError::PreviousBatchFailed`).
    ///
    /// PostgreSQL: this batch's journal rows (new keys only: entries, postings, lots,
    /// accounts, members) are inserted at once, beside the batch before; the state rows
    /// (upserts and deletes of rows that batch may have written, which must see its
    /// committed rows) and the commit wait for `before`. Until then this transaction holds
    /// only rows no other transaction can ask for, so the batch before never waits for it.
    /// SQLite: everything waits for `before`, since the writer has one connection.
    pub async fn write_changes_after(
        &self,
        changes: &Changes,
        balances: &[(AccountId, Asset, i64)],
        state: &StateRows,
        before: impl std::future::Future<Output = bool>,
    ) -> Result<(), StorageError> {
        for entry in &changes.entries {
            // Asserted where written as well as where made: an unbalanced entry never commits.
            entry
                .check_balanced()
                .map_err(|error| StorageError::Corrupt(error.to_string()))?;
        }
        let tables = tables(changes, balances);
        // The checkpoint this batch crosses, if any: (first, last sequence, head hash, time).
        let checkpoint = match (changes.entries.first(), changes.entries.last()) {
            (Some(first), Some(last)) => Some((
                first.sequence,
                last.sequence,
                last.hash,
                last.accepted_at_ms,
            )),
            _ => None,
        };
        // Where the write's time goes: the journal's tables, the state tables, the commit.
        let stage = |name: &'static str, started: Instant| {
            metrics::histogram!("coalition_write_seconds", "stage" => name)
                .record(started.elapsed().as_secs_f64());
            Instant::now()
        };
        let started = Instant::now();
        match self {
            Storage::Sqlite(_, pool) => {
                if !before.await {
                    return Err(StorageError::PreviousBatchFailed);
                }
                let started = stage("wait", started);
                let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
                // Foreign keys checked once at the commit instead of row by row, where an
                // immediate check makes each multi-row insert keep a statement journal. A
                // violation still fails the commit and nothing of the batch is written. SQLite
                // turns the setting off at every commit or rollback, so each batch sets it.
                sqlx::query("PRAGMA defer_foreign_keys = ON")
                    .execute(&mut *transaction)
                    .await?;
                for table in &tables {
                    let table_started = Instant::now();
                    table.insert_sqlite(&mut transaction).await?;
                    metrics::histogram!("coalition_write_table_seconds", "table" => table.name)
                        .record(table_started.elapsed().as_secs_f64());
                }
                let started = stage("journal", started);
                crate::state::write_state_sqlite(&mut transaction, state, checkpoint).await?;
                let started = stage("state", started);
                transaction.commit().await?;
                stage("commit", started);
            }
            Storage::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                // Rows with new keys first; upserts (account balances) only once the batch
                // before has committed, since it may write the same rows.
                let (new_rows, upserts): (Vec<Table>, Vec<Table>) = tables
                    .into_iter()
                    .partition(|table| table.on_conflict.is_empty());
                insert_tables_postgres(new_rows, &mut transaction).await?;
                let started = stage("journal", started);
                if !before.await {
                    transaction.rollback().await?;
                    return Err(StorageError::PreviousBatchFailed);
                }
                let started = stage("wait", started);
                insert_tables_postgres(upserts, &mut transaction).await?;
                crate::state::write_state_postgres(&mut transaction, state, checkpoint).await?;
                let started = stage("state", started);
                transaction.commit().await?;
                stage("commit", started);
            }
        }
        Ok(())
    }

    /// Registers a merchant with its keys.
    pub async fn insert_merchant(&self, merchant: &Merchant) -> Result<(), StorageError> {
        with_pool!(self, pool => {
            let mut transaction = pool.begin().await?;
            sqlx::query(
                "INSERT INTO merchants (merchant_id, name, category, status, registered_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(merchant.merchant_id.to_string())
            .bind(merchant.name.clone())
            .bind(merchant.category.code())
            .bind(merchant.status.code())
            .bind(merchant.registered_at_ms)
            .execute(&mut *transaction)
            .await?;
            for key in &merchant.keys {
                insert_key_query!(&merchant.merchant_id, key).execute(&mut *transaction).await?;
            }
            transaction.commit().await?;
        });
        Ok(())
    }

    pub async fn insert_merchant_key(
        &self,
        merchant_id: &MerchantId,
        key: &MerchantKey,
    ) -> Result<(), StorageError> {
        with_pool!(self, pool => {
            insert_key_query!(merchant_id, key).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn revoke_merchant_key(
        &self,
        merchant_id: &MerchantId,
        key_id: &KeyId,
        revoked_at_ms: i64,
    ) -> Result<(), StorageError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE merchant_keys SET revoked_at_ms = $1 WHERE merchant_id = $2 AND key_id = $3",
            )
            .bind(revoked_at_ms)
            .bind(merchant_id.to_string())
            .bind(key_id.to_string())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn set_merchant_status(
        &self,
        merchant_id: &MerchantId,
        status: MerchantStatus,
    ) -> Result<(), StorageError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE merchants SET status = $1 WHERE merchant_id = $2")
                .bind(status.code())
                .bind(merchant_id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
