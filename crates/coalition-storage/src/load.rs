//! Reading the journal back: the recovery load that rebuilds the ledger by replaying every
//! committed entry, and the check that compares stored derived state with the replay.

use std::collections::HashMap;

use coalition_domain::account::{AccountId, AccountKey, Asset};
use coalition_domain::chain::ChainHead;
use coalition_domain::journal::{Entry, EntryKind, MerchantOrigin, Posting};
use coalition_domain::registry::{MerchantCategory, MerchantStatus};
use coalition_domain::{
    Campaign, EarnRules, KeyId, Ledger, MemberId, Merchant, MerchantId, MerchantKey, MerchantTerms,
    MerchantTransactionId, Registry, UnitCode, signing,
};
use sqlx::Row;

use crate::{Storage, StorageError, with_pool};

/// How many entries recovery reads per query, bounding its memory.
const ENTRIES_PER_READ_MAX: i64 = 20_000;

/// The columns of `entries` in the order `EntryRow` reads them.
macro_rules! entry_columns {
    () => {
        "sequence, kind, accepted_at_ms, merchant_id, merchant_transaction_id, store_id, \
         terminal_id, occurred_at_ms, body_hash, member_id, points, spend_minor, \
         member_points_after, memo, previous_hash, hash, terms_version, refers_to, \
         expires_at_ms, earn_rule_version"
    };
}
pub(crate) use entry_columns;

/// The columns of a posting joined with its account.
macro_rules! posting_columns {
    () => {
        "p.entry_sequence, a.kind AS account_kind, a.owner AS account_owner, p.asset, p.amount"
    };
}
pub(crate) use posting_columns;

/// On PostgreSQL, the `a` of `posting_columns!` for postings `p`: each posting's account found
/// by its key. A plain join is what SQLite does anyway, but PostgreSQL without fresh
/// statistics (this machine runs it with autovacuum off) planned it by hashing every account,
/// 2.4 million at 2 million members, for the postings of a few entries or of none;
/// `OFFSET 0` keeps the subquery a subquery, which only the key can serve.
macro_rules! account_by_key {
    () => {
        " CROSS JOIN LATERAL (SELECT kind, owner FROM accounts WHERE account_id = p.account_id OFFSET 0) a "
    };
}
pub(crate) use account_by_key;

/// One `entries` row, before it is checked into a domain entry.
pub(crate) struct EntryRow {
    pub sequence: i64,
    pub kind: String,
    pub accepted_at_ms: i64,
    pub merchant_id: Option<String>,
    pub merchant_transaction_id: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    pub occurred_at_ms: Option<i64>,
    pub body_hash: Option<Vec<u8>>,
    pub member_id: String,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub member_points_after: i64,
    pub memo: String,
    pub previous_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub terms_version: Option<i64>,
    pub refers_to: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub earn_rule_version: Option<i64>,
}

/// Reads an `EntryRow` from a row of either backend.
macro_rules! entry_row {
    ($row:expr) => {{
        let row = &$row;
        crate::load::EntryRow {
            sequence: row.try_get("sequence")?,
            kind: row.try_get("kind")?,
            accepted_at_ms: row.try_get("accepted_at_ms")?,
            merchant_id: row.try_get("merchant_id")?,
            merchant_transaction_id: row.try_get("merchant_transaction_id")?,
            store_id: row.try_get("store_id")?,
            terminal_id: row.try_get("terminal_id")?,
            occurred_at_ms: row.try_get("occurred_at_ms")?,
            body_hash: row.try_get("body_hash")?,
            member_id: row.try_get("member_id")?,
            points: row.try_get("points")?,
            spend_minor: row.try_get("spend_minor")?,
            member_points_after: row.try_get("member_points_after")?,
            memo: row.try_get("memo")?,
            previous_hash: row.try_get("previous_hash")?,
            hash: row.try_get("hash")?,
            terms_version: row.try_get("terms_version")?,
            refers_to: row.try_get("refers_to")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            earn_rule_version: row.try_get("earn_rule_version")?,
        }
    }};
}
pub(crate) use entry_row;

/// One posting row joined with its account.
pub(crate) struct PostingRow {
    pub entry_sequence: i64,
    pub account_kind: String,
    pub account_owner: String,
    pub asset: String,
    pub amount: i64,
}

macro_rules! posting_row {
    ($row:expr) => {{
        let row = &$row;
        crate::load::PostingRow {
            entry_sequence: row.try_get("entry_sequence")?,
            account_kind: row.try_get("account_kind")?,
            account_owner: row.try_get("account_owner")?,
            asset: row.try_get("asset")?,
            amount: row.try_get("amount")?,
        }
    }};
}
pub(crate) use posting_row;

fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

fn hash32(bytes: Vec<u8>, what: &str, sequence: i64) -> Result<[u8; 32], StorageError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("entry {sequence}: {what} is not 32 bytes")))
}

impl PostingRow {
    fn into_posting(self) -> Result<Posting, StorageError> {
        let account =
            AccountKey::from_parts(&self.account_kind, &self.account_owner).ok_or_else(|| {
                corrupt(format!(
                    "unknown account {}:{}",
                    self.account_kind, self.account_owner
                ))
            })?;
        let asset = Asset::from_code(&self.asset)
            .ok_or_else(|| corrupt(format!("unknown asset {:?}", self.asset)))?;
        Ok(Posting {
            account,
            asset,
            amount: self.amount,
        })
    }
}

impl EntryRow {
    /// Checks a stored row into a domain entry, and asserts that it balances.
    pub(crate) fn into_entry(self, postings: Vec<Posting>) -> Result<Entry, StorageError> {
        let sequence = self.sequence;
        let kind = EntryKind::from_code(&self.kind)
            .ok_or_else(|| corrupt(format!("entry {sequence}: unknown kind {:?}", self.kind)))?;
        let origin = match (self.merchant_id, self.merchant_transaction_id) {
            (Some(merchant_id), Some(transaction_id)) => Some(MerchantOrigin {
                merchant_id: MerchantId::new(merchant_id)
                    .map_err(|error| corrupt(format!("entry {sequence}: merchant id {error}")))?,
                merchant_transaction_id: MerchantTransactionId::new(transaction_id).map_err(
                    |error| corrupt(format!("entry {sequence}: transaction id {error}")),
                )?,
                store_id: self.store_id.unwrap_or_default(),
                terminal_id: self.terminal_id.unwrap_or_default(),
                occurred_at_ms: self.occurred_at_ms.unwrap_or_default(),
                body_hash: hash32(self.body_hash.unwrap_or_default(), "body hash", sequence)?,
            }),
            _ => None,
        };
        let entry = Entry {
            sequence: u64::try_from(sequence).map_err(|_| corrupt("negative sequence"))?,
            kind,
            accepted_at_ms: self.accepted_at_ms,
            origin,
            member_id: if self.member_id.is_empty() {
                None
            } else {
                Some(
                    MemberId::new(self.member_id)
                        .map_err(|error| corrupt(format!("entry {sequence}: member id {error}")))?,
                )
            },
            points: self.points,
            spend_minor: self.spend_minor,
            member_points_after: self.member_points_after,
            memo: self.memo,
            terms_version: self
                .terms_version
                .map(u32::try_from)
                .transpose()
                .map_err(|_| corrupt(format!("entry {sequence}: terms version out of range")))?,
            refers_to: self
                .refers_to
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt(format!("entry {sequence}: negative reference")))?,
            expires_at_ms: self.expires_at_ms,
            earn_rule_version: self
                .earn_rule_version
                .map(u32::try_from)
                .transpose()
                .map_err(|_| {
                    corrupt(format!("entry {sequence}: earn rule version out of range"))
                })?,
            postings,
            previous_hash: hash32(self.previous_hash, "previous hash", sequence)?,
            hash: hash32(self.hash, "hash", sequence)?,
        };
        entry
            .check_balanced()
            .map_err(|error| corrupt(error.to_string()))?;
        Ok(entry)
    }
}

/// Joins entry rows with their posting rows (both ordered by sequence).
pub(crate) fn assemble(
    entry_rows: Vec<EntryRow>,
    posting_rows: Vec<PostingRow>,
) -> Result<Vec<Entry>, StorageError> {
    let mut postings_by_sequence: HashMap<i64, Vec<Posting>> =
        HashMap::with_capacity(entry_rows.len());
    for row in posting_rows {
        let sequence = row.entry_sequence;
        postings_by_sequence
            .entry(sequence)
            .or_default()
            .push(row.into_posting()?);
    }
    entry_rows
        .into_iter()
        .map(|row| {
            let postings = postings_by_sequence
                .remove(&row.sequence)
                .unwrap_or_default();
            row.into_entry(postings)
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|entries| {
            // Postings whose entry does not exist: the journal's references are the writer's
            // to keep (PostgreSQL has no foreign keys on them), so reading checks them.
            match postings_by_sequence.keys().min() {
                Some(orphan) => Err(corrupt(format!(
                    "postings refer to entry {orphan}, which does not exist"
                ))),
                None => Ok(entries),
            }
        })
}

/// What recovery rebuilt.
#[derive(Debug)]
pub struct LoadedState {
    pub ledger: Ledger,
    pub registry: Registry,
}

/// The result of the check command.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub entries: u64,
    pub accounts: usize,
    pub head: ChainHead,
    /// Every difference found; empty when the books are sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Storage {
    /// Entries with sequence in `(after, after + limit]`, with their postings, in order.
    pub async fn entries_after(&self, after: u64, limit: i64) -> Result<Vec<Entry>, StorageError> {
        let after = i64::try_from(after).map_err(|_| corrupt("sequence beyond 2^63"))?;
        let last = after + limit;
        let postings = match self {
            Storage::Sqlite(..) => concat!(
                "SELECT ",
                posting_columns!(),
                " FROM postings p JOIN accounts a ON a.account_id = p.account_id \
                 WHERE p.entry_sequence > $1 AND p.entry_sequence <= $2 ORDER BY p.entry_sequence, p.posting_index"
            ),
            Storage::Postgres(_) => concat!(
                "SELECT ",
                posting_columns!(),
                " FROM postings p",
                account_by_key!(),
                "WHERE p.entry_sequence > $1 AND p.entry_sequence <= $2 ORDER BY p.entry_sequence, p.posting_index"
            ),
        };
        let (entry_rows, posting_rows) = with_pool!(self, pool => {
            let entry_rows = sqlx::query(concat!(
                "SELECT ", entry_columns!(), " FROM entries WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence"
            ))
            .bind(after)
            .bind(last)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok(entry_row!(row)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            // The whole range, also past the last entry: a posting without its entry is
            // corruption that `assemble` reports.
            let posting_rows = sqlx::query(postings)
                .bind(after)
                .bind(last)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok(posting_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            (entry_rows, posting_rows)
        });
        assemble(entry_rows, posting_rows)
    }

    /// Loads the merchant registry.
    pub async fn load_registry(&self) -> Result<Registry, StorageError> {
        let (merchant_rows, key_rows) = with_pool!(self, pool => {
            let merchants = sqlx::query(
                "SELECT merchant_id, name, category, status, registered_at_ms FROM merchants ORDER BY merchant_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("merchant_id")?,
                    row.try_get::<String, _>("name")?,
                    row.try_get::<String, _>("category")?,
                    row.try_get::<String, _>("status")?,
                    row.try_get::<i64, _>("registered_at_ms")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let keys = sqlx::query(
                "SELECT merchant_id, key_id, public_key, valid_from_ms, valid_until_ms, revoked_at_ms \
                 FROM merchant_keys ORDER BY merchant_id, key_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("merchant_id")?,
                    row.try_get::<String, _>("key_id")?,
                    row.try_get::<Vec<u8>, _>("public_key")?,
                    row.try_get::<i64, _>("valid_from_ms")?,
                    row.try_get::<Option<i64>, _>("valid_until_ms")?,
                    row.try_get::<Option<i64>, _>("revoked_at_ms")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            (merchants, keys)
        });
        let mut keys_by_merchant: HashMap<String, Vec<MerchantKey>> = HashMap::new();
        for (merchant_id, key_id, public_key, valid_from_ms, valid_until_ms, revoked_at_ms) in
            key_rows
        {
            let public_key = signing::parse_public_key(&public_key)
                .map_err(|error| corrupt(format!("key {key_id} of {merchant_id}: {error}")))?;
            let key_id = KeyId::new(key_id).map_err(|error| corrupt(format!("key id {error}")))?;
            keys_by_merchant
                .entry(merchant_id)
                .or_default()
                .push(MerchantKey {
                    key_id,
                    public_key,
                    valid_from_ms,
                    valid_until_ms,
                    revoked_at_ms,
                });
        }
        let mut registry = Registry::default();
        for (merchant_id, name, category, status, registered_at_ms) in merchant_rows {
            let keys = keys_by_merchant.remove(&merchant_id).unwrap_or_default();
            let merchant = Merchant {
                merchant_id: MerchantId::new(merchant_id)
                    .map_err(|error| corrupt(format!("merchant id {error}")))?,
                name,
                category: MerchantCategory::from_code(&category)
                    .ok_or_else(|| corrupt(format!("unknown merchant category {category:?}")))?,
                status: MerchantStatus::from_code(&status)
                    .ok_or_else(|| corrupt(format!("unknown merchant status {status:?}")))?,
                registered_at_ms,
                keys,
            };
            registry
                .register(merchant)
                .map_err(|error| corrupt(error.to_string()))?;
        }
        Ok(registry)
    }

    /// Rebuilds the ledger by replaying the whole journal, and lists every difference between
    /// the replay and the stored derived state (balances, lots). Stops replaying at the first
    /// entry that does not chain or balance. Keeps in memory only the idempotency receipts of
    /// transactions that happened at or after `keep_receipts_since_ms`.
    pub async fn replay(
        &self,
        keep_receipts_since_ms: i64,
    ) -> Result<(Ledger, CheckReport), StorageError> {
        let mut ledger = Ledger::default();
        let mut problems = Vec::new();
        let (accounts, members, aliases) = with_pool!(self, pool => {
            let accounts = sqlx::query("SELECT account_id, kind, owner FROM accounts ORDER BY account_id")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>("account_id")?, row.try_get::<String, _>("kind")?, row.try_get::<String, _>("owner")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let members = sqlx::query("SELECT member_id, tier FROM members")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<String, _>("member_id")?, row.try_get::<Option<String>, _>("tier")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let aliases = sqlx::query("SELECT alias, target FROM member_aliases")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<String, _>("alias")?, row.try_get::<String, _>("target")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            (accounts, members, aliases)
        });
        for terms in self.load_terms().await? {
            ledger.restore_terms(terms);
        }
        for rules in self.load_earn_rules().await? {
            ledger.restore_earn_rules(rules);
        }
        let account_count = accounts.len();
        for (id, kind, owner) in accounts {
            let key = AccountKey::from_parts(&kind, &owner)
                .ok_or_else(|| corrupt(format!("unknown account {kind}:{owner}")))?;
            let id = u64::try_from(id).map_err(|_| corrupt("negative account id"))?;
            ledger.restore_account(AccountId(id), key);
        }
        for (member, tier) in members {
            ledger.restore_member(
                MemberId::new(member).map_err(|error| corrupt(format!("member id {error}")))?,
                tier,
            );
        }
        for (alias, target) in aliases {
            ledger.restore_alias(
                MemberId::new(alias).map_err(|error| corrupt(format!("alias {error}")))?,
                MemberId::new(target).map_err(|error| corrupt(format!("alias target {error}")))?,
            );
        }
        let mut entries = 0u64;
        'replay: loop {
            let batch = self
                .entries_after(ledger.head().sequence, ENTRIES_PER_READ_MAX)
                .await?;
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                let sequence = entry.sequence;
                if let Err(error) = ledger.replay(entry) {
                    problems.push(format!("entry {sequence}: {error}"));
                    break 'replay;
                }
                entries += 1;
            }
            ledger.forget_receipts_before(keep_receipts_since_ms);
        }
        ledger.finish_restore();
        let stored_last: Option<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT MAX(sequence) AS last FROM entries")
                .fetch_one(pool)
                .await?
                .try_get("last")?
        });
        let stored_last = stored_last.unwrap_or(0);
        if problems.is_empty() && stored_last != ledger.head().sequence as i64 {
            problems.push(format!(
                "the journal ends at entry {stored_last} but replay stopped at {}",
                ledger.head().sequence
            ));
        }
        if let Err(problem) = ledger.check_invariants() {
            problems.push(problem);
        }
        self.compare_balances(&ledger, &mut problems).await?;
        self.compare_lots(&ledger, &mut problems).await?;
        let report = CheckReport {
            entries,
            accounts: account_count,
            head: ledger.head(),
            problems,
        };
        Ok((ledger, report))
    }

    /// Every version of the alliance's earn rules, in version order.
    pub async fn load_earn_rules(&self) -> Result<Vec<EarnRules>, StorageError> {
        let (versions, multipliers) = with_pool!(self, pool => {
            let versions = sqlx::query("SELECT version, effective_from_ms FROM earn_rules ORDER BY version")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>("version")?, row.try_get::<i64, _>("effective_from_ms")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let multipliers = sqlx::query(
                "SELECT version, kind, name, merchant_id, starts_at_ms, ends_at_ms, multiplier \
                 FROM earn_rule_multipliers ORDER BY version, position",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("version")?,
                    row.try_get::<String, _>("kind")?,
                    row.try_get::<String, _>("name")?,
                    row.try_get::<Option<String>, _>("merchant_id")?,
                    row.try_get::<Option<i64>, _>("starts_at_ms")?,
                    row.try_get::<Option<i64>, _>("ends_at_ms")?,
                    row.try_get::<String, _>("multiplier")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            (versions, multipliers)
        });
        let mut rules: Vec<EarnRules> = Vec::with_capacity(versions.len());
        for (version, effective_from_ms) in versions {
            rules.push(EarnRules {
                version: u32::try_from(version)
                    .map_err(|_| corrupt("earn rule version out of range"))?,
                effective_from_ms,
                tier_multipliers: Default::default(),
                campaigns: Vec::new(),
            });
        }
        for (version, kind, name, merchant_id, starts, ends, multiplier) in multipliers {
            let target = rules
                .iter_mut()
                .find(|rules| i64::from(rules.version) == version)
                .ok_or_else(|| {
                    corrupt(format!("earn rule multiplier of unknown version {version}"))
                })?;
            let multiplier = rust_decimal::Decimal::from_str_exact(&multiplier)
                .map_err(|_| corrupt(format!("earn rules {version}: multiplier {multiplier:?}")))?;
            match (kind.as_str(), starts, ends) {
                ("tier", _, _) => {
                    target.tier_multipliers.insert(name, multiplier);
                }
                ("campaign", Some(starts_at_ms), Some(ends_at_ms)) => {
                    target.campaigns.push(Campaign {
                        name,
                        merchant_id: merchant_id.map(MerchantId::new).transpose().map_err(
                            |error| corrupt(format!("earn rules {version}: merchant id {error}")),
                        )?,
                        starts_at_ms,
                        ends_at_ms,
                        multiplier,
                    })
                }
                _ => {
                    return Err(corrupt(format!(
                        "earn rules {version}: malformed multiplier {name:?}"
                    )));
                }
            }
        }
        Ok(rules)
    }

    /// Every version of every merchant's terms, in version order.
    pub async fn load_terms(&self) -> Result<Vec<MerchantTerms>, StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT merchant_id, version, effective_from_ms, issue_price_minor_per_point, redeem_price_minor_per_point, \
                 fee_minor_per_point, cross_merchant_reversals, credit_limit_minor, \
                 earn_points_per_minor, legacy_unit, points_per_legacy_unit, breakage_share \
                 FROM merchant_terms ORDER BY merchant_id, version",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("merchant_id")?,
                    row.try_get::<i64, _>("version")?,
                    row.try_get::<i64, _>("effective_from_ms")?,
                    row.try_get::<String, _>("issue_price_minor_per_point")?,
                    row.try_get::<String, _>("redeem_price_minor_per_point")?,
                    row.try_get::<String, _>("fee_minor_per_point")?,
                    row.try_get::<i64, _>("cross_merchant_reversals")?,
                    row.try_get::<Option<i64>, _>("credit_limit_minor")?,
                    row.try_get::<Option<String>, _>("earn_points_per_minor")?,
                    row.try_get::<Option<String>, _>("legacy_unit")?,
                    row.try_get::<Option<String>, _>("points_per_legacy_unit")?,
                    row.try_get::<String, _>("breakage_share")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(
                |(
                    merchant_id,
                    version,
                    effective_from_ms,
                    issue,
                    redeem,
                    fee,
                    cross,
                    limit,
                    rate,
                    unit,
                    unit_rate,
                    share,
                )| {
                    let price = |text: &str| {
                        rust_decimal::Decimal::from_str_exact(text)
                            .map_err(|_| corrupt(format!("terms of {merchant_id}: price {text:?}")))
                    };
                    Ok(MerchantTerms {
                        merchant_id: MerchantId::new(merchant_id.clone())
                            .map_err(|error| corrupt(format!("terms merchant id {error}")))?,
                        version: u32::try_from(version)
                            .map_err(|_| corrupt("terms version out of range"))?,
                        effective_from_ms,
                        issue_price_minor_per_point: price(&issue)?,
                        redeem_price_minor_per_point: price(&redeem)?,
                        fee_minor_per_point: price(&fee)?,
                        cross_merchant_reversals: cross != 0,
                        credit_limit_minor: limit,
                        earn_points_per_minor: rate.as_deref().map(price).transpose()?,
                        exchange: match (unit, unit_rate) {
                            (Some(unit), Some(rate)) => Some((
                                UnitCode::new(&unit).ok_or_else(|| {
                                    corrupt(format!("terms of {merchant_id}: legacy unit {unit:?}"))
                                })?,
                                price(&rate)?,
                            )),
                            _ => None,
                        },
                        breakage_share: price(&share)?,
                    })
                },
            )
            .collect()
    }

    /// Recovery: the ledger as committed, refusing to start on any inconsistency, with the
    /// receipts of transactions that happened at or after `keep_receipts_since_ms` in memory.
    pub async fn load(&self, keep_receipts_since_ms: i64) -> Result<LoadedState, StorageError> {
        let registry = self.load_registry().await?;
        let (ledger, report) = self.replay(keep_receipts_since_ms).await?;
        if !report.is_sound() {
            return Err(corrupt(report.problems.join("; ")));
        }
        Ok(LoadedState { ledger, registry })
    }

    async fn compare_balances(
        &self,
        ledger: &Ledger,
        problems: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        let stored = with_pool!(self, pool => {
            sqlx::query("SELECT account_id, asset, balance FROM account_balances")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>("account_id")?, row.try_get::<String, _>("asset")?, row.try_get::<i64, _>("balance")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let mut seen = 0usize;
        for (account_id, asset, balance) in stored {
            let asset = Asset::from_code(&asset)
                .ok_or_else(|| corrupt(format!("unknown asset {asset:?}")))?;
            let recomputed = ledger.balance_of(AccountId(account_id as u64), asset);
            if recomputed != 0 || balance != 0 {
                seen += 1;
            }
            if recomputed != balance {
                problems.push(format!(
                    "account {account_id} {}: stored balance {balance}, postings sum to {recomputed}",
                    asset.code()
                ));
            }
        }
        let nonzero = ledger
            .accounts()
            .filter(|(_, id)| ledger.balance_of(*id, Asset::Points) != 0)
            .count();
        if nonzero > seen {
            problems.push(format!(
                "{} accounts have postings but no stored balance",
                nonzero - seen
            ));
        }
        Ok(())
    }

    async fn compare_lots(
        &self,
        ledger: &Ledger,
        problems: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT l.issuer AS issuer, CAST(SUM(l.points - COALESCE(c.consumed, 0)) AS BIGINT) AS outstanding \
                 FROM lots l LEFT JOIN ( \
                    SELECT lot_entry_sequence, lot_index, SUM(points) AS consumed FROM ( \
                      SELECT lot_entry_sequence, lot_index, points FROM lot_consumptions UNION ALL \
                      SELECT lot_entry_sequence, lot_index, points FROM debt_repayments) u \
                    GROUP BY lot_entry_sequence, lot_index) c \
                 ON c.lot_entry_sequence = l.entry_sequence AND c.lot_index = l.lot_index \
                 GROUP BY l.issuer",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<String, _>("issuer")?, row.try_get::<i64, _>("outstanding")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let replayed = ledger.outstanding_by_issuer();
        let mut stored: HashMap<String, i64> = HashMap::new();
        for (issuer, outstanding) in rows {
            stored.insert(issuer, outstanding);
        }
        for (issuer, outstanding) in &replayed {
            let stored_outstanding = stored.remove(issuer.as_str()).unwrap_or(0);
            if stored_outstanding != *outstanding {
                problems.push(format!(
                    "issuer {issuer}: stored lots hold {stored_outstanding} points, replay {outstanding}"
                ));
            }
        }
        for (issuer, outstanding) in stored {
            if outstanding != 0 {
                problems.push(format!(
                    "issuer {issuer}: stored lots hold {outstanding} points, replay 0"
                ));
            }
        }
        Ok(())
    }
}
