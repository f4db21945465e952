//! The rows of an export's JSON lines files and the inputs it carries: entries and
//! postings as the hash chain covers them, the trial balance, merchants' names, payables
//! and terms by version.

use super::*;

/// One posting as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingRecord {
    pub entry_sequence: u64,
    pub account_kind: String,
    pub owner: String,
    pub asset: String,
    pub amount: i64,
}

/// One entry as exported: every field its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub sequence: u64,
    pub kind: String,
    pub accepted_at_ms: i64,
    pub merchant_id: Option<String>,
    pub merchant_transaction_id: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    pub occurred_at_ms: Option<i64>,
    pub body_hash: Option<String>,
    pub member_id: Option<String>,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub member_points_after: i64,
    pub memo: String,
    pub terms_version: Option<u32>,
    pub refers_to: Option<u64>,
    pub expires_at_ms: Option<i64>,
    pub earn_rule_version: Option<u32>,
    pub postings: Vec<PostingRecord>,
    pub previous_hash: String,
    pub hash: String,
}

impl EntryRecord {
    pub fn from_entry(entry: &Entry) -> EntryRecord {
        let origin = entry.origin.as_ref();
        EntryRecord {
            sequence: entry.sequence,
            kind: entry.kind.code().to_owned(),
            accepted_at_ms: entry.accepted_at_ms,
            merchant_id: origin.map(|origin| origin.merchant_id.as_str().to_owned()),
            merchant_transaction_id: origin
                .map(|origin| origin.merchant_transaction_id.as_str().to_owned()),
            store_id: origin.map(|origin| origin.store_id.clone()),
            terminal_id: origin.map(|origin| origin.terminal_id.clone()),
            occurred_at_ms: origin.map(|origin| origin.occurred_at_ms),
            body_hash: origin.map(|origin| hex::encode(origin.body_hash)),
            member_id: entry
                .member_id
                .as_ref()
                .map(|member| member.as_str().to_owned()),
            points: entry.points,
            spend_minor: entry.spend_minor,
            member_points_after: entry.member_points_after,
            memo: entry.memo.clone(),
            terms_version: entry.terms_version,
            refers_to: entry.refers_to,
            expires_at_ms: entry.expires_at_ms,
            earn_rule_version: entry.earn_rule_version,
            postings: entry
                .postings
                .iter()
                .map(|posting| PostingRecord {
                    entry_sequence: entry.sequence,
                    account_kind: posting.account.kind().to_owned(),
                    owner: posting.account.owner().to_owned(),
                    asset: posting.asset.code().to_owned(),
                    amount: posting.amount,
                })
                .collect(),
            previous_hash: hex::encode(entry.previous_hash),
            hash: hex::encode(entry.hash),
        }
    }

    /// The entry back, for recomputing its hash; an error names what does not parse.
    pub fn to_entry(&self) -> anyhow::Result<Entry> {
        let sequence = self.sequence;
        let hash32 = |field: &str, text: &str| -> anyhow::Result<[u8; 32]> {
            hex::decode(text)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| format!("entry {sequence}: {field} is not 32 bytes of hex"))
        };
        let origin = match (&self.merchant_id, &self.merchant_transaction_id) {
            (Some(merchant), Some(transaction)) => Some(MerchantOrigin {
                merchant_id: MerchantId::new(merchant.clone())
                    .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
                merchant_transaction_id: MerchantTransactionId::new(transaction.clone())
                    .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
                store_id: self.store_id.clone().unwrap_or_default(),
                terminal_id: self.terminal_id.clone().unwrap_or_default(),
                occurred_at_ms: self.occurred_at_ms.unwrap_or_default(),
                body_hash: hash32("body_hash", self.body_hash.as_deref().unwrap_or(""))?,
            }),
            (None, None) => None,
            _ => bail!("entry {sequence}: merchant_id and merchant_transaction_id come together"),
        };
        let postings = self
            .postings
            .iter()
            .map(|posting| {
                Ok(Posting {
                    account: AccountKey::from_parts(&posting.account_kind, &posting.owner)
                        .with_context(|| {
                            format!(
                                "entry {sequence}: account {}:{} is not an account",
                                posting.account_kind, posting.owner
                            )
                        })?,
                    asset: Asset::from_code(&posting.asset).with_context(|| {
                        format!(
                            "entry {sequence}: asset {:?} is not an asset",
                            posting.asset
                        )
                    })?,
                    amount: posting.amount,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Entry {
            sequence,
            kind: EntryKind::from_code(&self.kind)
                .with_context(|| format!("entry {sequence}: kind {:?} is unknown", self.kind))?,
            accepted_at_ms: self.accepted_at_ms,
            origin,
            member_id: self
                .member_id
                .clone()
                .map(MemberId::new)
                .transpose()
                .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
            points: self.points,
            spend_minor: self.spend_minor,
            member_points_after: self.member_points_after,
            memo: self.memo.clone(),
            terms_version: self.terms_version,
            refers_to: self.refers_to,
            expires_at_ms: self.expires_at_ms,
            earn_rule_version: self.earn_rule_version,
            postings,
            previous_hash: hash32("previous_hash", &self.previous_hash)?,
            hash: hash32("hash", &self.hash)?,
        })
    }
}

/// One account's line of the trial balance, per asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialBalanceLine {
    pub account_kind: String,
    pub owner: String,
    pub asset: String,
    pub opening: i64,
    /// The sum of the period's positive postings.
    pub debits: i64,
    /// The sum of the period's negative postings, as a positive number.
    pub credits: i64,
    pub closing: i64,
}

/// Asset, account kind, owner: how balances are keyed and sorted.
pub type BalanceKey = (String, String, String);

impl TrialBalanceLine {
    pub fn key(&self) -> BalanceKey {
        (
            self.asset.clone(),
            self.account_kind.clone(),
            self.owner.clone(),
        )
    }
}

/// The trial balance: opening balances, then every posting of `entries`.
pub fn trial_balance(
    opening: &BTreeMap<BalanceKey, i64>,
    entries: &[Entry],
) -> anyhow::Result<Vec<TrialBalanceLine>> {
    let mut balance = TrialBalance::new(opening);
    balance.add(entries)?;
    balance.finish()
}

/// The trial balance built a page of entries at a time: its memory is one line per account
/// with an opening balance or a posting, never the period's entries.
pub struct TrialBalance {
    lines: BTreeMap<BalanceKey, TrialBalanceLine>,
}

impl TrialBalance {
    pub fn new(opening: &BTreeMap<BalanceKey, i64>) -> Self {
        let mut balance = TrialBalance {
            lines: BTreeMap::new(),
        };
        for (key, amount) in opening {
            if *amount != 0 {
                balance.line(key.clone()).opening = *amount;
            }
        }
        balance
    }

    fn line(&mut self, key: BalanceKey) -> &mut TrialBalanceLine {
        self.lines
            .entry(key)
            .or_insert_with_key(|(asset, kind, owner)| TrialBalanceLine {
                account_kind: kind.clone(),
                owner: owner.clone(),
                asset: asset.clone(),
                opening: 0,
                debits: 0,
                credits: 0,
                closing: 0,
            })
    }

    /// Adds the postings of the next entries.
    pub fn add(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        for entry in entries {
            for posting in &entry.postings {
                let row = self.line((
                    posting.asset.code().to_owned(),
                    posting.account.kind().to_owned(),
                    posting.account.owner().to_owned(),
                ));
                if posting.amount >= 0 {
                    row.debits = row
                        .debits
                        .checked_add(posting.amount)
                        .context("debits overflow")?;
                } else {
                    row.credits = row
                        .credits
                        .checked_sub(posting.amount)
                        .context("credits overflow")?;
                }
            }
        }
        Ok(())
    }

    /// The lines, sorted by asset, kind and owner, with their closing balances.
    pub fn finish(self) -> anyhow::Result<Vec<TrialBalanceLine>> {
        let mut out: Vec<TrialBalanceLine> = self.lines.into_values().collect();
        for row in &mut out {
            row.closing = row
                .opening
                .checked_add(row.debits)
                .and_then(|value| value.checked_sub(row.credits))
                .context("closing balance overflows")?;
        }
        Ok(out)
    }
}

/// Opening and closing sums per asset; each must be zero.
pub fn trial_balance_sums(lines: &[TrialBalanceLine]) -> BTreeMap<String, (i128, i128)> {
    let mut sums: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    for line in lines {
        let sum = sums.entry(line.asset.clone()).or_default();
        sum.0 += i128::from(line.opening);
        sum.1 += i128::from(line.closing);
    }
    sums
}

/// The merchants' terms the period's netting used, by version.
pub const TERMS_FILE: &str = "terms.jsonl";

/// One version of a merchant's terms as `terms.jsonl` holds it: what the netting takes from
/// it (the prices of the money legs, the fee, the breakage share). Decimals are strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsRecord {
    pub merchant_id: String,
    pub version: u32,
    pub effective_from_ms: i64,
    pub issue_price_minor_per_point: String,
    pub redeem_price_minor_per_point: String,
    pub fee_minor_per_point: String,
    pub breakage_share: String,
    /// The base earn rate, points per minor unit of spend, for earns sent with a spend.
    pub earn_points_per_minor: Option<String>,
}

impl TermsRecord {
    pub fn from_terms(terms: &coalition_domain::terms::MerchantTerms) -> TermsRecord {
        TermsRecord {
            merchant_id: terms.merchant_id.as_str().to_owned(),
            version: terms.version,
            effective_from_ms: terms.effective_from_ms,
            issue_price_minor_per_point: terms.issue_price_minor_per_point.to_string(),
            redeem_price_minor_per_point: terms.redeem_price_minor_per_point.to_string(),
            fee_minor_per_point: terms.fee_minor_per_point.to_string(),
            breakage_share: terms.breakage_share.to_string(),
            earn_points_per_minor: terms.earn_points_per_minor.map(|rate| rate.to_string()),
        }
    }
}

/// Merchants' terms by version, to find the version in force at a time.
#[derive(Debug, Clone, Default)]
pub struct TermsBook {
    by_merchant: BTreeMap<String, Vec<TermsRecord>>,
}

impl TermsBook {
    pub fn new(records: impl IntoIterator<Item = TermsRecord>) -> TermsBook {
        let mut book = TermsBook::default();
        for record in records {
            book.by_merchant
                .entry(record.merchant_id.clone())
                .or_default()
                .push(record);
        }
        for versions in book.by_merchant.values_mut() {
            versions.sort_by_key(|record| record.version);
        }
        book
    }

    /// The version of `merchant`'s terms in force at `at_ms`: the highest version effective
    /// by then (as the ledger picks it).
    pub fn in_force(&self, merchant: &str, at_ms: i64) -> Option<&TermsRecord> {
        self.by_merchant
            .get(merchant)?
            .iter()
            .rev()
            .find(|record| record.effective_from_ms <= at_ms)
    }

    /// The versions `used` names and, per merchant of the settlement, the version in force
    /// at the period's last instant (its breakage share is the settlement's), sorted.
    pub(crate) fn needed(
        &self,
        used: &std::collections::BTreeSet<(String, u32)>,
        settlement: &Settlement,
    ) -> Vec<TermsRecord> {
        let mut wanted = used.clone();
        for net in &settlement.merchants {
            if let Some(record) = self.in_force(&net.merchant_id, settlement.end_ms - 1) {
                wanted.insert((record.merchant_id.clone(), record.version));
            }
        }
        wanted
            .iter()
            .filter_map(|(merchant, version)| {
                self.by_merchant
                    .get(merchant)?
                    .iter()
                    .find(|record| record.version == *version)
                    .cloned()
            })
            .collect()
    }
}

/// Whether an entry's money legs are priced by its merchant's terms, and on which side:
/// `Some(true)` for an issue (earn), `Some(false)` for a redemption (burn).
pub fn priced_side(kind: EntryKind) -> Option<bool> {
    match kind {
        EntryKind::Earn => Some(true),
        EntryKind::Burn => Some(false),
        _ => None,
    }
}

/// A merchant's name as `merchants.jsonl` holds it (the payments files name merchants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantName {
    pub merchant_id: String,
    pub name: String,
}

/// What was payable to a merchant after the period's closing entry, over every finalised
/// period (negative: what it owed), as `payables.jsonl` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payable {
    pub merchant_id: String,
    pub payable_minor: i64,
}

/// A partner's signed envelope as `envelopes.jsonl.gz` holds it: the entry it made, the key
/// that signed, the body's exact bytes and the signature over
/// `"coalition.v1.submission\0" || body` (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    pub entry_sequence: u64,
    pub key_id: String,
    pub body: String,
    pub signature: String,
}

/// A merchant's key that signed an envelope of the period, as `keys.jsonl` holds it: what
/// `verify` checks the signatures with, and since when the key may sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub merchant_id: String,
    pub key_id: String,
    pub public_key: String,
    pub valid_from_ms: i64,
}

/// One version of the alliance's earn rules as `earn_rules.jsonl` holds it (decimals as
/// strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarnRulesRecord {
    pub version: u32,
    pub effective_from_ms: i64,
    pub tier_multipliers: BTreeMap<String, String>,
    pub campaigns: Vec<CampaignRecord>,
}

/// A time-boxed multiplier of an earn rules version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub name: String,
    pub merchant_id: Option<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub multiplier: String,
}

impl EarnRulesRecord {
    pub fn from_rules(rules: &coalition_domain::EarnRules) -> EarnRulesRecord {
        EarnRulesRecord {
            version: rules.version,
            effective_from_ms: rules.effective_from_ms,
            tier_multipliers: rules
                .tier_multipliers
                .iter()
                .map(|(tier, multiplier)| (tier.clone(), multiplier.to_string()))
                .collect(),
            campaigns: rules
                .campaigns
                .iter()
                .map(|campaign| CampaignRecord {
                    name: campaign.name.clone(),
                    merchant_id: campaign
                        .merchant_id
                        .as_ref()
                        .map(|merchant| merchant.as_str().to_owned()),
                    starts_at_ms: campaign.starts_at_ms,
                    ends_at_ms: campaign.ends_at_ms,
                    multiplier: campaign.multiplier.to_string(),
                })
                .collect(),
        }
    }

    /// The rules back, for computing an earn's multiplier; `None` when a decimal or a
    /// merchant id does not parse.
    pub fn to_rules(&self) -> Option<coalition_domain::EarnRules> {
        let decimal = |text: &str| rust_decimal::Decimal::from_str_exact(text).ok();
        Some(coalition_domain::EarnRules {
            version: self.version,
            effective_from_ms: self.effective_from_ms,
            tier_multipliers: self
                .tier_multipliers
                .iter()
                .map(|(tier, multiplier)| Some((tier.clone(), decimal(multiplier)?)))
                .collect::<Option<_>>()?,
            campaigns: self
                .campaigns
                .iter()
                .map(|campaign| {
                    Some(coalition_domain::Campaign {
                        name: campaign.name.clone(),
                        merchant_id: match &campaign.merchant_id {
                            Some(merchant) => Some(MerchantId::new(merchant.clone()).ok()?),
                            None => None,
                        },
                        starts_at_ms: campaign.starts_at_ms,
                        ends_at_ms: campaign.ends_at_ms,
                        multiplier: decimal(&campaign.multiplier)?,
                    })
                })
                .collect::<Option<_>>()?,
        })
    }
}

/// The tier a member was enrolled with, as `member_tiers.jsonl` holds it: the members of the
/// period's earns whose points came from a spend and the earn rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTier {
    pub member_id: String,
    pub tier: Option<String>,
}
