//! The ledger state machine. It holds what the writer needs to decide a submission in
//! memory (balances, lots, enrolled members, aliases, idempotency receipts, the chain head)
//! and turns each accepted submission into one balanced, hash-chained journal entry plus the
//! rows that storage must write for it.
//!
//! The same `commit_entry` path serves live application and recovery (replaying committed
//! entries), so the state after a restart is the state before it by construction.
//!
//! This file holds the state and its small core (accounts, balances, receipts, `apply`'s
//! dispatch, invariants); each family of transactions has its own module: `earn_burn`,
//! `reversals`, `holds`, `exchange`, `expiry`, `funding` (funding, payouts and settlement's
//! closing entry), `members`, `terms` (terms and earn rules), and `commit` (sealing and
//! committing every entry, live and in replay).

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

mod commit;
mod earn_burn;
mod exchange;
mod expiry;
mod funding;
mod holds;
mod members;
mod reversals;
mod terms;
pub mod working_set;

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
    /// The partners' signed envelopes of the batch's submissions, by entry sequence.
    pub envelopes: Vec<(u64, std::sync::Arc<crate::submission::SignedEnvelope>)>,
    touched_balances: BTreeSet<(AccountId, Asset)>,
    /// Wallets, reversibles and holds the batch changed, for `state_rows`.
    touched: working_set::Touched,
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

pub use working_set::{OpenHold, Reversible};

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
    aliases: HashMap<MemberId, MemberId>,
    /// Receipts of recent merchant transactions: a cache of the journal's unique index on
    /// (merchant, transaction id). Older ones are forgotten to bound memory; the writer loads
    /// any it lacks from storage before a batch is applied.
    receipts: HashMap<ReceiptKey, Receipt>,
    /// The same receipts ordered by when the transaction happened, for forgetting.
    receipts_by_age: BTreeMap<(i64, u64), ReceiptKey>,
    head: ChainHead,
    /// The id the next new account gets.
    next_account_id: u64,
    /// `None` when the ledger holds the whole state (a replay); otherwise which members and
    /// referred entries are in memory (see `working_set`).
    residency: Option<working_set::Residency>,
    /// What the entry being committed touched; moved into `Changes` when it commits.
    touched: working_set::Touched,
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
            aliases: HashMap::new(),
            receipts: HashMap::new(),
            receipts_by_age: BTreeMap::new(),
            head: ChainHead::GENESIS,
            next_account_id: 1,
            residency: None,
            touched: working_set::Touched::default(),
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
        self.forget_committed_receipts_before(occurred_before_ms, u64::MAX)
    }

    /// Forgets the oldest receipts beyond `max`; returns how many.
    pub fn forget_receipts_beyond(&mut self, max: usize) -> usize {
        self.forget_committed_receipts_beyond(max, u64::MAX)
    }

    /// As `forget_receipts_before`, but keeps every receipt of an entry after
    /// `committed_through`: the journal does not hold those yet, so a retry could not be
    /// recognised from it.
    pub fn forget_committed_receipts_before(
        &mut self,
        occurred_before_ms: i64,
        committed_through: u64,
    ) -> usize {
        let chosen: Vec<(i64, u64)> = self
            .receipts_by_age
            .range(..(occurred_before_ms, 0))
            .map(|(age, _)| *age)
            .filter(|&(_, sequence)| sequence <= committed_through)
            .collect();
        self.forget_receipts(&chosen)
    }

    /// As `forget_receipts_beyond`, keeping every receipt of an entry after
    /// `committed_through` (which may leave more than `max` in memory for a while).
    pub fn forget_committed_receipts_beyond(
        &mut self,
        max: usize,
        committed_through: u64,
    ) -> usize {
        let excess = self.receipts.len().saturating_sub(max);
        if excess == 0 {
            return 0;
        }
        let chosen: Vec<(i64, u64)> = self
            .receipts_by_age
            .keys()
            .filter(|&&(_, sequence)| sequence <= committed_through)
            .take(excess)
            .copied()
            .collect();
        self.forget_receipts(&chosen)
    }

    fn forget_receipts(&mut self, ages: &[(i64, u64)]) -> usize {
        for age in ages {
            if let Some(key) = self.receipts_by_age.remove(age) {
                self.receipts.remove(&key);
            }
        }
        ages.len()
    }

    /// The receipt of a merchant transaction, if it is in memory.
    pub fn receipt(&self, key: &ReceiptKey) -> Option<&Receipt> {
        self.receipts.get(key)
    }

    /// How many receipts are in memory.
    pub fn receipts_in_memory(&self) -> usize {
        self.receipts.len()
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
        let member_id = self.resolve_loaded(&submission.member_id)?;
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
        if let Some(envelope) = &submission.envelope {
            changes
                .envelopes
                .push((receipt.sequence, std::sync::Arc::clone(envelope)));
        }
        Ok(Outcome::Applied(receipt))
    }

    /// Recovery: restores an account handle.
    pub fn restore_account(&mut self, id: AccountId, key: AccountKey) {
        self.next_account_id = self.next_account_id.max(id.0 + 1);
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
            // A working set holds some accounts only; their sum means nothing.
            if total != 0 && self.residency.is_none() {
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
    #[error("member {0} is used by an entry but is not in the writer's working set")]
    NotInMemory(String),
}

/// SHA-256 of a signed body: the value idempotent retries are compared by.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}
