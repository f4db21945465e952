//! The writer's working set: which members and referred entries are in memory, how the writer
//! fills it from storage before a batch, how it empties it after, and the rows that keep the
//! database's copy of that state current.
//!
//! A ledger made by replaying the journal holds everything (`residency` is `None`). The writer
//! instead starts from the small state (terms, earn rules, the merchants' and operator's
//! accounts, the chain head) and keeps only a working set: before a batch it asks `missing`
//! what the batch needs that is not in memory, loads those from the database as values
//! (`WorkingSet`) and hands them to `admit`; after the commit `evict` drops the least recently
//! used beyond the budgets. The rule is one: a batch may only touch what was loaded. Touching
//! a member or a referred entry that is not in memory is an invariant violation (the batch is
//! aborted), never a silent default.
//!
//! A member is loaded as a unit: its alias (if it was merged away), or its wallet (lots and
//! debt) and tier if it is enrolled, and the accounts and balances of its wallet and held
//! points. A unit may be empty: "not enrolled" is known, not guessed. A referred entry (the
//! sequence of an earn, burn, capture or hold) is loaded with what remains reversible of it
//! and, for a hold, whether it is still open.

use super::*;

/// An earn, burn or capture that a reversal may still act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversible {
    pub kind: EntryKind,
    /// The merchant whose accounts the original posted to.
    pub merchant_id: MerchantId,
    pub member_id: MemberId,
    pub points: i64,
    /// Points already reversed.
    pub reversed: i64,
    pub terms_version: u32,
    /// For a burn or capture: the lot pieces it took, which a reversal gives back.
    pub taken: Vec<Lot>,
}

impl Reversible {
    /// What remains reversible of `original`, derived from the journal as the database does
    /// it when it loads a referred entry: `None` unless it is an earn, burn or capture;
    /// `reversed` sums the points of the earn and burn reversals that refer to it; a capture's
    /// merchant is its hold's (`hold_merchant`); `taken` is stored apart, as pieces.
    pub fn of_entry(
        original: &Entry,
        hold_merchant: Option<&MerchantId>,
        reversed: i64,
        taken: Vec<Lot>,
    ) -> Option<Reversible> {
        if !matches!(
            original.kind,
            EntryKind::Earn | EntryKind::Burn | EntryKind::Capture
        ) {
            return None;
        }
        let merchant_id = if original.kind == EntryKind::Capture {
            hold_merchant?.clone()
        } else {
            original.origin.as_ref()?.merchant_id.clone()
        };
        Some(Reversible {
            kind: original.kind,
            merchant_id,
            member_id: original.member_id.clone()?,
            points: original.points,
            reversed,
            terms_version: original.terms_version?,
            taken,
        })
    }
}

/// A hold not yet captured, voided or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHold {
    pub merchant_id: MerchantId,
    /// The member whose held account holds the points.
    pub member_id: MemberId,
    pub points: i64,
    pub terms_version: u32,
    pub expires_at_ms: i64,
    /// The lot pieces the hold took out of the wallet; a capture consumes some, the rest go back.
    pub taken: Vec<Lot>,
}

/// What a batch needs in memory: member ids (as given, aliases included) and the sequences
/// of entries it refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub members: BTreeSet<MemberId>,
    pub references: BTreeSet<u64>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.references.is_empty()
    }
}

/// One member id as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub member_id: MemberId,
    /// The member this id was merged into, if it was.
    pub alias_of: Option<MemberId>,
    /// Whether the id is an enrolled member (and not an alias).
    pub enrolled: bool,
    pub tier: Option<String>,
    /// Points owed after a reversed earn whose points were already spent.
    pub debt: i64,
    /// The wallet's lots with the points that remain in each.
    pub lots: Vec<Lot>,
    /// The member's wallet and held accounts that exist, with their balances.
    pub accounts: Vec<MemberAccount>,
}

/// A member's account as stored, with its balance in each asset it holds.
pub type MemberAccount = (AccountId, AccountKey, Vec<(Asset, i64)>);

impl MemberState {
    /// An id that is neither enrolled nor an alias.
    pub fn unknown(member_id: MemberId) -> Self {
        MemberState {
            member_id,
            alias_of: None,
            enrolled: false,
            tier: None,
            debt: 0,
            lots: Vec::new(),
            accounts: Vec::new(),
        }
    }
}

/// One referred entry as stored: what remains reversible of it, and the hold if it is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceState {
    pub sequence: u64,
    pub reversible: Option<Reversible>,
    pub hold: Option<OpenHold>,
}

/// State loaded from storage for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    pub members: Vec<MemberState>,
    pub references: Vec<ReferenceState>,
}

/// Sizes of what the ledger holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InMemory {
    pub members: usize,
    pub tiers: usize,
    pub aliases: usize,
    pub accounts: usize,
    pub balances: usize,
    pub reversibles: usize,
    pub holds: usize,
    pub hold_deadlines: usize,
    pub receipts: usize,
}

/// Which members and references are in memory, and when each was last used.
#[derive(Debug, Clone, Default)]
pub(crate) struct Residency {
    tick: u64,
    members: HashMap<MemberId, u64>,
    members_by_use: BTreeSet<(u64, MemberId)>,
    references: HashMap<u64, u64>,
    references_by_use: BTreeSet<(u64, u64)>,
}

impl Residency {
    fn touch_member(&mut self, member_id: &MemberId) -> bool {
        let tick = self.tick;
        match self.members.get_mut(member_id) {
            Some(used) => {
                self.members_by_use.remove(&(*used, member_id.clone()));
                *used = tick;
                self.members_by_use.insert((tick, member_id.clone()));
                true
            }
            None => false,
        }
    }

    fn touch_reference(&mut self, sequence: u64) -> bool {
        let tick = self.tick;
        match self.references.get_mut(&sequence) {
            Some(used) => {
                self.references_by_use.remove(&(*used, sequence));
                *used = tick;
                self.references_by_use.insert((tick, sequence));
                true
            }
            None => false,
        }
    }
}

/// What was touched by the entries committed so far, for the state rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Touched {
    /// Members whose wallet, debt, tier, accounts or balances changed, or that were enrolled
    /// or merged away.
    pub members: BTreeSet<MemberId>,
    /// New earns, burns and captures (their pieces are written once; what remains reversible
    /// of them the database derives from the journal).
    pub new_reversibles: BTreeSet<u64>,
    pub holds_opened: BTreeSet<u64>,
    pub holds_closed: BTreeSet<u64>,
}

impl Touched {
    pub fn absorb(&mut self, other: Touched) {
        self.members.extend(other.members);
        self.new_reversibles.extend(other.new_reversibles);
        self.holds_opened.extend(other.holds_opened);
        self.holds_closed.extend(other.holds_closed);
    }
}

/// The rows that bring the database's copy of the state (each changed member's whole state,
/// open holds and the lot pieces of holds, burns and captures) to the state after a batch.
/// Written in the batch's transaction. What remains reversible of an earn, burn or capture
/// is no row: the database derives it from the entry and the reversals that refer to it
/// (see [`Reversible`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRows {
    /// The whole state of every member the batch changed, as the ledger holds it now: one row
    /// each.
    pub members: Vec<MemberState>,
    /// The lot pieces of new burns, captures and holds, by entry sequence, in take order.
    pub pieces: Vec<(u64, Vec<Lot>)>,
    pub holds_opened: Vec<(u64, OpenHold)>,
    /// Holds captured, voided or expired (their pieces go with them).
    pub holds_closed: Vec<u64>,
}

impl Changes {
    /// The state rows for what the batch touched, as the ledger holds it now.
    pub fn state_rows(&self, ledger: &Ledger) -> Result<StateRows, ApplyError> {
        let touched = &self.touched;
        let mut rows = StateRows::default();
        for member_id in &touched.members {
            rows.members.push(ledger.member_state(member_id));
        }
        let missing = |sequence: u64| {
            ApplyError::InvariantViolated(format!("entry {sequence}: reversible not in memory"))
        };
        for sequence in &touched.new_reversibles {
            let reversible = ledger
                .reversibles
                .get(sequence)
                .ok_or_else(|| missing(*sequence))?;
            if !reversible.taken.is_empty() {
                rows.pieces.push((*sequence, reversible.taken.clone()));
            }
        }
        for sequence in &touched.holds_opened {
            // A hold opened and closed in the same batch leaves nothing open.
            if let Some(hold) = ledger.holds.get(sequence) {
                rows.holds_opened.push((*sequence, hold.clone()));
                rows.pieces.push((*sequence, hold.taken.clone()));
            }
        }
        rows.holds_closed = touched
            .holds_closed
            .iter()
            .filter(|sequence| !touched.holds_opened.contains(sequence))
            .copied()
            .collect();
        Ok(rows)
    }
}

impl Ledger {
    /// Start-up: restores a stored balance of a resident account.
    pub fn restore_balance(&mut self, account: AccountId, asset: Asset, balance: i64) {
        self.balances.insert((account, asset), balance);
    }

    /// Start-up: the id the next new account gets (one past the largest stored).
    pub fn restore_next_account_id(&mut self, next: u64) {
        self.next_account_id = self.next_account_id.max(next);
    }

    /// Start-up: the verified chain head and the latest acceptance time.
    pub fn restore_head(&mut self, head: ChainHead, last_accepted_at_ms: i64) {
        self.head = head;
        self.last_accepted_at_ms = last_accepted_at_ms;
    }

    /// What remains reversible of the earn, burn or capture at `sequence`, when it is in
    /// memory.
    pub fn reversible(&self, sequence: u64) -> Option<&Reversible> {
        self.reversibles.get(&sequence)
    }

    /// The state rows of everything this ledger holds: what fills the state tables of a
    /// journal written before them, and what `check` compares them with.
    pub fn whole_state_rows(&self) -> StateRows {
        let mut rows = StateRows::default();
        // Every id with a stored state: enrolled members, aliases, and owners of member accounts.
        let members: BTreeSet<&MemberId> = self
            .members
            .keys()
            .chain(self.aliases.keys())
            .chain(self.member_tiers.keys())
            .chain(self.accounts.keys().filter_map(AccountKey::member))
            .collect();
        for member_id in members {
            rows.members.push(self.member_state(member_id));
        }
        let mut reversibles: Vec<(&u64, &Reversible)> = self.reversibles.iter().collect();
        reversibles.sort_by_key(|(sequence, _)| **sequence);
        for (sequence, reversible) in reversibles {
            if !reversible.taken.is_empty() {
                rows.pieces.push((*sequence, reversible.taken.clone()));
            }
        }
        let mut holds: Vec<(&u64, &OpenHold)> = self.holds.iter().collect();
        holds.sort_by_key(|(sequence, _)| **sequence);
        for (sequence, hold) in holds {
            rows.holds_opened.push((*sequence, hold.clone()));
            rows.pieces.push((*sequence, hold.taken.clone()));
        }
        rows
    }

    /// A member id's whole state as this ledger holds it: the row the database keeps for it
    /// and the value `admit` takes back. Member accounts hold points only.
    pub fn member_state(&self, member_id: &MemberId) -> MemberState {
        let wallet = self.members.get(member_id);
        let accounts = [
            AccountKey::MemberWallet(member_id.clone()),
            AccountKey::MemberHeld(member_id.clone()),
        ]
        .into_iter()
        .filter_map(|key| {
            let id = *self.accounts.get(&key)?;
            let points = self.balance_of(id, Asset::Points);
            Some((id, key, vec![(Asset::Points, points)]))
        })
        .collect();
        MemberState {
            member_id: member_id.clone(),
            alias_of: self.aliases.get(member_id).cloned(),
            enrolled: wallet.is_some(),
            tier: wallet.and_then(|_| self.member_tiers.get(member_id).cloned()),
            debt: wallet.map_or(0, |wallet| wallet.debt),
            lots: wallet.map(|wallet| wallet.lots.clone()).unwrap_or_default(),
            accounts,
        }
    }

    /// From now on the ledger holds a working set rather than the whole state: members and
    /// referred entries must be admitted before a batch uses them. Everything in memory now
    /// (terms, earn rules, accounts of merchants and the operator) stays.
    pub fn keep_working_set(&mut self) {
        self.residency = Some(Residency::default());
    }

    /// Whether the ledger holds a working set (true) or the whole state.
    pub fn holds_working_set(&self) -> bool {
        self.residency.is_some()
    }

    /// How many members and referred entries are in memory.
    pub fn resident(&self) -> (usize, usize) {
        match &self.residency {
            Some(residency) => (residency.members.len(), residency.references.len()),
            None => (
                self.members.len(),
                self.reversibles.len() + self.holds.len(),
            ),
        }
    }

    /// Counts new reversibles and holds as used now, so they leave memory like loaded ones.
    pub(super) fn track_reference(&mut self, sequence: u64) {
        if let Some(residency) = self.residency.as_mut() {
            let tick = residency.tick;
            if residency.references.insert(sequence, tick).is_none() {
                residency.references_by_use.insert((tick, sequence));
            }
        }
    }

    /// How many of each kind of thing the ledger holds in memory (for tests and metrics).
    pub fn in_memory(&self) -> InMemory {
        InMemory {
            members: self.members.len(),
            tiers: self.member_tiers.len(),
            aliases: self.aliases.len(),
            accounts: self.accounts.len(),
            balances: self.balances.len(),
            reversibles: self.reversibles.len(),
            holds: self.holds.len(),
            hold_deadlines: self.hold_deadlines.len(),
            receipts: self.receipts.len(),
        }
    }

    pub(super) fn require_member(&self, member_id: &MemberId) -> Result<(), ApplyError> {
        match &self.residency {
            Some(residency) if !residency.members.contains_key(member_id) => {
                Err(ApplyError::InvariantViolated(format!(
                    "member {member_id} is used but was not loaded into the working set"
                )))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn require_reference(&self, sequence: u64) -> Result<(), ApplyError> {
        match &self.residency {
            Some(residency) if !residency.references.contains_key(&sequence) => {
                Err(ApplyError::InvariantViolated(format!(
                    "entry {sequence} is referred to but was not loaded into the working set"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Marks what `needs` names as used now and returns what of it is not in memory: the
    /// members and references to load. Members follow from what is in memory: the target of
    /// a resident alias and the member of a resident reversible or hold are needed too. Call
    /// again after `admit` until nothing is missing (a loaded alias may point at a member
    /// that is not in memory). A ledger that holds everything misses nothing.
    pub fn missing(&mut self, needs: &Needs) -> Needs {
        let Some(residency) = self.residency.as_mut() else {
            return Needs::default();
        };
        residency.tick += 1;
        let mut missing = Needs::default();
        let mut members: Vec<MemberId> = needs.members.iter().cloned().collect();
        for &sequence in &needs.references {
            if residency.touch_reference(sequence) {
                let owners = self
                    .reversibles
                    .get(&sequence)
                    .map(|reversible| &reversible.member_id)
                    .into_iter()
                    .chain(self.holds.get(&sequence).map(|hold| &hold.member_id));
                members.extend(owners.cloned());
            } else {
                missing.references.insert(sequence);
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(member_id) = members.pop() {
            if !seen.insert(member_id.clone()) {
                continue;
            }
            if residency.touch_member(&member_id) {
                if let Some(target) = self.aliases.get(&member_id) {
                    members.push(target.clone());
                }
            } else {
                missing.members.insert(member_id);
            }
        }
        missing
    }

    /// Puts loaded state into memory. What is in memory already is newer or the same, and is
    /// kept.
    pub fn admit(&mut self, set: WorkingSet) {
        let Some(residency) = self.residency.as_mut() else {
            return;
        };
        let tick = residency.tick;
        for reference in set.references {
            let sequence = reference.sequence;
            if residency.references.contains_key(&sequence) {
                continue;
            }
            residency.references.insert(sequence, tick);
            residency.references_by_use.insert((tick, sequence));
            if let Some(reversible) = reference.reversible {
                self.reversibles.insert(sequence, reversible);
            }
            if let Some(hold) = reference.hold {
                self.hold_deadlines.insert((hold.expires_at_ms, sequence));
                self.holds.insert(sequence, hold);
            }
        }
        for member in set.members {
            let member_id = member.member_id;
            if residency.members.contains_key(&member_id) {
                continue;
            }
            residency.members.insert(member_id.clone(), tick);
            residency.members_by_use.insert((tick, member_id.clone()));
            for (id, key, balances) in member.accounts {
                self.next_account_id = self.next_account_id.max(id.0 + 1);
                self.accounts.insert(key, id);
                for (asset, balance) in balances {
                    self.balances.insert((id, asset), balance);
                }
            }
            if let Some(target) = member.alias_of {
                self.aliases.insert(member_id, target);
                continue;
            }
            if !member.enrolled {
                continue;
            }
            if let Some(tier) = member.tier {
                self.member_tiers.insert(member_id.clone(), tier);
            }
            let mut wallet = Wallet {
                lots: Vec::with_capacity(member.lots.len()),
                debt: member.debt,
            };
            for lot in member.lots {
                wallet.insert_in_order(lot);
            }
            self.members.insert(member_id, wallet);
        }
    }

    /// Drops the least recently used members and references beyond the budgets. Their state
    /// is in the database, which the next batch that needs them loads it from.
    pub fn evict(&mut self, members_max: usize, references_max: usize) {
        self.evict_used_through(members_max, references_max, u64::MAX);
    }

    /// The working set's use counter: what a batch touches after this is marked used later
    /// than this value (see `evict_used_through`).
    pub fn use_tick(&self) -> u64 {
        self.residency
            .as_ref()
            .map_or(0, |residency| residency.tick)
    }

    /// As `evict`, but drops only what was last used at or before `tick`. A writer that has
    /// applied a batch whose commit has not finished passes the `use_tick` read before that
    /// batch, so nothing the batch changed leaves memory before the database holds it.
    pub fn evict_used_through(&mut self, members_max: usize, references_max: usize, tick: u64) {
        let Some(residency) = self.residency.as_mut() else {
            return;
        };
        let mut members = Vec::new();
        while residency.members.len() > members_max {
            let Some((used, member_id)) = residency.members_by_use.pop_first() else {
                break;
            };
            if used > tick {
                residency.members_by_use.insert((used, member_id));
                break;
            }
            residency.members.remove(&member_id);
            members.push(member_id);
        }
        let mut references = Vec::new();
        while residency.references.len() > references_max {
            let Some((used, sequence)) = residency.references_by_use.pop_first() else {
                break;
            };
            if used > tick {
                residency.references_by_use.insert((used, sequence));
                break;
            }
            residency.references.remove(&sequence);
            references.push(sequence);
        }
        for member_id in members {
            self.members.remove(&member_id);
            self.member_tiers.remove(&member_id);
            self.aliases.remove(&member_id);
            for key in [
                AccountKey::MemberWallet(member_id.clone()),
                AccountKey::MemberHeld(member_id),
            ] {
                // A member's accounts hold points only.
                if let Some(id) = self.accounts.remove(&key) {
                    self.balances.remove(&(id, Asset::Points));
                }
            }
        }
        for sequence in references {
            self.reversibles.remove(&sequence);
            if let Some(hold) = self.holds.remove(&sequence) {
                self.hold_deadlines.remove(&(hold.expires_at_ms, sequence));
            }
        }
    }
}
