//! The ledger state machine. It holds what the writer needs to decide a submission in
//! memory (balances, lots, enrolled members, aliases, idempotency receipts, the chain head)
//! and turns each accepted submission into one balanced, hash-chained journal entry plus the
//! rows that storage must write for it.
//!
//! The same `commit_entry` path serves live application and recovery (replaying committed
//! entries), so the state after a restart is the state before it by construction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sha2::{Digest, Sha256};

use crate::account::{AccountId, AccountKey, Asset, CurrencyCode};
use crate::chain::{ChainError, ChainHead, entry_hash};
use crate::earn_rules::{Campaign, EarnRules, check_factor, points_for_spend};
use crate::ids::{MemberId, MerchantId, MerchantTransactionId};
use crate::journal::{
    BalanceError, Entry, EntryKind, LotConsumption, LotId, LotRecord, MerchantOrigin, Posting,
};
use crate::lots::{Lot, Wallet};
use crate::policy::LedgerPolicy;
use crate::rejection::{Rejection, RejectionReason};
use crate::settlement::{Settlement, closing_postings};
use crate::submission::{Submission, TransactionKind};
use crate::terms::{MerchantTerms, Prices, TermsError, check_price, money_leg};

/// How deep alias chains may go: a merged member may itself be merged later.
pub const ALIAS_DEPTH_MAX: usize = 64;

/// What a committed merchant transaction returned; a retry with the same body gets it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub sequence: u64,
    /// When the transaction happened at the terminal (0 for operator entries).
    pub occurred_at_ms: i64,
    pub kind: EntryKind,
    pub accepted_at_ms: i64,
    pub body_hash: [u8; 32],
    pub member_id: MemberId,
    pub points: i64,
    pub member_points_after: i64,
}

impl Receipt {
    /// The receipt a merchant's entry gives; none for operator entries.
    pub fn of_entry(entry: &Entry) -> Option<(ReceiptKey, Receipt)> {
        let origin = entry.origin.as_ref()?;
        let member_id = entry.member_id.clone()?;
        Some((
            (
                origin.merchant_id.clone(),
                origin.merchant_transaction_id.clone(),
            ),
            Receipt {
                sequence: entry.sequence,
                occurred_at_ms: origin.occurred_at_ms,
                kind: entry.kind,
                accepted_at_ms: entry.accepted_at_ms,
                body_hash: origin.body_hash,
                member_id,
                points: entry.points,
                member_points_after: entry.member_points_after,
            },
        ))
    }
}

/// The result of applying a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new entry was made.
    Applied(Receipt),
    /// The same merchant sent the same body before; nothing new was applied.
    Duplicate(Receipt),
}

/// Why a submission or an operator command was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Rejected(Rejection),
    /// A bug: the batch must be aborted and never committed.
    #[error("ledger invariant violated: {0}")]
    InvariantViolated(String),
}

impl From<BalanceError> for ApplyError {
    fn from(error: BalanceError) -> Self {
        ApplyError::InvariantViolated(error.to_string())
    }
}

/// Why a member command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("member {0} is not enrolled")]
    Unknown(MemberId),
    #[error("member {0} is already an alias of another member")]
    AlreadyAliased(MemberId),
    #[error("a member cannot be an alias of itself")]
    SelfAlias,
    #[error(
        "member {member_id} owes {points} points from a reversed earn; it can be merged once they are repaid"
    )]
    InDebt { member_id: MemberId, points: i64 },
    #[error("ledger invariant violated: {0}")]
    InvariantViolated(String),
}

/// A member as enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub member_id: MemberId,
    pub tier: Option<String>,
    pub enrolled_at_ms: i64,
}

/// `alias` now stands for `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRecord {
    pub alias: MemberId,
    pub target: MemberId,
    pub created_at_ms: i64,
}

/// Everything one batch changed, for storage to write in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    pub accounts: Vec<(AccountId, AccountKey)>,
    pub members: Vec<MemberRecord>,
    pub aliases: Vec<AliasRecord>,
    pub entries: Vec<Entry>,
    pub lots: Vec<LotRecord>,
    pub lot_consumptions: Vec<LotConsumption>,
    /// Terms added.
    pub terms: Vec<MerchantTerms>,
    /// Earn rules added.
    pub earn_rules: Vec<EarnRules>,
    /// Settlement periods finalised.
    pub settlements: Vec<FinalisedPeriod>,
    /// The account of every posting of `entries`, in the same order as the postings.
    pub posting_account_ids: Vec<AccountId>,
    touched_balances: BTreeSet<(AccountId, Asset)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.members.is_empty()
            && self.aliases.is_empty()
            && self.entries.is_empty()
            && self.terms.is_empty()
            && self.earn_rules.is_empty()
            && self.settlements.is_empty()
    }

    /// The current balance of every account the batch touched.
    pub fn balances(&self, ledger: &Ledger) -> Vec<(AccountId, Asset, i64)> {
        self.touched_balances
            .iter()
            .map(|&(account, asset)| (account, asset, ledger.balance_of(account, asset)))
            .collect()
    }
}

/// A finalised settlement period: its settlement and the closing entry that booked it (none
/// when nothing moved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalisedPeriod {
    pub settlement: Settlement,
    pub closing_sequence: Option<u64>,
    pub finalised_at_ms: i64,
}

/// An earn, burn or capture that a reversal may still act on.
#[derive(Debug, Clone)]
struct Reversible {
    kind: EntryKind,
    /// The merchant whose accounts the original posted to.
    merchant_id: MerchantId,
    member_id: MemberId,
    points: i64,
    /// Points already reversed.
    reversed: i64,
    terms_version: u32,
    /// For a burn or capture: the lot pieces it took, which a reversal gives back.
    taken: Vec<Lot>,
}

/// A hold not yet captured, voided or expired.
#[derive(Debug, Clone)]
struct OpenHold {
    merchant_id: MerchantId,
    /// The member whose held account holds the points.
    member_id: MemberId,
    points: i64,
    terms_version: u32,
    expires_at_ms: i64,
    taken: Vec<Lot>,
}

/// What an expiry run or a hold-expiry sweep booked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpirySummary {
    pub entries: usize,
    pub points: i64,
    /// Money moved from the float to breakage, in minor units.
    pub money_minor: i64,
}

/// The in-memory ledger. See the module documentation.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The currency of money legs.
    currency: CurrencyCode,
    /// Every version of every merchant's terms, oldest first.
    terms: HashMap<MerchantId, Vec<MerchantTerms>>,
    /// Every version of the alliance's earn rules, oldest first.
    earn_rules: Vec<EarnRules>,
    /// Members' tiers, for the earn rules' tier multipliers.
    member_tiers: HashMap<MemberId, String>,
    /// The latest acceptance time of any entry; terms may not take effect before it.
    last_accepted_at_ms: i64,
    policy: LedgerPolicy,
    accounts: HashMap<AccountKey, AccountId>,
    balances: HashMap<(AccountId, Asset), i64>,
    members: HashMap<MemberId, Wallet>,
    /// Earns, burns and captures by entry sequence, for reversals.
    reversibles: HashMap<u64, Reversible>,
    /// Open holds by entry sequence.
    holds: HashMap<u64, OpenHold>,
    /// (expires at, hold sequence) of every hold ever opened; closed ones are skipped.
    hold_deadlines: BTreeSet<(i64, u64)>,
    /// The members with lots expiring at each time; lots spent since are skipped.
    lot_expiries: BTreeMap<i64, BTreeSet<MemberId>>,
    aliases: HashMap<MemberId, MemberId>,
    /// Receipts of recent merchant transactions: a cache of the journal's unique index on
    /// (merchant, transaction id). Older ones are forgotten to bound memory; the writer loads
    /// any it lacks from storage before a batch is applied.
    receipts: HashMap<ReceiptKey, Receipt>,
    /// The same receipts ordered by when the transaction happened, for forgetting.
    receipts_by_age: BTreeMap<(i64, u64), ReceiptKey>,
    head: ChainHead,
}

/// An entry made from a merchant's submission, before it is sealed.
struct Draft {
    kind: EntryKind,
    earn_rule_version: Option<u32>,
    member_id: MemberId,
    points: i64,
    member_points_after: i64,
    terms_version: Option<u32>,
    refers_to: Option<u64>,
    expires_at_ms: Option<i64>,
    postings: Vec<Posting>,
}

/// An entry the operator makes (no merchant submitted it), before it is sealed.
struct OperatorEntry {
    kind: EntryKind,
    member_id: Option<MemberId>,
    points: i64,
    member_points_after: i64,
    memo: String,
    refers_to: Option<u64>,
    postings: Vec<Posting>,
}

/// Whether points were issued or redeemed, for the money legs.
#[derive(Debug, Clone, Copy)]
enum Side {
    Issue,
    Redeem,
}

fn rejected(reason: RejectionReason, message: String) -> ApplyError {
    ApplyError::Rejected(Rejection::new(reason, message))
}

/// Refuses a burn, hold or exchange out of more points than the wallet has available.
fn check_available(submission: &Submission, wallet_before: i64) -> Result<(), ApplyError> {
    if submission.points <= wallet_before {
        return Ok(());
    }
    let owed = if wallet_before < 0 {
        format!(
            "; it owes {} points from a reversed earn and can redeem again once they are repaid",
            -wallet_before
        )
    } else {
        String::new()
    };
    let what = match submission.kind {
        TransactionKind::Hold => "hold",
        TransactionKind::ExchangeOut => "exchange",
        _ => "burn",
    };
    Err(rejected(
        RejectionReason::PointsInsufficient,
        format!(
            "member {} has {} points available, the {what} asks for {}{owed}",
            submission.member_id,
            wallet_before.max(0),
            submission.points
        ),
    ))
}

fn checked_wallet(before: i64, change: i64) -> Result<i64, ApplyError> {
    before
        .checked_add(change)
        .ok_or_else(|| ApplyError::InvariantViolated("wallet balance overflow".into()))
}

/// A merchant's transaction: the idempotency key.
pub type ReceiptKey = (MerchantId, MerchantTransactionId);

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead::GENESIS
    }
}

/// The settlement currency when none is configured.
pub const CURRENCY_DEFAULT: &str = "CNY";

impl Default for Ledger {
    fn default() -> Self {
        Ledger::with_currency(CurrencyCode::new(CURRENCY_DEFAULT).expect("a valid code"))
    }
}

impl Ledger {
    /// An empty ledger whose money legs are in `currency`.
    pub fn with_currency(currency: CurrencyCode) -> Self {
        Ledger {
            currency,
            terms: HashMap::new(),
            earn_rules: Vec::new(),
            member_tiers: HashMap::new(),
            last_accepted_at_ms: i64::MIN,
            policy: LedgerPolicy::default(),
            accounts: HashMap::new(),
            balances: HashMap::new(),
            members: HashMap::new(),
            reversibles: HashMap::new(),
            holds: HashMap::new(),
            hold_deadlines: BTreeSet::new(),
            lot_expiries: BTreeMap::new(),
            aliases: HashMap::new(),
            receipts: HashMap::new(),
            receipts_by_age: BTreeMap::new(),
            head: ChainHead::GENESIS,
        }
    }

    /// Sets the currency of future money legs (recovery restores the rest from the journal).
    pub fn set_currency(&mut self, currency: CurrencyCode) {
        self.currency = currency;
    }

    /// Sets the rules for new holds and lots (recovery restores booked ones from the journal).
    pub fn set_policy(&mut self, policy: LedgerPolicy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> LedgerPolicy {
        self.policy
    }

    pub fn currency(&self) -> CurrencyCode {
        self.currency
    }

    /// The latest acceptance time of any entry (`i64::MIN` before the first).
    pub fn last_accepted_at_ms(&self) -> i64 {
        self.last_accepted_at_ms
    }

    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// The terms of `merchant_id` in force at `at_ms`.
    pub fn terms_at(&self, merchant_id: &MerchantId, at_ms: i64) -> Option<&MerchantTerms> {
        self.terms
            .get(merchant_id)?
            .iter()
            .rev()
            .find(|terms| terms.effective_from_ms <= at_ms)
    }

    /// Every version of a merchant's terms, oldest first.
    pub fn merchant_terms(&self, merchant_id: &MerchantId) -> &[MerchantTerms] {
        self.terms.get(merchant_id).map_or(&[], Vec::as_slice)
    }

    /// Adds the next version of a merchant's terms, effective from `effective_from_ms`, or,
    /// when `None`, from the millisecond after the last accepted entry (so that every entry
    /// is priced by the terms in force at its acceptance time).
    pub fn add_terms(
        &mut self,
        merchant_id: MerchantId,
        effective_from_ms: Option<i64>,
        prices: Prices,
        now_ms: i64,
        changes: &mut Changes,
    ) -> Result<MerchantTerms, TermsError> {
        let Prices {
            issue_price_minor_per_point,
            redeem_price_minor_per_point,
            fee_minor_per_point,
            cross_merchant_reversals,
            credit_limit_minor,
            earn_points_per_minor,
            exchange,
            breakage_share,
        } = prices;
        if breakage_share.is_sign_negative()
            || breakage_share > Decimal::ONE
            || breakage_share.scale() > crate::terms::PRICE_SCALE_MAX
        {
            return Err(TermsError::ShareInvalid(breakage_share));
        }
        if let Some((unit, rate)) = exchange {
            check_factor("the exchange rate", rate)?;
            if let Some(owner) = self.terms.iter().find_map(|(owner, versions)| {
                (owner != &merchant_id
                    && versions
                        .iter()
                        .any(|terms| terms.exchange.is_some_and(|(taken, _)| taken == unit)))
                .then(|| owner.clone())
            }) {
                return Err(TermsError::UnitTaken {
                    unit: unit.as_str().to_owned(),
                    owner,
                });
            }
        }
        if let Some(rate) = earn_points_per_minor {
            check_factor("the base earn rate", rate)?;
        }
        check_price("issue price", issue_price_minor_per_point)?;
        check_price("redeem price", redeem_price_minor_per_point)?;
        check_price("fee", fee_minor_per_point)?;
        if let Some(limit) = credit_limit_minor
            && limit < 0
        {
            return Err(TermsError::CreditLimitInvalid(limit));
        }
        let previous_effective_ms = self
            .terms
            .get(&merchant_id)
            .and_then(|versions| versions.last())
            .map_or(i64::MIN, |previous| previous.effective_from_ms);
        let effective_from_ms =
            self.effective_from(effective_from_ms, previous_effective_ms, now_ms)?;
        let versions = self.terms.entry(merchant_id.clone()).or_default();
        if let Some(previous) = versions.last()
            && effective_from_ms <= previous.effective_from_ms
        {
            return Err(TermsError::NotAfterPrevious {
                merchant_id,
                effective_from_ms,
                version: previous.version,
                previous_ms: previous.effective_from_ms,
            });
        }
        let terms = MerchantTerms {
            merchant_id,
            version: u32::try_from(versions.len() + 1).expect("fewer than 4 billion versions"),
            effective_from_ms,
            issue_price_minor_per_point,
            redeem_price_minor_per_point,
            fee_minor_per_point,
            cross_merchant_reversals,
            credit_limit_minor,
            earn_points_per_minor,
            exchange,
            breakage_share,
        };
        versions.push(terms.clone());
        changes.terms.push(terms.clone());
        Ok(terms)
    }

    /// The earn rules in force at `at_ms`.
    pub fn earn_rules_at(&self, at_ms: i64) -> Option<&EarnRules> {
        self.earn_rules
            .iter()
            .rev()
            .find(|rules| rules.effective_from_ms <= at_ms)
    }

    /// Adds the next version of the alliance's earn rules, effective from `effective_from_ms`
    /// or, when `None`, from the millisecond after the last accepted entry.
    pub fn add_earn_rules(
        &mut self,
        effective_from_ms: Option<i64>,
        tier_multipliers: BTreeMap<String, Decimal>,
        campaigns: Vec<Campaign>,
        now_ms: i64,
        changes: &mut Changes,
    ) -> Result<EarnRules, TermsError> {
        for multiplier in tier_multipliers.values() {
            check_factor("a tier multiplier", *multiplier)?;
        }
        for campaign in &campaigns {
            check_factor("a campaign multiplier", campaign.multiplier)?;
            let problem = if campaign.name.trim().is_empty() || campaign.name.len() > 128 {
                Some("a campaign needs a name of at most 128 bytes")
            } else if campaign.starts_at_ms >= campaign.ends_at_ms {
                Some("it must start before it ends")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(TermsError::CampaignInvalid {
                    name: campaign.name.clone(),
                    problem: problem.into(),
                });
            }
        }
        let previous_effective_ms = self
            .earn_rules
            .last()
            .map_or(i64::MIN, |previous| previous.effective_from_ms);
        let effective_from_ms =
            self.effective_from(effective_from_ms, previous_effective_ms, now_ms)?;
        if let Some(previous) = self.earn_rules.last()
            && effective_from_ms <= previous.effective_from_ms
        {
            return Err(TermsError::RulesNotAfterPrevious {
                effective_from_ms,
                version: previous.version,
                previous_ms: previous.effective_from_ms,
            });
        }
        let rules = EarnRules {
            version: u32::try_from(self.earn_rules.len() + 1)
                .expect("fewer than 4 billion versions"),
            effective_from_ms,
            tier_multipliers,
            campaigns,
        };
        self.earn_rules.push(rules.clone());
        changes.earn_rules.push(rules.clone());
        Ok(rules)
    }

    /// When a new version of terms or rules starts: as requested, or "from now", meaning
    /// after the last accepted entry and after the previous version. Never at or before the
    /// last accepted entry, which would reprice what is booked.
    fn effective_from(
        &self,
        requested_ms: Option<i64>,
        previous_effective_ms: i64,
        now_ms: i64,
    ) -> Result<i64, TermsError> {
        let effective_from_ms = requested_ms.unwrap_or_else(|| {
            now_ms
                .max(self.last_accepted_at_ms.saturating_add(1))
                .max(previous_effective_ms.saturating_add(1))
        });
        if effective_from_ms <= self.last_accepted_at_ms {
            return Err(TermsError::EffectiveInThePast {
                effective_from_ms,
                last_accepted_at_ms: self.last_accepted_at_ms,
            });
        }
        Ok(effective_from_ms)
    }

    /// Recovery: restores one stored version of the earn rules (in version order).
    pub fn restore_earn_rules(&mut self, rules: EarnRules) {
        self.earn_rules.push(rules);
    }

    /// Recovery: restores one stored version of terms (in version order).
    pub fn restore_terms(&mut self, terms: MerchantTerms) {
        self.terms
            .entry(terms.merchant_id.clone())
            .or_default()
            .push(terms);
    }

    pub fn balance_of(&self, account: AccountId, asset: Asset) -> i64 {
        self.balances.get(&(account, asset)).copied().unwrap_or(0)
    }

    pub fn account_id(&self, key: &AccountKey) -> Option<AccountId> {
        self.accounts.get(key).copied()
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&AccountKey, AccountId)> {
        self.accounts.iter().map(|(key, id)| (key, *id))
    }

    /// Whether the receipt of this merchant transaction is in memory.
    pub fn has_receipt(&self, key: &ReceiptKey) -> bool {
        self.receipts.contains_key(key)
    }

    /// Puts a receipt read from storage back into memory, so `apply` recognises a retry or
    /// a conflicting reuse of an old transaction id.
    pub fn remember_receipt(&mut self, key: ReceiptKey, receipt: Receipt) {
        self.receipts_by_age
            .insert((receipt.occurred_at_ms, receipt.sequence), key.clone());
        self.receipts.insert(key, receipt);
    }

    /// Forgets receipts of transactions that happened before `occurred_before_ms`; returns
    /// how many. They stay in the journal, where the writer finds them when needed.
    pub fn forget_receipts_before(&mut self, occurred_before_ms: i64) -> usize {
        let kept = self.receipts_by_age.split_off(&(occurred_before_ms, 0));
        let forgotten = std::mem::replace(&mut self.receipts_by_age, kept);
        for key in forgotten.values() {
            self.receipts.remove(key);
        }
        forgotten.len()
    }

    /// How many receipts are in memory.
    pub fn receipts_in_memory(&self) -> usize {
        self.receipts.len()
    }

    /// Follows aliases to the member id that owns the wallet.
    pub fn resolve_member(&self, member_id: &MemberId) -> MemberId {
        let mut current = member_id;
        for _ in 0..ALIAS_DEPTH_MAX {
            match self.aliases.get(current) {
                Some(target) => current = target,
                None => break,
            }
        }
        current.clone()
    }

    /// Points in the member's wallet (after aliases).
    pub fn member_points(&self, member_id: &MemberId) -> i64 {
        self.wallet_points(&self.resolve_member(member_id))
    }

    /// Points in the wallet of exactly this member id, without following aliases.
    fn wallet_points(&self, member_id: &MemberId) -> i64 {
        self.account_id(&AccountKey::MemberWallet(member_id.clone()))
            .map(|account| self.balance_of(account, Asset::Points))
            .unwrap_or(0)
    }

    /// Applies one checked submission accepted at `accepted_at_ms`. On success the entry and
    /// its rows are appended to `changes`; on rejection nothing changes at all.
    ///
    /// Idempotency and references are decided by the receipts in memory: a caller that
    /// forgets receipts must first `remember_receipt` every stored one of the transaction ids
    /// it applies and of the transactions they refer to.
    pub fn apply(
        &mut self,
        submission: &Submission,
        accepted_at_ms: i64,
        changes: &mut Changes,
    ) -> Result<Outcome, ApplyError> {
        let receipt_key = (
            submission.merchant_id.clone(),
            submission.merchant_transaction_id.clone(),
        );
        if let Some(receipt) = self.receipts.get(&receipt_key) {
            if receipt.body_hash == submission.body_hash {
                return Ok(Outcome::Duplicate(receipt.clone()));
            }
            return Err(rejected(
                RejectionReason::TransactionIdConflict,
                format!(
                    "merchant {} already used transaction id {} for a different body (entry {})",
                    submission.merchant_id, submission.merchant_transaction_id, receipt.sequence
                ),
            ));
        }
        // Only now that it is known to be new may its age refuse it.
        if let Some(rejection) = &submission.refused_if_new {
            return Err(ApplyError::Rejected(rejection.clone()));
        }
        let member_id = self.resolve_member(&submission.member_id);
        if !self.members.contains_key(&member_id) {
            return Err(rejected(
                RejectionReason::MemberUnknown,
                format!("member {} is not enrolled", submission.member_id),
            ));
        }
        let draft = match submission.kind {
            TransactionKind::Earn | TransactionKind::Burn | TransactionKind::Hold => {
                self.draft_new(submission, member_id, accepted_at_ms)?
            }
            TransactionKind::Reversal => {
                self.draft_reversal(submission, member_id, accepted_at_ms)?
            }
            TransactionKind::Capture | TransactionKind::Void => {
                self.draft_hold_settlement(submission, member_id, accepted_at_ms)?
            }
            TransactionKind::ExchangeIn | TransactionKind::ExchangeOut => {
                self.draft_exchange(submission, member_id, accepted_at_ms)?
            }
        };
        let origin = MerchantOrigin {
            merchant_id: submission.merchant_id.clone(),
            merchant_transaction_id: submission.merchant_transaction_id.clone(),
            store_id: submission.store_id.clone(),
            terminal_id: submission.terminal_id.clone(),
            occurred_at_ms: submission.occurred_at_ms,
            body_hash: submission.body_hash,
        };
        let entry = self.seal(Entry {
            sequence: 0,
            kind: draft.kind,
            accepted_at_ms,
            origin: Some(origin),
            member_id: Some(draft.member_id),
            points: draft.points,
            spend_minor: submission.spend_minor,
            member_points_after: draft.member_points_after,
            memo: String::new(),
            terms_version: draft.terms_version,
            refers_to: draft.refers_to,
            expires_at_ms: draft.expires_at_ms,
            earn_rule_version: draft.earn_rule_version,
            postings: draft.postings,
            previous_hash: [0; 32],
            hash: [0; 32],
        });
        self.commit_entry(entry, Some(changes))
            .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?;
        let receipt =
            self.receipts.get(&receipt_key).cloned().ok_or_else(|| {
                ApplyError::InvariantViolated("receipt missing after commit".into())
            })?;
        Ok(Outcome::Applied(receipt))
    }

    /// An earn, a burn or a hold: priced by the merchant's terms in force now.
    fn draft_new(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let merchant = &submission.merchant_id;
        let wallet_before = self.wallet_points(&member_id);
        let points = submission.points;
        if submission.kind != TransactionKind::Earn {
            check_available(submission, wallet_before)?;
        }
        let terms = self.terms_in_force(merchant, accepted_at_ms)?;
        // An earn with a spend and no points: the points follow from the earn rules.
        let (points, earn_rule_version) =
            if submission.kind == TransactionKind::Earn && submission.points == 0 {
                self.points_for_spend(submission, &member_id, terms, accepted_at_ms)?
            } else {
                (points, None)
            };
        let (kind, wallet_change, counter_account, expires_at_ms) = match submission.kind {
            TransactionKind::Earn => (
                EntryKind::Earn,
                points,
                AccountKey::MerchantIssued(merchant.clone()),
                self.policy.lot_expiry(submission.occurred_at_ms),
            ),
            TransactionKind::Burn => (
                EntryKind::Burn,
                -points,
                AccountKey::MerchantRedeemed(merchant.clone()),
                None,
            ),
            _ => (
                EntryKind::Hold,
                -points,
                AccountKey::MemberHeld(member_id.clone()),
                Some(accepted_at_ms.saturating_add(self.policy.hold_timeout_ms)),
            ),
        };
        let mut postings = vec![
            Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: wallet_change,
            },
            Posting {
                account: counter_account,
                asset: Asset::Points,
                amount: -wallet_change,
            },
        ];
        // A hold moves points only; its prices are locked by the terms version it records and
        // its money moves at capture.
        let side = match kind {
            EntryKind::Earn => Some(Side::Issue),
            EntryKind::Burn => Some(Side::Redeem),
            _ => None,
        };
        if let Some(side) = side {
            let legs = self.money_legs(side, merchant, points, terms)?;
            if kind == EntryKind::Earn {
                self.check_credit(merchant, terms, &legs)?;
            }
            postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
        }
        Ok(Draft {
            earn_rule_version,
            kind,
            member_points_after: checked_wallet(wallet_before, wallet_change)?,
            member_id,
            points,
            terms_version: Some(terms.version),
            refers_to: None,
            expires_at_ms,
            postings,
        })
    }

    /// A merchant's net money position with the operator: negative when it owes. The open
    /// period's settlement and fees, and what finalised periods left payable: a settlement
    /// says what is owed, only money paid in (funding) moves the position up.
    pub fn merchant_position(&self, merchant_id: &MerchantId) -> i64 {
        [
            AccountKey::MerchantSettlement(merchant_id.clone()),
            AccountKey::MerchantFees(merchant_id.clone()),
            AccountKey::MerchantPayable(merchant_id.clone()),
        ]
        .iter()
        .map(|key| self.money_of(key))
        .sum()
    }

    /// An account's balance in the settlement currency (0 for an account never posted to).
    fn money_of(&self, key: &AccountKey) -> i64 {
        self.account_id(key).map_or(0, |account| {
            self.balance_of(account, Asset::Currency(self.currency))
        })
    }

    /// Refuses an earn whose cost would take the merchant's net position below its credit
    /// limit (zero for a prepaid merchant). Only earns are limited: reversals, captures and
    /// the clearing of settlements must always be possible.
    fn check_credit(
        &self,
        merchant_id: &MerchantId,
        terms: &MerchantTerms,
        legs: &[Posting; 5],
    ) -> Result<(), ApplyError> {
        let Some(limit) = terms.credit_limit_minor else {
            return Ok(());
        };
        let settlement = AccountKey::MerchantSettlement(merchant_id.clone());
        let fees = AccountKey::MerchantFees(merchant_id.clone());
        let cost: i64 = -legs
            .iter()
            .filter(|posting| posting.account == settlement || posting.account == fees)
            .map(|posting| posting.amount)
            .sum::<i64>();
        let position = self.merchant_position(merchant_id);
        if position - cost >= -limit {
            return Ok(());
        }
        let currency = self.currency.as_str();
        Err(if limit == 0 {
            rejected(
                RejectionReason::PrepaidBalanceInsufficient,
                format!(
                    "merchant {merchant_id} is prepaid with {} {currency} minor units left; the earn costs {cost}",
                    position.max(0)
                ),
            )
        } else {
            rejected(
                RejectionReason::CreditLimitExceeded,
                format!(
                    "merchant {merchant_id} stands at {position} {currency} minor units against a credit limit of {limit}; the earn costs {cost} and would pass it until the merchant settles"
                ),
            )
        })
    }

    /// Books money a merchant paid in: its position rises by `amount_minor`, the operator's
    /// cash account records the receipt. Returns the entry's sequence.
    pub fn fund_merchant(
        &mut self,
        merchant_id: &MerchantId,
        amount_minor: i64,
        reference: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        self.book_cash(
            EntryKind::Funding,
            AccountKey::MerchantSettlement(merchant_id.clone()),
            amount_minor,
            format!("funding of merchant {merchant_id}: {reference}"),
            at_ms,
            changes,
        )
    }

    /// What finalised periods left payable to a merchant (negative: what it owes).
    pub fn merchant_payable(&self, merchant_id: &MerchantId) -> i64 {
        self.money_of(&AccountKey::MerchantPayable(merchant_id.clone()))
    }

    /// Books money the operator paid a merchant: its payable falls by `amount_minor`, the
    /// operator's cash account records the payment. The caller checks the amount against
    /// the payable. Returns the entry's sequence.
    pub fn pay_out(
        &mut self,
        merchant_id: &MerchantId,
        amount_minor: i64,
        reference: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        self.book_cash(
            EntryKind::Payout,
            AccountKey::MerchantPayable(merchant_id.clone()),
            -amount_minor,
            format!("payout to merchant {merchant_id}: {reference}"),
            at_ms,
            changes,
        )
    }

    /// Money crossing the ledger's edge: `amount_minor` to `account`, the opposite to the
    /// operator's cash account.
    fn book_cash(
        &mut self,
        kind: EntryKind,
        account: AccountKey,
        amount_minor: i64,
        memo: String,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        let money = Asset::Currency(self.currency);
        let entry = OperatorEntry {
            kind,
            member_id: None,
            points: 0,
            member_points_after: 0,
            memo,
            refers_to: None,
            postings: vec![
                Posting {
                    account: AccountKey::OperatorCash,
                    asset: money,
                    amount: -amount_minor,
                },
                Posting {
                    account,
                    asset: money,
                    amount: amount_minor,
                },
            ],
        };
        self.commit_operator_entry(entry, at_ms, changes)
            .map_err(|error| ApplyError::InvariantViolated(error.to_string()))
    }

    /// Books the closing entry of a finalised period (see `settlement`) and records the
    /// period as finalised. Returns what was recorded.
    pub fn book_settlement(
        &mut self,
        settlement: Settlement,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<FinalisedPeriod, ApplyError> {
        let postings = closing_postings(&settlement, self.currency);
        let closing_sequence = if postings.is_empty() {
            None
        } else {
            let entry = OperatorEntry {
                kind: EntryKind::Settlement,
                member_id: None,
                points: 0,
                member_points_after: 0,
                memo: format!("settlement of period {}", settlement.period),
                refers_to: None,
                postings,
            };
            Some(
                self.commit_operator_entry(entry, at_ms, changes)
                    .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?,
            )
        };
        let finalised = FinalisedPeriod {
            settlement,
            closing_sequence,
            finalised_at_ms: at_ms,
        };
        changes.settlements.push(finalised.clone());
        Ok(finalised)
    }

    /// The points an earn by spend earns: spend × the merchant's base rate × the earn rules'
    /// multiplier for the member's tier and the campaigns running when it happened, rounded
    /// down; and the rules' version, if any rules are in force.
    fn points_for_spend(
        &self,
        submission: &Submission,
        member_id: &MemberId,
        terms: &MerchantTerms,
        accepted_at_ms: i64,
    ) -> Result<(i64, Option<u32>), ApplyError> {
        let merchant = &submission.merchant_id;
        let spend = submission.spend_minor.unwrap_or(0);
        let base = terms.earn_points_per_minor.ok_or_else(|| {
            rejected(
                RejectionReason::EarnRuleMissing,
                format!(
                    "merchant {merchant} has no base earn rate in its terms; send the points to award"
                ),
            )
        })?;
        let rules = self.earn_rules_at(accepted_at_ms);
        let multiplier = rules.map_or(Decimal::ONE, |rules| {
            rules.multiplier(
                self.member_tiers.get(member_id).map(String::as_str),
                merchant,
                submission.occurred_at_ms,
            )
        });
        match points_for_spend(spend, base, multiplier) {
            Some(points) if points > self.policy.points_per_transaction_max => {
                Err(self.above_limit(points))
            }
            Some(points) if points > 0 => Ok((points, rules.map(|rules| rules.version))),
            _ => Err(rejected(
                RejectionReason::SpendEarnsNoPoints,
                format!(
                    "a spend of {spend} minor units earns no whole point at {base} points per minor unit times {multiplier}"
                ),
            )),
        }
    }

    /// An exchange between the merchant's legacy unit and alliance points at the rate in its
    /// terms. Exchanging in, the member's units become points the merchant issues (a lot of
    /// its issue, its issue price paid into the float); exchanging out, points go back to the
    /// merchant (its redeem price paid to it) for its units. Both assets pass through the
    /// trading account of the unit. Rounding: the side the member receives is rounded down to
    /// whole units; of what the member gives, the part that bought nothing whole goes to the
    /// rounding account, so each asset balances in integers.
    fn draft_exchange(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let merchant = &submission.merchant_id;
        let wallet_before = self.wallet_points(&member_id);
        let outgoing = submission.kind == TransactionKind::ExchangeOut;
        if outgoing {
            check_available(submission, wallet_before)?;
        }
        let terms = self.terms_in_force(merchant, accepted_at_ms)?;
        let (unit, rate) = terms.exchange.ok_or_else(|| {
            rejected(
                RejectionReason::ExchangeRateMissing,
                format!("merchant {merchant} has no legacy unit and exchange rate in its terms"),
            )
        })?;
        let whole = |value: Option<Decimal>| value.and_then(|value| value.to_i64());
        let overflow = || ApplyError::InvariantViolated("exchange overflow".into());
        let legacy = Asset::Legacy(unit);
        let trading = AccountKey::OperatorTrading(unit);
        let wallet = AccountKey::MemberWallet(member_id.clone());
        let issued = AccountKey::MerchantIssued(merchant.clone());
        let posting = |account: &AccountKey, asset: Asset, amount: i64| Posting {
            account: account.clone(),
            asset,
            amount,
        };
        let (points, units, given_used, given_left) = if outgoing {
            let points = submission.points;
            let units = whole(Decimal::from(points).checked_div(rate).map(|v| v.floor()))
                .ok_or_else(overflow)?;
            let points_used = whole(Decimal::from(units).checked_mul(rate).map(|v| v.ceil()))
                .ok_or_else(overflow)?
                .min(points);
            (points, units, points_used, points - points_used)
        } else {
            let units = submission.legacy_units;
            let points = whole(Decimal::from(units).checked_mul(rate).map(|v| v.floor()))
                .ok_or_else(overflow)?;
            let units_used = whole(Decimal::from(points).checked_div(rate).map(|v| v.ceil()))
                .ok_or_else(overflow)?
                .min(units);
            (points, units, units_used, units - units_used)
        };
        if !outgoing && points > self.policy.points_per_transaction_max {
            return Err(self.above_limit(points));
        }
        if points == 0 || units == 0 {
            return Err(rejected(
                RejectionReason::ExchangeTooSmall,
                format!(
                    "at {rate} points per {} unit, {} converts to nothing whole",
                    unit.as_str(),
                    if outgoing {
                        format!("{points} points")
                    } else {
                        format!("{units} units")
                    }
                ),
            ));
        }
        let mut postings = if outgoing {
            vec![
                posting(&wallet, Asset::Points, -points),
                posting(&trading, Asset::Points, given_used),
                posting(&AccountKey::OperatorRounding, Asset::Points, given_left),
                posting(&trading, legacy, -units),
                posting(&issued, legacy, units),
            ]
        } else {
            vec![
                posting(&issued, legacy, -units),
                posting(&trading, legacy, given_used),
                posting(&AccountKey::OperatorRounding, legacy, given_left),
                posting(&trading, Asset::Points, -points),
                posting(&wallet, Asset::Points, points),
            ]
        };
        postings.retain(|posting| posting.amount != 0);
        // The money of the points: issued in by the merchant, or redeemed by it going out.
        let (side, priced_points) = if outgoing {
            (Side::Redeem, given_used)
        } else {
            (Side::Issue, points)
        };
        let legs = self.money_legs(side, merchant, priced_points, terms)?;
        if !outgoing {
            self.check_credit(merchant, terms, &legs)?;
        }
        postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
        Ok(Draft {
            earn_rule_version: None,
            kind: if outgoing {
                EntryKind::ExchangeOut
            } else {
                EntryKind::ExchangeIn
            },
            member_points_after: checked_wallet(
                wallet_before,
                if outgoing { -points } else { points },
            )?,
            member_id,
            points,
            terms_version: Some(terms.version),
            refers_to: None,
            expires_at_ms: if outgoing {
                None
            } else {
                self.policy.lot_expiry(submission.occurred_at_ms)
            },
            postings,
        })
    }

    fn above_limit(&self, points: i64) -> ApplyError {
        rejected(
            RejectionReason::ComputedPointsAboveLimit,
            format!(
                "the transaction would award {points} points, above the per-transaction limit of {}",
                self.policy.points_per_transaction_max
            ),
        )
    }

    /// The terms that price a new transaction of `merchant_id` accepted at `at_ms`.
    fn terms_in_force(
        &self,
        merchant_id: &MerchantId,
        at_ms: i64,
    ) -> Result<&MerchantTerms, ApplyError> {
        self.terms_at(merchant_id, at_ms).ok_or_else(|| {
            rejected(
                RejectionReason::TermsMissing,
                format!(
                    "merchant {merchant_id} has no terms in force, so its points have no price"
                ),
            )
        })
    }

    /// A version of terms recorded on a booked entry or lot; terms are insert-only, so a
    /// missing one is a broken invariant.
    fn recorded_terms(
        &self,
        merchant_id: &MerchantId,
        version: Option<u32>,
    ) -> Result<&MerchantTerms, ApplyError> {
        version
            .and_then(|version| {
                self.terms
                    .get(merchant_id)?
                    .get((version as usize).checked_sub(1)?)
            })
            .ok_or_else(|| {
                ApplyError::InvariantViolated(format!(
                    "terms version {version:?} of merchant {merchant_id} is recorded but missing"
                ))
            })
    }

    /// The receipt of the transaction a reversal, capture or void names.
    fn referred(&self, submission: &Submission) -> Result<&Receipt, ApplyError> {
        let key = submission.refers_to.as_ref().ok_or_else(|| {
            ApplyError::InvariantViolated("a checked reference submission has no reference".into())
        })?;
        self.receipts.get(key).ok_or_else(|| {
            rejected(
                RejectionReason::ReferenceUnknown,
                format!("merchant {} has no transaction {}", key.0, key.1),
            )
        })
    }

    fn draft_reversal(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let referred = self.referred(submission)?;
        let sequence = referred.sequence;
        let original = self.reversibles.get(&sequence).ok_or_else(|| {
            rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "transaction {} (entry {sequence}) is a {}; only earns, burns and captures can be reversed",
                    submission.refers_to.as_ref().map_or("", |key| key.1.as_str()),
                    referred.kind.code()
                ),
            )
        })?;
        if self.resolve_member(&original.member_id) != member_id {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "entry {sequence} belongs to member {}, not {}",
                    original.member_id, submission.member_id
                ),
            ));
        }
        if original.merchant_id != submission.merchant_id
            && !self
                .terms_at(&submission.merchant_id, accepted_at_ms)
                .is_some_and(|terms| terms.cross_merchant_reversals)
        {
            return Err(rejected(
                RejectionReason::ReversalNotPermitted,
                format!(
                    "merchant {} may not reverse merchant {}'s transactions: its terms do not allow returns of other merchants' sales",
                    submission.merchant_id, original.merchant_id
                ),
            ));
        }
        let remaining = original.points - original.reversed;
        if submission.points > remaining {
            return Err(rejected(
                RejectionReason::ReversalExceedsRemaining,
                format!(
                    "entry {sequence} has {remaining} of its {} points left to reverse, the reversal asks for {}",
                    original.points, submission.points
                ),
            ));
        }
        let terms = self.recorded_terms(&original.merchant_id, Some(original.terms_version))?;
        let (kind, wallet_change, counter_account, side) = match original.kind {
            EntryKind::Earn => (
                EntryKind::EarnReversal,
                -submission.points,
                AccountKey::MerchantIssued(original.merchant_id.clone()),
                Side::Issue,
            ),
            _ => (
                EntryKind::BurnReversal,
                submission.points,
                AccountKey::MerchantRedeemed(original.merchant_id.clone()),
                Side::Redeem,
            ),
        };
        let mut postings = vec![
            Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: wallet_change,
            },
            Posting {
                account: counter_account,
                asset: Asset::Points,
                amount: -wallet_change,
            },
        ];
        // Money goes back at the original's prices. A reversal moves the money from that of
        // the points un-reversed before it to that of the points un-reversed after it, so the
        // original and its reversals always leave exactly the money of the points that remain
        // (to the last minor unit, by the rounding rule), and nothing once all are reversed.
        let before = self.money_legs(side, &original.merchant_id, remaining, terms)?;
        let after = self.money_legs(
            side,
            &original.merchant_id,
            remaining - submission.points,
            terms,
        )?;
        for (before, after) in before.into_iter().zip(after) {
            let amount = after.amount - before.amount;
            if amount != 0 {
                postings.push(Posting { amount, ..before });
            }
        }
        let wallet_before = self.wallet_points(&member_id);
        Ok(Draft {
            earn_rule_version: None,
            kind,
            member_points_after: checked_wallet(wallet_before, wallet_change)?,
            member_id,
            points: submission.points,
            terms_version: Some(original.terms_version),
            refers_to: Some(sequence),
            expires_at_ms: None,
            postings,
        })
    }

    fn draft_hold_settlement(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let referred = self.referred(submission)?;
        let sequence = referred.sequence;
        let referred_merchant = submission.refers_to.as_ref().map(|key| &key.0);
        if referred.kind != EntryKind::Hold || referred_merchant != Some(&submission.merchant_id) {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "entry {sequence} is a {} of merchant {}; a capture or void acts on a hold the submitting merchant placed",
                    referred.kind.code(),
                    referred_merchant.map_or("", |merchant| merchant.as_str())
                ),
            ));
        }
        let hold = self
            .holds
            .get(&sequence)
            .filter(|hold| hold.expires_at_ms > accepted_at_ms)
            .ok_or_else(|| {
                rejected(
                    RejectionReason::HoldNotOpen,
                    format!("the hold of entry {sequence} was already captured, voided or expired"),
                )
            })?;
        if self.resolve_member(&hold.member_id) != member_id {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "the hold of entry {sequence} is for member {}, not {}",
                    hold.member_id, submission.member_id
                ),
            ));
        }
        let captured = if submission.kind == TransactionKind::Capture {
            if submission.points > hold.points {
                return Err(rejected(
                    RejectionReason::CaptureExceedsHold,
                    format!(
                        "the hold of entry {sequence} holds {} points, the capture asks for {}",
                        hold.points, submission.points
                    ),
                ));
            }
            submission.points
        } else {
            0
        };
        let released = hold.points - captured;
        let mut postings = vec![Posting {
            account: AccountKey::MemberHeld(hold.member_id.clone()),
            asset: Asset::Points,
            amount: -hold.points,
        }];
        if released != 0 {
            postings.push(Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: released,
            });
        }
        let (kind, points, terms_version) = if submission.kind == TransactionKind::Capture {
            postings.push(Posting {
                account: AccountKey::MerchantRedeemed(hold.merchant_id.clone()),
                asset: Asset::Points,
                amount: captured,
            });
            // Captured at the prices locked when the hold was placed.
            let terms = self.recorded_terms(&hold.merchant_id, Some(hold.terms_version))?;
            let legs = self.money_legs(Side::Redeem, &hold.merchant_id, captured, terms)?;
            postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
            (EntryKind::Capture, captured, Some(hold.terms_version))
        } else {
            (EntryKind::Void, hold.points, None)
        };
        let wallet_before = self.wallet_points(&member_id);
        Ok(Draft {
            earn_rule_version: None,
            kind,
            member_points_after: checked_wallet(wallet_before, released)?,
            member_id,
            points,
            terms_version,
            refers_to: Some(sequence),
            expires_at_ms: None,
            postings,
        })
    }

    /// The money of `points` issued or redeemed by `merchant_id` at `terms`: the price leg
    /// and the clearing fee, rounded by `terms::money_leg`, as five postings in a fixed order
    /// (price payer, price payee, fee payer, fees, rounding) whose amounts may be zero.
    fn money_legs(
        &self,
        side: Side,
        merchant_id: &MerchantId,
        points: i64,
        terms: &MerchantTerms,
    ) -> Result<[Posting; 5], ApplyError> {
        let settlement = AccountKey::MerchantSettlement(merchant_id.clone());
        // The issuer pays the operator's float for points it issues; the float pays the
        // redeemer for points redeemed there.
        let (price, payer, payee) = match side {
            Side::Redeem => (
                terms.redeem_price_minor_per_point,
                AccountKey::OperatorFloat,
                settlement.clone(),
            ),
            Side::Issue => (
                terms.issue_price_minor_per_point,
                settlement.clone(),
                AccountKey::OperatorFloat,
            ),
        };
        let overflow = || ApplyError::InvariantViolated("money leg overflow".into());
        let (charged, paid) = money_leg(points, price).ok_or_else(overflow)?;
        // The clearing fee, charged to the merchant on every point it issues or redeems, by
        // the same rounding rule.
        let (fee_charged, fee_paid) =
            money_leg(points, terms.fee_minor_per_point).ok_or_else(overflow)?;
        let money = Asset::Currency(self.currency);
        Ok([
            (payer, -charged),
            (payee, paid),
            (AccountKey::MerchantFees(merchant_id.clone()), -fee_charged),
            (AccountKey::OperatorFees, fee_paid),
            (
                AccountKey::OperatorRounding,
                (charged - paid) + (fee_charged - fee_paid),
            ),
        ]
        .map(|(account, amount)| Posting {
            account,
            asset: money,
            amount,
        }))
    }

    /// Releases every hold whose deadline has passed at `at_ms`, one operator entry each.
    pub fn expire_holds(
        &mut self,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<ExpirySummary, ApplyError> {
        let mut summary = ExpirySummary::default();
        let due: Vec<(i64, u64)> = self
            .hold_deadlines
            .range(..=(at_ms, u64::MAX))
            .copied()
            .collect();
        for (_, sequence) in due {
            let Some(hold) = self.holds.get(&sequence) else {
                continue;
            };
            let member_id = self.resolve_member(&hold.member_id);
            let member_points_after = checked_wallet(self.wallet_points(&member_id), hold.points)?;
            let entry = OperatorEntry {
                kind: EntryKind::HoldExpiry,
                member_id: Some(member_id.clone()),
                points: hold.points,
                member_points_after,
                memo: format!(
                    "hold of merchant {} expired at {} ms, neither captured nor voided",
                    hold.merchant_id, hold.expires_at_ms
                ),
                refers_to: Some(sequence),
                postings: vec![
                    Posting {
                        account: AccountKey::MemberHeld(hold.member_id.clone()),
                        asset: Asset::Points,
                        amount: -hold.points,
                    },
                    Posting {
                        account: AccountKey::MemberWallet(member_id),
                        asset: Asset::Points,
                        amount: hold.points,
                    },
                ],
            };
            summary.entries += 1;
            summary.points += entry.points;
            self.commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?;
        }
        Ok(summary)
    }

    /// The expiry run: books every lot expired at `at_ms` to breakage, one operator entry per
    /// member, the points to the issuer's breakage account and the float money held against
    /// them (at the price the issuer paid) to the same account. Running it again books
    /// nothing, since expired lots are gone from the wallets.
    pub fn expire_lots(
        &mut self,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<ExpirySummary, ApplyError> {
        let mut summary = ExpirySummary::default();
        let later = self.lot_expiries.split_off(&at_ms.saturating_add(1));
        let due = std::mem::replace(&mut self.lot_expiries, later);
        let members: BTreeSet<MemberId> = due.into_values().flatten().collect();
        for member_id in members {
            let Some(wallet) = self.members.get(&member_id) else {
                continue;
            };
            let mut points_by_issuer: BTreeMap<MerchantId, i64> = BTreeMap::new();
            let mut points_by_price: BTreeMap<(MerchantId, Option<u32>), i64> = BTreeMap::new();
            for lot in &wallet.lots {
                if lot.expires_at_ms.is_some_and(|expires| expires <= at_ms) {
                    *points_by_issuer.entry(lot.issuer.clone()).or_default() += lot.points;
                    *points_by_price
                        .entry((lot.issuer.clone(), lot.issue_terms_version))
                        .or_default() += lot.points;
                }
            }
            let points: i64 = points_by_issuer.values().sum();
            if points == 0 {
                continue;
            }
            let mut postings = vec![Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: -points,
            }];
            for (issuer, issued) in &points_by_issuer {
                postings.push(Posting {
                    account: AccountKey::MerchantBreakage(issuer.clone()),
                    asset: Asset::Points,
                    amount: *issued,
                });
            }
            let mut money: BTreeMap<AccountKey, i64> = BTreeMap::new();
            for ((issuer, version), expired) in points_by_price {
                let terms = self.recorded_terms(&issuer, version)?;
                let (charged, paid) = money_leg(expired, terms.issue_price_minor_per_point)
                    .ok_or_else(|| ApplyError::InvariantViolated("money leg overflow".into()))?;
                *money.entry(AccountKey::OperatorFloat).or_default() -= charged;
                *money
                    .entry(AccountKey::MerchantBreakage(issuer))
                    .or_default() += paid;
                *money.entry(AccountKey::OperatorRounding).or_default() += charged - paid;
                summary.money_minor += paid;
            }
            let currency = Asset::Currency(self.currency);
            postings.extend(money.into_iter().filter(|(_, amount)| *amount != 0).map(
                |(account, amount)| Posting {
                    account,
                    asset: currency,
                    amount,
                },
            ));
            let member_points_after = checked_wallet(self.wallet_points(&member_id), -points)?;
            let entry = OperatorEntry {
                kind: EntryKind::Expiry,
                member_id: Some(member_id),
                points,
                member_points_after,
                memo: format!("points expired by {at_ms} ms"),
                refers_to: None,
                postings,
            };
            summary.entries += 1;
            summary.points += points;
            self.commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?;
        }
        Ok(summary)
    }

    /// Enrolls a member. Enrolling an enrolled member changes nothing and returns false.
    pub fn enroll_member(
        &mut self,
        member_id: MemberId,
        tier: Option<String>,
        enrolled_at_ms: i64,
        changes: &mut Changes,
    ) -> Result<bool, MemberError> {
        if self.members.contains_key(&member_id) {
            return Ok(false);
        }
        if self.aliases.contains_key(&member_id) {
            return Err(MemberError::AlreadyAliased(member_id));
        }
        self.members.insert(member_id.clone(), Wallet::default());
        if let Some(tier) = &tier {
            self.member_tiers.insert(member_id.clone(), tier.clone());
        }
        changes.members.push(MemberRecord {
            member_id,
            tier,
            enrolled_at_ms,
        });
        Ok(true)
    }

    /// Makes `alias` stand for `target` from now on. When `alias` is an enrolled member with
    /// points, a member-merge entry moves its wallet and lots (issuer and age kept) to `target`.
    pub fn alias_member(
        &mut self,
        alias: MemberId,
        target: MemberId,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<Option<Receipt>, MemberError> {
        if self.aliases.contains_key(&alias) {
            return Err(MemberError::AlreadyAliased(alias));
        }
        let target = self.resolve_member(&target);
        if !self.members.contains_key(&target) {
            return Err(MemberError::Unknown(target));
        }
        if alias == target {
            return Err(MemberError::SelfAlias);
        }
        let moved_points = self.wallet_points(&alias);
        if moved_points < 0 {
            return Err(MemberError::InDebt {
                member_id: alias,
                points: -moved_points,
            });
        }
        let mut receipt = None;
        if moved_points > 0 {
            let member_points_after = self.wallet_points(&target) + moved_points;
            let entry = OperatorEntry {
                kind: EntryKind::MemberMerge,
                member_id: Some(target.clone()),
                points: moved_points,
                member_points_after,
                memo: format!("member {alias} merged into {target}"),
                refers_to: None,
                postings: vec![
                    Posting {
                        account: AccountKey::MemberWallet(alias.clone()),
                        asset: Asset::Points,
                        amount: -moved_points,
                    },
                    Posting {
                        account: AccountKey::MemberWallet(target.clone()),
                        asset: Asset::Points,
                        amount: moved_points,
                    },
                ],
            };
            let sequence = self
                .commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| MemberError::InvariantViolated(error.to_string()))?;
            receipt = Some(Receipt {
                sequence,
                occurred_at_ms: at_ms,
                kind: EntryKind::MemberMerge,
                accepted_at_ms: at_ms,
                body_hash: [0; 32],
                member_id: target.clone(),
                points: moved_points,
                member_points_after,
            });
        }
        self.members.remove(&alias);
        self.aliases.insert(alias.clone(), target.clone());
        changes.aliases.push(AliasRecord {
            alias,
            target,
            created_at_ms: at_ms,
        });
        Ok(receipt)
    }

    /// Recovery: restores an enrolled member and its tier.
    pub fn restore_member(&mut self, member_id: MemberId, tier: Option<String>) {
        if let Some(tier) = tier {
            self.member_tiers.insert(member_id.clone(), tier);
        }
        self.members.entry(member_id).or_default();
    }

    /// Recovery: restores an alias; aliases are restored after members and before entries.
    pub fn restore_alias(&mut self, alias: MemberId, target: MemberId) {
        self.aliases.insert(alias, target);
    }

    /// Recovery: restores an account handle.
    pub fn restore_account(&mut self, id: AccountId, key: AccountKey) {
        self.accounts.insert(key, id);
    }

    /// Recovery: replays one committed entry, checking its link, hash and balance.
    pub fn replay(&mut self, entry: Entry) -> Result<(), ReplayError> {
        self.commit_entry(entry, None)
    }

    /// Members that were merged away keep their lots until the merge entry replays; after
    /// recovery they must be gone from the enrolled set.
    pub fn finish_restore(&mut self) {
        let aliased: Vec<MemberId> = self.aliases.keys().cloned().collect();
        for alias in aliased {
            self.members.remove(&alias);
        }
    }

    /// Checks that each asset's balances sum to zero across all accounts, that every
    /// member's lots less its debt make its wallet balance, that only a wallet in debt is
    /// negative, and that open holds make the held balances.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut totals: HashMap<Asset, i128> = HashMap::new();
        for (&(_, asset), &balance) in &self.balances {
            *totals.entry(asset).or_default() += i128::from(balance);
        }
        for (asset, total) in totals {
            if total != 0 {
                return Err(format!("{} balances sum to {total}, not 0", asset.code()));
            }
        }
        for (member_id, wallet) in &self.members {
            let balance = self.wallet_points(member_id);
            if wallet.balance() != balance {
                return Err(format!(
                    "member {member_id}: lots less debt make {} points, the wallet {balance}",
                    wallet.balance()
                ));
            }
            if wallet.lots.iter().any(|lot| lot.points <= 0) {
                return Err(format!("member {member_id} has an empty or negative lot"));
            }
            if wallet.debt < 0 || (wallet.debt > 0 && !wallet.lots.is_empty()) {
                return Err(format!(
                    "member {member_id} has a debt of {} beside lots",
                    wallet.debt
                ));
            }
        }
        let mut held: HashMap<&MemberId, i64> = HashMap::new();
        for hold in self.holds.values() {
            *held.entry(&hold.member_id).or_default() += hold.points;
            if hold.taken.iter().map(|lot| lot.points).sum::<i64>() != hold.points {
                return Err(format!("a hold of member {} lost its lots", hold.member_id));
            }
        }
        for (key, &account) in &self.accounts {
            if let AccountKey::MemberHeld(member_id) = key {
                let expected = held.get(member_id).copied().unwrap_or(0);
                let balance = self.balance_of(account, Asset::Points);
                if balance != expected {
                    return Err(format!(
                        "member {member_id}: open holds hold {expected} points, the held account {balance}"
                    ));
                }
            }
        }
        for (sequence, original) in &self.reversibles {
            if original.reversed < 0 || original.reversed > original.points {
                return Err(format!(
                    "entry {sequence}: {} of {} points reversed",
                    original.reversed, original.points
                ));
            }
        }
        Ok(())
    }

    /// Outstanding points per issuer, from lot attribution (held points included).
    pub fn outstanding_by_issuer(&self) -> HashMap<MerchantId, i64> {
        let mut outstanding = HashMap::new();
        let held = self.holds.values().flat_map(|hold| hold.taken.iter());
        for lot in self
            .members
            .values()
            .flat_map(|wallet| wallet.lots.iter())
            .chain(held)
        {
            *outstanding.entry(lot.issuer.clone()).or_insert(0) += lot.points;
        }
        outstanding
    }

    /// Seals and commits an operator entry accepted at `at_ms`; returns its sequence.
    fn commit_operator_entry(
        &mut self,
        entry: OperatorEntry,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ReplayError> {
        let entry = self.seal(Entry {
            sequence: 0,
            kind: entry.kind,
            accepted_at_ms: at_ms,
            origin: None,
            member_id: entry.member_id,
            points: entry.points,
            spend_minor: None,
            member_points_after: entry.member_points_after,
            memo: entry.memo,
            terms_version: None,
            refers_to: entry.refers_to,
            expires_at_ms: None,
            earn_rule_version: None,
            postings: entry.postings,
            previous_hash: [0; 32],
            hash: [0; 32],
        });
        let sequence = entry.sequence;
        self.commit_entry(entry, Some(changes))?;
        Ok(sequence)
    }

    /// Gives an entry its sequence, link and hash at the current head.
    fn seal(&self, mut entry: Entry) -> Entry {
        entry.sequence = self.head.sequence + 1;
        entry.previous_hash = self.head.hash;
        entry.hash = entry_hash(&entry);
        entry
    }

    fn account_for(
        &mut self,
        key: &AccountKey,
        changes: Option<&mut Changes>,
    ) -> Result<AccountId, ReplayError> {
        if let Some(id) = self.accounts.get(key) {
            return Ok(*id);
        }
        match changes {
            Some(changes) => {
                let id = AccountId(self.accounts.len() as u64 + 1);
                self.restore_account(id, key.clone());
                changes.accounts.push((id, key.clone()));
                Ok(id)
            }
            None => Err(ReplayError::AccountMissing(key.to_string())),
        }
    }

    /// The single path by which an entry enters the state, live or on replay.
    fn commit_entry(
        &mut self,
        entry: Entry,
        mut changes: Option<&mut Changes>,
    ) -> Result<(), ReplayError> {
        let expected = self.head.sequence + 1;
        if entry.sequence != expected {
            return Err(ChainError::SequenceGap {
                expected,
                found: entry.sequence,
            }
            .into());
        }
        if entry.previous_hash != self.head.hash {
            return Err(ChainError::BrokenLink {
                sequence: entry.sequence,
            }
            .into());
        }
        if entry_hash(&entry) != entry.hash {
            return Err(ChainError::HashMismatch {
                sequence: entry.sequence,
            }
            .into());
        }
        entry.check_balanced()?;

        // Resolve every account before changing anything, so a failure leaves no trace.
        let mut account_ids = Vec::with_capacity(entry.postings.len());
        for posting in &entry.postings {
            account_ids.push(self.account_for(&posting.account, changes.as_deref_mut())?);
        }
        // An entry may post to one account more than once (a merchant's money leg and its
        // fee), so the new balances accumulate over the entry's postings.
        let mut new_balances: Vec<((AccountId, Asset), i64)> =
            Vec::with_capacity(entry.postings.len());
        for (posting, &account) in entry.postings.iter().zip(&account_ids) {
            let key = (account, posting.asset);
            let before = match new_balances.iter().find(|(existing, _)| *existing == key) {
                Some((_, balance)) => *balance,
                None => self.balance_of(account, posting.asset),
            };
            let balance = before
                .checked_add(posting.amount)
                .ok_or(ReplayError::Overflow(entry.sequence))?;
            match new_balances
                .iter_mut()
                .find(|(existing, _)| *existing == key)
            {
                Some((_, slot)) => *slot = balance,
                None => new_balances.push((key, balance)),
            }
        }

        // The entry's effect on lots, holds and reversible originals: derived from the entry
        // and the state alone, so replay repeats exactly what the live path did.
        let mut lots = Vec::new();
        let mut consumptions = Vec::new();
        let sequence = entry.sequence;
        let shape = || ReplayError::Shape(sequence);
        // Every entry but funding moves one member's wallet.
        let member = || entry.member_id.as_ref().ok_or_else(shape);
        match entry.kind {
            EntryKind::Earn | EntryKind::ExchangeIn => {
                let origin = entry.origin.as_ref().ok_or_else(shape)?;
                let lot = Lot {
                    lot_id: LotId {
                        entry_sequence: sequence,
                        index: 0,
                    },
                    issuer: origin.merchant_id.clone(),
                    earned_at_ms: origin.occurred_at_ms,
                    expires_at_ms: entry.expires_at_ms,
                    issue_terms_version: entry.terms_version,
                    points: entry.points,
                };
                self.put_lots(member()?, vec![lot], sequence, &mut lots, &mut consumptions);
                // An exchange is final: a mistaken one is undone by the opposite exchange.
                if entry.kind == EntryKind::Earn {
                    self.reversibles.insert(
                        sequence,
                        Reversible {
                            kind: EntryKind::Earn,
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            reversed: 0,
                            terms_version: entry.terms_version.ok_or_else(shape)?,
                            taken: Vec::new(),
                        },
                    );
                }
            }
            EntryKind::ExchangeOut => {
                let taken =
                    self.take_lots(member()?, entry.points, sequence, None, &mut consumptions)?;
                if taken.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
            }
            EntryKind::Burn | EntryKind::Hold => {
                let origin = entry.origin.as_ref().ok_or_else(shape)?;
                let terms_version = entry.terms_version.ok_or_else(shape)?;
                // Held points stay unspent: a hold takes them out of the wallet without
                // consuming their lots; the capture consumes what it redeems.
                let mut held_consumptions = Vec::new();
                let taken = self.take_lots(
                    member()?,
                    entry.points,
                    sequence,
                    None,
                    if entry.kind == EntryKind::Burn {
                        &mut consumptions
                    } else {
                        &mut held_consumptions
                    },
                )?;
                if taken.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
                if entry.kind == EntryKind::Burn {
                    self.reversibles.insert(
                        sequence,
                        Reversible {
                            kind: EntryKind::Burn,
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            reversed: 0,
                            terms_version,
                            taken,
                        },
                    );
                } else {
                    let expires_at_ms = entry.expires_at_ms.ok_or_else(shape)?;
                    self.hold_deadlines.insert((expires_at_ms, sequence));
                    self.holds.insert(
                        sequence,
                        OpenHold {
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            terms_version,
                            expires_at_ms,
                            taken,
                        },
                    );
                }
            }
            EntryKind::Capture | EntryKind::Void | EntryKind::HoldExpiry => {
                let hold_sequence = entry.refers_to.ok_or_else(shape)?;
                let hold = self.holds.remove(&hold_sequence).ok_or_else(shape)?;
                self.hold_deadlines
                    .remove(&(hold.expires_at_ms, hold_sequence));
                let captured = if entry.kind == EntryKind::Capture {
                    entry.points
                } else {
                    0
                };
                if captured > hold.points
                    || (entry.kind != EntryKind::Capture && entry.points != hold.points)
                {
                    return Err(shape());
                }
                let (captured_lots, released) = Wallet::split(hold.taken, captured);
                consumptions.extend(captured_lots.iter().map(|lot| LotConsumption {
                    entry_sequence: sequence,
                    lot_id: lot.lot_id,
                    points: lot.points,
                    repaid: false,
                }));
                self.restore_lots(member()?, released, sequence, &mut consumptions);
                if entry.kind == EntryKind::Capture {
                    self.reversibles.insert(
                        sequence,
                        Reversible {
                            kind: EntryKind::Capture,
                            merchant_id: hold.merchant_id,
                            member_id: member()?.clone(),
                            points: captured,
                            reversed: 0,
                            terms_version: hold.terms_version,
                            taken: captured_lots,
                        },
                    );
                }
            }
            EntryKind::EarnReversal | EntryKind::BurnReversal => {
                let original_sequence = entry.refers_to.ok_or_else(shape)?;
                let original = self
                    .reversibles
                    .get_mut(&original_sequence)
                    .ok_or_else(shape)?;
                let reversing_earn = entry.kind == EntryKind::EarnReversal;
                if (original.kind == EntryKind::Earn) != reversing_earn
                    || original.reversed + entry.points > original.points
                {
                    return Err(shape());
                }
                let already = original.reversed;
                original.reversed += entry.points;
                if reversing_earn {
                    // The earn's own lot first, then the member's other lots; what the member
                    // already spent becomes a debt (see `lots`).
                    let taken = self.take_lots(
                        member()?,
                        entry.points,
                        sequence,
                        Some(LotId {
                            entry_sequence: original_sequence,
                            index: 0,
                        }),
                        &mut consumptions,
                    )?;
                    let short = entry.points - taken.iter().map(|lot| lot.points).sum::<i64>();
                    self.members.get_mut(member()?).ok_or_else(shape)?.debt += short;
                } else {
                    // The burn's pieces are given back last taken first, as they left.
                    let (_, not_yet_reversed_tail) = Wallet::split(
                        original.taken.clone(),
                        original.points - already - entry.points,
                    );
                    let (given_back, _) = Wallet::split(not_yet_reversed_tail, entry.points);
                    self.put_lots(
                        member()?,
                        given_back,
                        sequence,
                        &mut lots,
                        &mut consumptions,
                    );
                }
            }
            EntryKind::Expiry => {
                let wallet = self.members.get_mut(member()?).ok_or_else(shape)?;
                let expired = wallet.take_expired(entry.accepted_at_ms);
                if expired.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(shape());
                }
                consumptions.extend(expired.iter().map(|lot| LotConsumption {
                    entry_sequence: sequence,
                    lot_id: lot.lot_id,
                    points: lot.points,
                    repaid: false,
                }));
            }
            EntryKind::Funding | EntryKind::Settlement | EntryKind::Payout => {
                if entry.member_id.is_some() || entry.points != 0 {
                    return Err(shape());
                }
            }
            EntryKind::MemberMerge => {
                let source = entry
                    .postings
                    .iter()
                    .find_map(|posting| match &posting.account {
                        AccountKey::MemberWallet(wallet)
                            if Some(wallet) != entry.member_id.as_ref() =>
                        {
                            Some(wallet.clone())
                        }
                        _ => None,
                    })
                    .ok_or_else(shape)?;
                let moved =
                    self.take_lots(&source, entry.points, sequence, None, &mut consumptions)?;
                if moved.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
                self.put_lots(member()?, moved, sequence, &mut lots, &mut consumptions);
            }
        }

        for (key, balance) in new_balances {
            self.balances.insert(key, balance);
        }
        if let Some((key, receipt)) = Receipt::of_entry(&entry) {
            self.remember_receipt(key, receipt);
        }
        self.head = ChainHead {
            sequence: entry.sequence,
            hash: entry.hash,
        };
        self.last_accepted_at_ms = self.last_accepted_at_ms.max(entry.accepted_at_ms);
        let wallet_after = entry
            .member_id
            .as_ref()
            .map_or(0, |member_id| self.wallet_points(member_id));
        if wallet_after != entry.member_points_after {
            return Err(ReplayError::WalletMismatch(entry.sequence));
        }
        if let Some(changes) = changes {
            for (posting, account) in entry.postings.iter().zip(account_ids) {
                changes.touched_balances.insert((account, posting.asset));
                changes.posting_account_ids.push(account);
            }
            changes.lots.extend(lots);
            changes.lot_consumptions.extend(consumptions);
            changes.entries.push(entry);
        }
        Ok(())
    }

    /// Takes up to `points` from a member's lots (the `preferred` lot first, then those that
    /// expire first) and records which lots paid.
    fn take_lots(
        &mut self,
        member_id: &MemberId,
        points: i64,
        sequence: u64,
        preferred: Option<LotId>,
        consumptions: &mut Vec<LotConsumption>,
    ) -> Result<Vec<Lot>, ReplayError> {
        let wallet = self
            .members
            .get_mut(member_id)
            .ok_or(ReplayError::LotsShort(sequence))?;
        let taken = wallet.take(points, preferred);
        consumptions.extend(taken.iter().map(|piece| LotConsumption {
            entry_sequence: sequence,
            lot_id: piece.lot_id,
            points: piece.points,
            repaid: false,
        }));
        Ok(taken)
    }

    /// Puts pieces into the wallet under their own lot ids: held pieces go back into the lots
    /// they were taken from (they were never consumed). Any debt is repaid first, recorded as
    /// consumed by entry `sequence`.
    fn restore_lots(
        &mut self,
        member_id: &MemberId,
        pieces: Vec<Lot>,
        sequence: u64,
        consumptions: &mut Vec<LotConsumption>,
    ) {
        let wallet = self.members.entry(member_id.clone()).or_default();
        for lot in pieces {
            let (lot_id, expires_at_ms) = (lot.lot_id, lot.expires_at_ms);
            let repaid = wallet.add(lot);
            if repaid > 0 {
                consumptions.push(LotConsumption {
                    entry_sequence: sequence,
                    lot_id,
                    points: repaid,
                    repaid: true,
                });
            }
            if let Some(expires_at_ms) = expires_at_ms {
                self.lot_expiries
                    .entry(expires_at_ms)
                    .or_default()
                    .insert(member_id.clone());
            }
        }
    }

    /// Puts lots (new, or pieces coming back) into a member's wallet as new lots of entry
    /// `sequence`, keeping issuer, age and expiry. Each first repays any debt; the repaid
    /// points are recorded as consumed by the same entry.
    fn put_lots(
        &mut self,
        member_id: &MemberId,
        pieces: Vec<Lot>,
        sequence: u64,
        records: &mut Vec<LotRecord>,
        consumptions: &mut Vec<LotConsumption>,
    ) {
        let mut renumbered = Vec::with_capacity(pieces.len());
        for (index, mut lot) in pieces.into_iter().enumerate() {
            lot.lot_id = LotId {
                entry_sequence: sequence,
                index: u32::try_from(index).expect("an entry puts fewer than 4 billion lots"),
            };
            records.push(LotRecord {
                lot_id: lot.lot_id,
                member_id: member_id.clone(),
                issuer: lot.issuer.clone(),
                points: lot.points,
                earned_at_ms: lot.earned_at_ms,
                expires_at_ms: lot.expires_at_ms,
            });
            renumbered.push(lot);
        }
        self.restore_lots(member_id, renumbered, sequence, consumptions);
    }
}

/// Why an entry could not be committed or replayed. Any of these is a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Unbalanced(#[from] BalanceError),
    #[error("entry {0}: a balance would overflow")]
    Overflow(u64),
    #[error("entry {0}: the member's lots hold fewer points than the entry takes")]
    LotsShort(u64),
    #[error("entry {0}: the wallet balance after the entry differs from the recorded one")]
    WalletMismatch(u64),
    #[error("entry {0}: the postings do not have the shape its kind requires")]
    Shape(u64),
    #[error("account {0} is used by an entry but was never created")]
    AccountMissing(String),
}

/// SHA-256 of a signed body: the value idempotent retries are compared by.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}
