//! The ledger state machine. It holds what the writer needs to decide a submission in
//! memory (balances, lots, enrolled members, aliases, idempotency receipts, the chain head)
//! and turns each accepted submission into one balanced, hash-chained journal entry plus the
//! rows that storage must write for it.
//!
//! The same `commit_entry` path serves live application and recovery (replaying committed
//! entries), so the state after a restart is the state before it by construction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest, Sha256};

use crate::account::{AccountId, AccountKey, Asset, CurrencyCode};
use crate::chain::{ChainError, ChainHead, entry_hash};
use crate::ids::{MemberId, MerchantId, MerchantTransactionId};
use crate::journal::{
    BalanceError, Entry, EntryKind, LotConsumption, LotId, LotRecord, MerchantOrigin, Posting,
};
use crate::rejection::{Rejection, RejectionReason};
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
                member_id: entry.member_id.clone(),
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
    }

    /// The current balance of every account the batch touched.
    pub fn balances(&self, ledger: &Ledger) -> Vec<(AccountId, Asset, i64)> {
        self.touched_balances
            .iter()
            .map(|&(account, asset)| (account, asset, ledger.balance_of(account, asset)))
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Lot {
    lot_id: LotId,
    issuer: MerchantId,
    earned_at_ms: i64,
    points_remaining: i64,
}

#[derive(Debug, Clone, Default)]
struct MemberState {
    /// Oldest first by (earned_at, lot id); burns take from the front.
    lots: Vec<Lot>,
}

/// The in-memory ledger. See the module documentation.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The currency of money legs.
    currency: CurrencyCode,
    /// Every version of every merchant's terms, oldest first.
    terms: HashMap<MerchantId, Vec<MerchantTerms>>,
    /// The latest acceptance time of any entry; terms may not take effect before it.
    last_accepted_at_ms: i64,
    accounts: HashMap<AccountKey, AccountId>,
    balances: HashMap<(AccountId, Asset), i64>,
    members: HashMap<MemberId, MemberState>,
    aliases: HashMap<MemberId, MemberId>,
    /// Receipts of recent merchant transactions: a cache of the journal's unique index on
    /// (merchant, transaction id). Older ones are forgotten to bound memory; the writer loads
    /// any it lacks from storage before a batch is applied.
    receipts: HashMap<ReceiptKey, Receipt>,
    /// The same receipts ordered by when the transaction happened, for forgetting.
    receipts_by_age: BTreeMap<(i64, u64), ReceiptKey>,
    head: ChainHead,
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
            last_accepted_at_ms: i64::MIN,
            accounts: HashMap::new(),
            balances: HashMap::new(),
            members: HashMap::new(),
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

    pub fn currency(&self) -> CurrencyCode {
        self.currency
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
        } = prices;
        check_price("issue price", issue_price_minor_per_point)?;
        check_price("redeem price", redeem_price_minor_per_point)?;
        check_price("fee", fee_minor_per_point)?;
        let previous_effective_ms = self
            .terms
            .get(&merchant_id)
            .and_then(|versions| versions.last())
            .map_or(i64::MIN, |previous| previous.effective_from_ms);
        // "From now" means after the last accepted entry and after the previous version.
        let effective_from_ms = effective_from_ms.unwrap_or_else(|| {
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
        };
        versions.push(terms.clone());
        changes.terms.push(terms.clone());
        Ok(terms)
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
    /// Idempotency is decided by the receipts in memory: a caller that forgets receipts
    /// must first `remember_receipt` every stored one of the transaction ids it applies.
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
            return Err(ApplyError::Rejected(Rejection::new(
                RejectionReason::TransactionIdConflict,
                format!(
                    "merchant {} already used transaction id {} for a different body (entry {})",
                    submission.merchant_id, submission.merchant_transaction_id, receipt.sequence
                ),
            )));
        }
        let member_id = self.resolve_member(&submission.member_id);
        if !self.members.contains_key(&member_id) {
            return Err(ApplyError::Rejected(Rejection::new(
                RejectionReason::MemberUnknown,
                format!("member {} is not enrolled", submission.member_id),
            )));
        }
        let wallet_before = self.wallet_points(&member_id);
        let (kind, wallet_change, merchant_account) = match submission.kind {
            TransactionKind::Earn => (
                EntryKind::Earn,
                submission.points,
                AccountKey::MerchantIssued(submission.merchant_id.clone()),
            ),
            TransactionKind::Burn => {
                if submission.points > wallet_before {
                    return Err(ApplyError::Rejected(Rejection::new(
                        RejectionReason::PointsInsufficient,
                        format!(
                            "member {} has {wallet_before} points available, the burn asks for {}",
                            submission.member_id, submission.points
                        ),
                    )));
                }
                (
                    EntryKind::Burn,
                    -submission.points,
                    AccountKey::MerchantRedeemed(submission.merchant_id.clone()),
                )
            }
        };
        let member_points_after = wallet_before
            .checked_add(wallet_change)
            .ok_or_else(|| ApplyError::InvariantViolated("wallet balance overflow".into()))?;
        let terms = self
            .terms_at(&submission.merchant_id, accepted_at_ms)
            .cloned()
            .ok_or_else(|| {
                ApplyError::Rejected(Rejection::new(
                    RejectionReason::TermsMissing,
                    format!(
                        "merchant {} has no terms in force, so its points have no price",
                        submission.merchant_id
                    ),
                ))
            })?;
        let mut postings = vec![
            Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: wallet_change,
            },
            Posting {
                account: merchant_account,
                asset: Asset::Points,
                amount: -wallet_change,
            },
        ];
        // The money leg: the issuer pays the operator's float for points it issues; the float
        // pays the redeemer for points redeemed there. Rounding per `terms::money_leg`.
        let (price, payer, payee) = match kind {
            EntryKind::Burn => (
                terms.redeem_price_minor_per_point,
                AccountKey::OperatorFloat,
                AccountKey::MerchantSettlement(submission.merchant_id.clone()),
            ),
            _ => (
                terms.issue_price_minor_per_point,
                AccountKey::MerchantSettlement(submission.merchant_id.clone()),
                AccountKey::OperatorFloat,
            ),
        };
        let overflow = || ApplyError::InvariantViolated("money leg overflow".into());
        let (charged, paid) = money_leg(submission.points, price).ok_or_else(overflow)?;
        // The clearing fee, charged to the merchant on every point it issues or redeems, by
        // the same rounding rule.
        let (fee_charged, fee_paid) =
            money_leg(submission.points, terms.fee_minor_per_point).ok_or_else(overflow)?;
        let settlement = AccountKey::MerchantSettlement(submission.merchant_id.clone());
        let money = Asset::Currency(self.currency);
        for (account, amount) in [
            (payer, -charged),
            (payee, paid),
            (settlement, -fee_charged),
            (AccountKey::OperatorFees, fee_paid),
            (
                AccountKey::OperatorRounding,
                (charged - paid) + (fee_charged - fee_paid),
            ),
        ] {
            if amount != 0 {
                postings.push(Posting {
                    account,
                    asset: money,
                    amount,
                });
            }
        }
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
            kind,
            accepted_at_ms,
            origin: Some(origin),
            member_id,
            points: submission.points,
            spend_minor: submission.spend_minor,
            member_points_after,
            memo: String::new(),
            terms_version: Some(terms.version),
            postings,
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
        self.members
            .insert(member_id.clone(), MemberState::default());
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
        let mut receipt = None;
        if moved_points > 0 {
            let member_points_after = self.wallet_points(&target) + moved_points;
            let entry = self.seal(Entry {
                sequence: 0,
                kind: EntryKind::MemberMerge,
                accepted_at_ms: at_ms,
                origin: None,
                member_id: target.clone(),
                points: moved_points,
                spend_minor: None,
                member_points_after,
                memo: format!("member {alias} merged into {target}"),
                terms_version: None,
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
                previous_hash: [0; 32],
                hash: [0; 32],
            });
            let sequence = entry.sequence;
            self.commit_entry(entry, Some(changes))
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

    /// Recovery: restores an enrolled member.
    pub fn restore_member(&mut self, member_id: MemberId) {
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

    /// Checks that every member's lots sum to its wallet balance and that each asset's
    /// balances sum to zero across all accounts.
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
        for (member_id, state) in &self.members {
            let lots: i64 = state.lots.iter().map(|lot| lot.points_remaining).sum();
            let wallet = self.wallet_points(member_id);
            if lots != wallet {
                return Err(format!(
                    "member {member_id}: lots hold {lots} points, the wallet {wallet}"
                ));
            }
            if state.lots.iter().any(|lot| lot.points_remaining <= 0) {
                return Err(format!("member {member_id} has an empty or negative lot"));
            }
        }
        Ok(())
    }

    /// Outstanding points per issuer, from lot attribution.
    pub fn outstanding_by_issuer(&self) -> HashMap<MerchantId, i64> {
        let mut outstanding = HashMap::new();
        for state in self.members.values() {
            for lot in &state.lots {
                *outstanding.entry(lot.issuer.clone()).or_insert(0) += lot.points_remaining;
            }
        }
        outstanding
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

        let mut lots = Vec::new();
        let mut consumptions = Vec::new();
        match entry.kind {
            EntryKind::Earn => {
                let origin = entry
                    .origin
                    .as_ref()
                    .ok_or(ReplayError::Shape(entry.sequence))?;
                lots.push(LotRecord {
                    lot_id: LotId {
                        entry_sequence: entry.sequence,
                        index: 0,
                    },
                    member_id: entry.member_id.clone(),
                    issuer: origin.merchant_id.clone(),
                    points: entry.points,
                    earned_at_ms: origin.occurred_at_ms,
                });
            }
            EntryKind::Burn => {
                consumptions =
                    self.take_from_lots(&entry.member_id, entry.points, entry.sequence)?;
            }
            EntryKind::MemberMerge => {
                let source = entry
                    .postings
                    .iter()
                    .find_map(|posting| match &posting.account {
                        AccountKey::MemberWallet(member) if *member != entry.member_id => {
                            Some(member.clone())
                        }
                        _ => None,
                    })
                    .ok_or(ReplayError::Shape(entry.sequence))?;
                let moved: Vec<Lot> = self
                    .members
                    .get(&source)
                    .map(|state| state.lots.clone())
                    .unwrap_or_default();
                consumptions = self.take_from_lots(&source, entry.points, entry.sequence)?;
                for (index, lot) in moved.iter().enumerate() {
                    lots.push(LotRecord {
                        lot_id: LotId {
                            entry_sequence: entry.sequence,
                            index: u32::try_from(index)
                                .map_err(|_| ReplayError::Shape(entry.sequence))?,
                        },
                        member_id: entry.member_id.clone(),
                        issuer: lot.issuer.clone(),
                        points: lot.points_remaining,
                        earned_at_ms: lot.earned_at_ms,
                    });
                }
            }
        }

        // From here on nothing can fail: apply.
        for (key, balance) in new_balances {
            self.balances.insert(key, balance);
        }
        for record in &lots {
            let state = self.members.entry(record.member_id.clone()).or_default();
            let lot = Lot {
                lot_id: record.lot_id,
                issuer: record.issuer.clone(),
                earned_at_ms: record.earned_at_ms,
                points_remaining: record.points,
            };
            let position = state.lots.partition_point(|other| {
                (other.earned_at_ms, other.lot_id) <= (lot.earned_at_ms, lot.lot_id)
            });
            state.lots.insert(position, lot);
        }
        if let Some((key, receipt)) = Receipt::of_entry(&entry) {
            self.remember_receipt(key, receipt);
        }
        self.head = ChainHead {
            sequence: entry.sequence,
            hash: entry.hash,
        };
        self.last_accepted_at_ms = self.last_accepted_at_ms.max(entry.accepted_at_ms);
        if self.wallet_points(&entry.member_id) != entry.member_points_after {
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

    /// Takes `points` from a member's lots, oldest first, and says which lots paid.
    fn take_from_lots(
        &mut self,
        member_id: &MemberId,
        points: i64,
        sequence: u64,
    ) -> Result<Vec<LotConsumption>, ReplayError> {
        let state = self
            .members
            .get_mut(member_id)
            .ok_or(ReplayError::LotsShort(sequence))?;
        let available: i64 = state.lots.iter().map(|lot| lot.points_remaining).sum();
        if available < points {
            return Err(ReplayError::LotsShort(sequence));
        }
        let mut remaining = points;
        let mut consumptions = Vec::new();
        let mut emptied = 0;
        for lot in state.lots.iter_mut() {
            if remaining == 0 {
                break;
            }
            let taken = remaining.min(lot.points_remaining);
            lot.points_remaining -= taken;
            remaining -= taken;
            consumptions.push(LotConsumption {
                entry_sequence: sequence,
                lot_id: lot.lot_id,
                points: taken,
            });
            if lot.points_remaining == 0 {
                emptied += 1;
            }
        }
        state.lots.drain(..emptied);
        Ok(consumptions)
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
