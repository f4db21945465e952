//! The working set changes nothing: the same random batches (earns, burns, holds, captures,
//! voids, reversals, exchanges, merges, enrolments, funding, hold timeouts and expiry runs)
//! go through a ledger that holds everything and through one that keeps a working set of one
//! member and one referred entry, refilled before every batch from a model of the database
//! that the second ledger's state rows keep. Both must give the same answers and the same
//! journal, and the model's state must equal the state of the ledger that holds everything.

use std::collections::{BTreeMap, BTreeSet};

use coalition_domain::ledger::{ApplyError, Outcome};
use coalition_domain::{
    AccountId, AccountKey, Asset, Changes, Entry, EntryKind, Ledger, LedgerPolicy, Lot, MemberId,
    MemberState, MerchantId, MerchantTransactionId, Needs, OpenHold, Prices, Receipt, ReceiptKey,
    ReferenceState, Reversible, StateRows, Submission, TransactionKind, UnitCode, WorkingSet,
};
use proptest::prelude::*;
use rust_decimal::Decimal;

#[derive(Debug, Clone)]
enum Step {
    Enroll(u8),
    Earn {
        merchant: u8,
        member: u8,
        points: i64,
    },
    Burn {
        merchant: u8,
        member: u8,
        points: i64,
    },
    Hold {
        merchant: u8,
        member: u8,
        points: i64,
    },
    /// Capture (points > 0) or void the n-th newest hold.
    Settle {
        target: u8,
        points: i64,
    },
    /// Reverse points of the n-th newest earn, burn or capture, by `merchant`.
    Reverse {
        merchant: u8,
        target: u8,
        points: i64,
    },
    Exchange {
        member: u8,
        units: i64,
        points: i64,
    },
    Merge {
        alias: u8,
        target: u8,
    },
    Fund(i64),
    /// Time passes; due holds are released and an expiry run is made.
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..8).prop_map(Step::Enroll),
        6 => (0u8..2, 0u8..8, 1i64..400).prop_map(|(merchant, member, points)| Step::Earn { merchant, member, points }),
        3 => (0u8..2, 0u8..8, 1i64..500).prop_map(|(merchant, member, points)| Step::Burn { merchant, member, points }),
        3 => (0u8..2, 0u8..8, 1i64..300).prop_map(|(merchant, member, points)| Step::Hold { merchant, member, points }),
        3 => (0u8..4, 0i64..300).prop_map(|(target, points)| Step::Settle { target, points }),
        4 => (0u8..2, 0u8..6, 1i64..300).prop_map(|(merchant, target, points)| Step::Reverse { merchant, target, points }),
        1 => (0u8..8, 0i64..400, 1i64..200).prop_map(|(member, units, points)| Step::Exchange { member, units, points }),
        1 => (0u8..8, 0u8..8).prop_map(|(alias, target)| Step::Merge { alias, target }),
        1 => (1i64..100_000).prop_map(Step::Fund),
        1 => Just(Step::Expire),
    ]
}

fn member(index: u8) -> MemberId {
    MemberId::new(format!("m-{index}")).unwrap()
}

fn merchant(index: u8) -> MerchantId {
    MerchantId::new(format!("merchant-{index}")).unwrap()
}

fn submission(
    merchant_index: u8,
    member_index: u8,
    kind: TransactionKind,
    points: i64,
    id: &str,
) -> Submission {
    Submission {
        merchant_id: merchant(merchant_index),
        merchant_transaction_id: MerchantTransactionId::new(id).unwrap(),
        kind,
        member_id: member(member_index),
        points,
        spend_minor: None,
        occurred_at_ms: 0,
        store_id: "s".into(),
        terminal_id: "t".into(),
        refers_to: None,
        legacy_units: 0,
        body_hash: coalition_domain::body_hash(format!("{id}/{points}/{member_index}").as_bytes()),
        refused_if_new: None,
        envelope: None,
    }
}

fn prices(cross: bool) -> Prices {
    Prices {
        issue_price_minor_per_point: Decimal::new(105, 2),
        redeem_price_minor_per_point: Decimal::new(95, 2),
        fee_minor_per_point: Decimal::new(10, 2),
        cross_merchant_reversals: cross,
        credit_limit_minor: None,
        earn_points_per_minor: Some(Decimal::new(1, 2)),
        exchange: cross.then(|| (UnitCode::new("STAR").unwrap(), Decimal::new(35, 2))),
        breakage_share: Decimal::ZERO,
    }
}

/// A model of the database: the tables the writer's state rows and changes keep.
#[derive(Debug, Default)]
struct Store {
    members: BTreeMap<MemberId, Option<String>>,
    accounts: BTreeMap<AccountKey, AccountId>,
    balances: BTreeMap<(AccountId, Asset), i64>,
    /// One row per member id, as the writer wrote it last (without `alias_of`).
    member_states: BTreeMap<MemberId, MemberState>,
    /// The journal, from which a referred entry's reversible remainder is derived.
    entries: BTreeMap<u64, Entry>,
    holds: BTreeMap<u64, OpenHold>,
    pieces: BTreeMap<u64, Vec<Lot>>,
    receipts: BTreeMap<ReceiptKey, Receipt>,
}

impl Store {
    fn write(&mut self, changes: &Changes, balances: &[(AccountId, Asset, i64)], rows: &StateRows) {
        for record in &changes.members {
            self.members
                .insert(record.member_id.clone(), record.tier.clone());
        }
        for (id, key) in &changes.accounts {
            assert!(
                self.accounts.insert(key.clone(), *id).is_none(),
                "account {key} created twice"
            );
        }
        for (id, asset, balance) in balances {
            self.balances.insert((*id, *asset), *balance);
        }
        for entry in &changes.entries {
            if let Some((key, receipt)) = Receipt::of_entry(entry) {
                self.receipts.insert(key, receipt);
            }
            self.entries.insert(entry.sequence, entry.clone());
        }
        for state in &rows.members {
            self.member_states
                .insert(state.member_id.clone(), state.clone());
        }
        for sequence in &rows.holds_closed {
            assert!(
                self.holds.remove(sequence).is_some(),
                "closed hold {sequence} was not open"
            );
            self.pieces.remove(sequence);
        }
        for (sequence, hold) in &rows.holds_opened {
            let mut stored = hold.clone();
            stored.taken = Vec::new();
            self.holds.insert(*sequence, stored);
        }
        for (sequence, taken) in &rows.pieces {
            assert!(
                self.pieces.insert(*sequence, taken.clone()).is_none(),
                "pieces of {sequence} written twice"
            );
        }
    }

    /// The reversible remainder of the entry at `sequence`, from the journal alone, as the
    /// database derives it.
    fn reversible(&self, sequence: u64) -> Option<Reversible> {
        let original = self.entries.get(&sequence)?;
        let hold_merchant = original
            .refers_to
            .and_then(|hold| self.entries.get(&hold))
            .and_then(|hold| hold.origin.as_ref())
            .map(|origin| &origin.merchant_id);
        let reversed = self
            .entries
            .values()
            .filter(|entry| {
                entry.refers_to == Some(sequence)
                    && matches!(
                        entry.kind,
                        EntryKind::EarnReversal | EntryKind::BurnReversal
                    )
            })
            .map(|entry| entry.points)
            .sum::<i64>();
        let taken = self.pieces.get(&sequence).cloned().unwrap_or_default();
        Reversible::of_entry(original, hold_merchant, reversed, taken)
    }

    fn load(&self, needs: &Needs) -> WorkingSet {
        let references = needs
            .references
            .iter()
            .map(|&sequence| ReferenceState {
                sequence,
                reversible: self.reversible(sequence),
                hold: self.holds.get(&sequence).map(|hold| OpenHold {
                    taken: self.pieces.get(&sequence).cloned().unwrap_or_default(),
                    ..hold.clone()
                }),
            })
            .collect();
        let members = needs
            .members
            .iter()
            .map(|member_id| {
                // Only the member's row: a member whose change was not written comes back
                // stale, and the comparison with the full ledger fails.
                match self.member_states.get(member_id) {
                    Some(row) => {
                        let enrolled = row.alias_of.is_none() && row.enrolled;
                        MemberState {
                            enrolled,
                            tier: if enrolled { row.tier.clone() } else { None },
                            ..row.clone()
                        }
                    }
                    None => MemberState::unknown(member_id.clone()),
                }
            })
            .collect();
        WorkingSet {
            members,
            references,
        }
    }
}

/// One batch of steps, as the writer would get it.
struct Batch {
    steps: Vec<(usize, Step)>,
}

/// What each ledger answered, to compare.
type Answer = Result<Outcome, ApplyError>;

/// Runs one batch on `ledger`: builds the submissions (from what the ledger's own earlier
/// answers accepted), applies them and the operator steps, and returns the answers.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    ledger: &mut Ledger,
    store: Option<&mut Store>,
    batch: &Batch,
    now: i64,
    reversible: &mut Vec<(u8, String, u8)>,
    holds: &mut Vec<(u8, String, u8)>,
    changes: &mut Changes,
) -> Vec<String> {
    let mut answers = Vec::new();
    // The submissions of the batch, decided before anything is applied (as a writer batch).
    let mut submissions = Vec::new();
    for (time, step) in &batch.steps {
        let sub = match step {
            Step::Earn {
                merchant: m,
                member: i,
                points,
            } => Some(submission(
                *m,
                *i,
                TransactionKind::Earn,
                *points,
                &format!("earn-{time}"),
            )),
            Step::Burn {
                merchant: m,
                member: i,
                points,
            } => Some(submission(
                *m,
                *i,
                TransactionKind::Burn,
                *points,
                &format!("burn-{time}"),
            )),
            Step::Hold {
                merchant: m,
                member: i,
                points,
            } => Some(submission(
                *m,
                *i,
                TransactionKind::Hold,
                *points,
                &format!("hold-{time}"),
            )),
            Step::Settle { target, points } => {
                holds.len().checked_sub(1 + usize::from(*target)).map(|at| {
                    let (m, hold_id, i) = holds[at].clone();
                    let kind = if *points == 0 {
                        TransactionKind::Void
                    } else {
                        TransactionKind::Capture
                    };
                    let mut body = submission(m, i, kind, *points, &format!("settle-{time}"));
                    body.refers_to =
                        Some((merchant(m), MerchantTransactionId::new(hold_id).unwrap()));
                    body
                })
            }
            Step::Reverse {
                merchant: by,
                target,
                points,
            } => reversible
                .len()
                .checked_sub(1 + usize::from(*target))
                .map(|at| {
                    let (m, original, i) = reversible[at].clone();
                    let mut body = submission(
                        *by,
                        i,
                        TransactionKind::Reversal,
                        *points,
                        &format!("reverse-{time}"),
                    );
                    body.refers_to =
                        Some((merchant(m), MerchantTransactionId::new(original).unwrap()));
                    body
                }),
            Step::Exchange {
                member: i,
                units,
                points,
            } => {
                let outgoing = *units == 0;
                let kind = if outgoing {
                    TransactionKind::ExchangeOut
                } else {
                    TransactionKind::ExchangeIn
                };
                let mut body = submission(
                    1,
                    *i,
                    kind,
                    if outgoing { *points } else { 0 },
                    &format!("exchange-{time}"),
                );
                body.legacy_units = *units;
                Some(body)
            }
            _ => None,
        };
        submissions.push(sub);
    }
    let expire = batch
        .steps
        .iter()
        .any(|(_, step)| matches!(step, Step::Expire));
    if let Some(store) = store {
        // What the writer does before a batch: receipts, then the working set.
        for sub in submissions.iter().flatten() {
            let own = (sub.merchant_id.clone(), sub.merchant_transaction_id.clone());
            for key in std::iter::once(own).chain(sub.refers_to.clone()) {
                if !ledger.has_receipt(&key)
                    && let Some(receipt) = store.receipts.get(&key)
                {
                    ledger.remember_receipt(key, receipt.clone());
                }
            }
        }
        let mut needs = Needs::default();
        for sub in submissions.iter().flatten() {
            needs.members.insert(sub.member_id.clone());
            if let Some(receipt) = sub.refers_to.as_ref().and_then(|key| ledger.receipt(key)) {
                needs.references.insert(receipt.sequence);
            }
        }
        for (_, step) in &batch.steps {
            match step {
                Step::Enroll(i) => {
                    needs.members.insert(member(*i));
                }
                Step::Merge { alias, target } => {
                    needs.members.insert(member(*alias));
                    needs.members.insert(member(*target));
                }
                _ => {}
            }
        }
        needs.references.extend(
            store
                .holds
                .iter()
                .filter(|(_, hold)| hold.expires_at_ms <= now)
                .map(|(sequence, _)| *sequence),
        );
        if expire {
            needs.members.extend(
                store
                    .member_states
                    .values()
                    .filter(|row| {
                        row.lots
                            .iter()
                            .any(|lot| lot.expires_at_ms.is_some_and(|at| at <= now))
                    })
                    .map(|row| row.member_id.clone()),
            );
        }
        loop {
            let missing = ledger.missing(&needs);
            if missing.is_empty() {
                break;
            }
            ledger.admit(store.load(&missing));
        }
    }
    // Holds past their deadline first, as the writer does.
    let released = ledger.expire_holds(now, changes).unwrap();
    answers.push(format!("holds expired {released:?}"));
    for ((time, step), sub) in batch.steps.iter().zip(submissions) {
        if let Some(sub) = sub {
            let answer: Answer = ledger.apply(&sub, now, changes);
            if let Err(ApplyError::InvariantViolated(message)) = &answer {
                panic!("step {time} {step:?}: {message}");
            }
            if let Ok(Outcome::Applied(receipt)) = &answer {
                let id = sub.merchant_transaction_id.to_string();
                let m = sub
                    .merchant_id
                    .as_str()
                    .trim_start_matches("merchant-")
                    .parse::<u8>()
                    .unwrap();
                let i = sub
                    .member_id
                    .as_str()
                    .trim_start_matches("m-")
                    .parse::<u8>()
                    .unwrap();
                match sub.kind {
                    TransactionKind::Earn | TransactionKind::Burn => reversible.push((m, id, i)),
                    TransactionKind::Capture => reversible.push((m, id, i)),
                    TransactionKind::Hold => holds.push((m, id, i)),
                    _ => {}
                }
                let _ = receipt;
            }
            answers.push(format!("{step:?}: {answer:?}"));
            continue;
        }
        let answer = match step {
            Step::Enroll(i) => format!(
                "{:?}",
                ledger.enroll_member(
                    member(*i),
                    i.is_multiple_of(2).then(|| "gold".to_owned()),
                    now,
                    changes
                )
            ),
            Step::Merge { alias, target } => format!(
                "{:?}",
                ledger.alias_member(member(*alias), member(*target), now, changes)
            ),
            Step::Fund(amount) => format!(
                "{:?}",
                ledger.fund_merchant(&merchant(0), *amount, "transfer", now, changes)
            ),
            Step::Expire => format!("{:?}", ledger.expire_lots(now, changes).unwrap()),
            _ => "nothing to refer to".to_owned(),
        };
        answers.push(format!("{step:?}: {answer}"));
    }
    answers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_working_set_of_one_gives_the_same_books(
        batches in proptest::collection::vec(proptest::collection::vec(step(), 1..5), 1..40)
    ) {
        let policy = LedgerPolicy { hold_timeout_ms: 100, points_lifetime_ms: Some(300), ..LedgerPolicy::default() };
        let mut full = Ledger::default();
        full.set_policy(policy);
        let mut small = Ledger::default();
        small.set_policy(policy);
        // The small state both start from: terms and the first members, written to the store.
        let mut store = Store::default();
        let mut setup = Changes::default();
        for index in 0..2u8 {
            full.add_terms(merchant(index), None, prices(index == 1), -1, &mut Changes::default()).unwrap();
            small.add_terms(merchant(index), None, prices(index == 1), -1, &mut setup).unwrap();
        }
        small.keep_working_set();
        let mut full_changes = Changes::default();
        let mut small_changes;
        for index in 0..6u8 {
            full.enroll_member(member(index), index.is_multiple_of(2).then(|| "gold".to_owned()), 0, &mut full_changes).unwrap();
            ledger_enroll(&mut small, &mut store, member(index), index);
        }
        let (mut full_reversible, mut full_holds) = (Vec::new(), Vec::new());
        let (mut small_reversible, mut small_holds) = (Vec::new(), Vec::new());
        let mut clock = 0i64;
        let mut time = 0usize;
        for steps in batches {
            clock += 10;
            if steps.iter().any(|step| matches!(step, Step::Expire)) {
                clock += 200;
            }
            let batch = Batch { steps: steps.into_iter().map(|step| { time += 1; (time, step) }).collect() };
            let full_answers = run_batch(&mut full, None, &batch, clock, &mut full_reversible, &mut full_holds, &mut full_changes);
            small_changes = Changes::default();
            let small_answers = run_batch(&mut small, Some(&mut store), &batch, clock, &mut small_reversible, &mut small_holds, &mut small_changes);
            prop_assert_eq!(&full_answers, &small_answers);
            prop_assert_eq!(small.head(), full.head());
            let balances = small_changes.balances(&small);
            let rows = small_changes.state_rows(&small).unwrap();
            store.write(&small_changes, &balances, &rows);
            small.evict(1, 1);
            small.forget_receipts_beyond(1);
            // Nothing beyond the budgets stays: not the members, references or receipts, and
            // none of what hangs off them.
            let held = small.in_memory();
            prop_assert!(held.members <= 1 && held.tiers <= 1 && held.aliases <= 1, "{:?}", held);
            prop_assert!(held.reversibles + held.holds <= 1, "{:?}", held);
            prop_assert_eq!(held.hold_deadlines, held.holds);
            prop_assert!(held.receipts <= 1, "{:?}", held);
            let member_accounts = small.accounts().filter(|(key, _)| key.member().is_some()).count();
            prop_assert!(member_accounts <= 2, "{} member accounts in memory", member_accounts);
            let other_accounts = small.accounts().count() - member_accounts;
            prop_assert!(held.balances <= 2 + 3 * other_accounts, "{:?}", held);
        }
        // Equal heads after every batch: the same journal, entry for entry (the hash chain).
        prop_assert_eq!(full.head().sequence as usize, full_changes.entries.len());
        // The store holds what the full ledger holds: balances of every account, and the state.
        for (key, id) in full.accounts() {
            prop_assert_eq!(store.accounts.get(key), Some(&id), "{}", key);
            for asset in [Asset::Points, Asset::Currency(full.currency()), Asset::Legacy(UnitCode::new("STAR").unwrap())] {
                prop_assert_eq!(
                    store.balances.get(&(id, asset)).copied().unwrap_or(0),
                    full.balance_of(id, asset),
                    "{} {}", key, asset.code()
                );
            }
        }
        let whole = full.whole_state_rows();
        // Every member's row is the full ledger's state of it: wallet, debt, tier, accounts
        // and balances.
        let full_members: BTreeMap<MemberId, MemberState> = whole.members.iter().map(|state| (state.member_id.clone(), state.clone())).collect();
        prop_assert_eq!(&store.member_states, &full_members);
        // What the journal says remains reversible of every earn, burn and capture is what
        // the full ledger holds.
        for sequence in store.entries.keys() {
            let derived = store.reversible(*sequence);
            prop_assert_eq!(derived.as_ref(), full.reversible(*sequence), "entry {}", sequence);
        }
        let stored_holds: BTreeMap<u64, OpenHold> = store.holds.iter().map(|(s, h)| (*s, OpenHold { taken: store.pieces.get(s).cloned().unwrap_or_default(), ..h.clone() })).collect();
        let full_holds_state: BTreeMap<u64, OpenHold> = whole.holds_opened.iter().cloned().collect();
        prop_assert_eq!(stored_holds, full_holds_state);
        prop_assert_eq!(full.check_invariants(), Ok(()));
    }
}

/// Enrols a member in the small ledger and writes it to the store, as the writer would.
fn ledger_enroll(ledger: &mut Ledger, store: &mut Store, member_id: MemberId, index: u8) {
    let needs = Needs {
        members: [member_id.clone()].into(),
        references: BTreeSet::new(),
    };
    let missing = ledger.missing(&needs);
    ledger.admit(store.load(&missing));
    let mut changes = Changes::default();
    ledger
        .enroll_member(
            member_id,
            index.is_multiple_of(2).then(|| "gold".to_owned()),
            0,
            &mut changes,
        )
        .unwrap();
    let balances = changes.balances(ledger);
    let rows = changes.state_rows(ledger).unwrap();
    store.write(&changes, &balances, &rows);
    ledger.evict(1, 1);
}

/// A writer that pipelines batches evicts after a commit while the next batch, applied but
/// not committed, is in memory: what that batch touched, and the receipts of entries after
/// the committed head, must stay.
#[test]
fn eviction_and_forgetting_keep_what_is_not_committed() {
    let mut ledger = Ledger::default();
    ledger.keep_working_set();
    // Each enrolment as a batch: the member is named, found missing, admitted and enrolled.
    let enroll = |ledger: &mut Ledger, member_id: MemberId| {
        let needs = Needs {
            members: [member_id.clone()].into(),
            references: BTreeSet::new(),
        };
        let missing = ledger.missing(&needs);
        ledger.admit(Store::default().load(&missing));
        ledger
            .enroll_member(member_id, None, 0, &mut Changes::default())
            .unwrap();
    };
    enroll(&mut ledger, member(0));
    // The batch in flight touches the second member after this tick.
    let tick = ledger.use_tick();
    enroll(&mut ledger, member(1));
    assert_eq!(ledger.resident().0, 2);
    ledger.evict_used_through(0, 0, tick);
    assert_eq!(ledger.resident().0, 1, "only the committed member leaves");
    assert_eq!(ledger.in_memory().members, 1);
    ledger.evict_used_through(0, 0, ledger.use_tick());
    assert_eq!(ledger.resident().0, 0);

    let receipt = |sequence: u64| Receipt {
        sequence,
        occurred_at_ms: 10,
        kind: coalition_domain::EntryKind::Earn,
        accepted_at_ms: 10,
        body_hash: [0; 32],
        member_id: member(0),
        points: 1,
        member_points_after: 1,
    };
    let key = |id: &str| {
        (
            merchant(0),
            MerchantTransactionId::new(id.to_owned()).unwrap(),
        )
    };
    ledger.remember_receipt(key("a"), receipt(1));
    ledger.remember_receipt(key("b"), receipt(2));
    ledger.remember_receipt(key("c"), receipt(3));
    // Entries 2 and 3 are not committed yet: they stay, whatever the budget or the age.
    assert_eq!(ledger.forget_committed_receipts_beyond(0, 1), 1);
    assert_eq!(ledger.forget_committed_receipts_before(i64::MAX, 1), 0);
    assert!(ledger.has_receipt(&key("b")) && ledger.has_receipt(&key("c")));
    assert_eq!(ledger.forget_committed_receipts_before(i64::MAX, 3), 2);
    assert_eq!(ledger.receipts_in_memory(), 0);
}
