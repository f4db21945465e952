//! Property tests of the ledger state machine: for any sequence of enrolments, earns, burns,
//! reversals, holds, captures, voids, hold expiries, expiry runs and member merges, every
//! entry balances per asset, the chain verifies, lots (less debt) sum to the wallets, no
//! wallet goes negative except by the reversal policy, money legs are points times the
//! recorded price within the rounding account, and replaying the journal rebuilds the state.

use coalition_domain::chain::{ChainHead, verify_chain};
use coalition_domain::ledger::{ApplyError, Outcome};
use coalition_domain::settlement;
use std::collections::{BTreeMap, BTreeSet};

use coalition_domain::{
    AccountKey, Asset, Changes, Entry, EntryKind, Ledger, LedgerPolicy, MemberId, MerchantId,
    MerchantTerms, MerchantTransactionId, Prices, RejectionReason, Submission, TransactionKind,
    UnitCode,
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
        occurred: i64,
        retry_of: Option<u8>,
    },
    /// An earn sent with a spend and no points.
    EarnBySpend {
        merchant: u8,
        member: u8,
        spend: i64,
    },
    Burn {
        merchant: u8,
        member: u8,
        points: i64,
    },
    Merge {
        alias: u8,
        target: u8,
    },
    /// The writer forgets receipts to bound memory; the journal still knows them.
    ForgetReceipts,
    /// A merchant reverses points of the n-th accepted earn, burn or capture.
    Reverse {
        merchant: u8,
        target: u8,
        points: i64,
    },
    Hold {
        merchant: u8,
        member: u8,
        points: i64,
    },
    /// The hold's merchant captures points of the n-th hold, or voids it when `points` is 0.
    Settle {
        target: u8,
        points: i64,
    },
    /// Time passes far enough for holds and lots to expire; the expiry run is made twice.
    Expire,
    /// Merchant 0 pays money in.
    Fund(i64),
    /// A member exchanges legacy units of merchant 1 in (`units` > 0) or points out.
    Exchange {
        member: u8,
        units: i64,
        points: i64,
    },
    /// The finance team sets new prices for a merchant.
    Reprice {
        merchant: u8,
        issue_cents: i64,
        redeem_cents: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..7).prop_map(Step::Enroll),
        6 => (
            0u8..3,
            0u8..6,
            1i64..500,
            0i64..50,
            proptest::option::of(0u8..20)
        )
            .prop_map(
                |(merchant, member, points, occurred, retry_of)| Step::Earn {
                    merchant,
                    member,
                    points,
                    occurred,
                    retry_of
                }
            ),
        3 => (0u8..3, 0u8..6, 1i64..50_000).prop_map(|(merchant, member, spend)| Step::EarnBySpend {
            merchant,
            member,
            spend
        }),
        3 => (0u8..3, 0u8..6, 1i64..700).prop_map(|(merchant, member, points)| Step::Burn {
            merchant,
            member,
            points
        }),
        1 => (0u8..6, 0u8..6).prop_map(|(alias, target)| Step::Merge { alias, target }),
        1 => Just(Step::ForgetReceipts),
        4 => (0u8..3, 0u8..8, 1i64..400).prop_map(|(merchant, target, points)| Step::Reverse {
            merchant,
            target,
            points
        }),
        3 => (0u8..3, 0u8..6, 1i64..400).prop_map(|(merchant, member, points)| Step::Hold {
            merchant,
            member,
            points
        }),
        3 => (0u8..3, prop_oneof![Just(0i64), 1i64..300]).prop_map(|(target, points)| Step::Settle { target, points }),
        1 => Just(Step::Expire),
        1 => (1i64..3_000).prop_map(Step::Fund),
        2 => (0u8..6, prop_oneof![Just(0i64), 1i64..2_000], 1i64..500).prop_map(|(member, units, points)| Step::Exchange { member, units, points }),
        1 => (0u8..2, 0i64..300, 0i64..300).prop_map(|(merchant, issue_cents, redeem_cents)| {
            Step::Reprice {
                merchant,
                issue_cents,
                redeem_cents,
            }
        }),
    ]
}

fn member(index: u8) -> MemberId {
    MemberId::new(format!("m-{index}")).unwrap()
}

fn submission(
    merchant: u8,
    member_index: u8,
    kind: TransactionKind,
    points: i64,
    id: String,
    occurred: i64,
) -> Submission {
    Submission {
        merchant_id: MerchantId::new(format!("merchant-{merchant}")).unwrap(),
        merchant_transaction_id: MerchantTransactionId::new(id.clone()).unwrap(),
        kind,
        member_id: member(member_index),
        points,
        spend_minor: None,
        occurred_at_ms: occurred,
        store_id: "s".into(),
        terminal_id: "t".into(),
        refers_to: None,
        legacy_units: 0,
        body_hash: coalition_domain::body_hash(format!("{id}/{points}/{member_index}").as_bytes()),
        refused_if_new: None,
        envelope: None,
    }
}

/// Merchant 1 may reverse others' transactions; merchant 0 has a credit limit.
fn prices(issue_cents: i64, redeem_cents: i64, fee_cents: i64, cross: bool) -> Prices {
    Prices {
        issue_price_minor_per_point: Decimal::new(issue_cents, 2),
        redeem_price_minor_per_point: Decimal::new(redeem_cents, 2),
        fee_minor_per_point: Decimal::new(fee_cents, 2),
        cross_merchant_reversals: cross,
        credit_limit_minor: (!cross).then_some(CREDIT_LIMIT),
        earn_points_per_minor: Some(Decimal::new(1, 2)),
        // Merchant 1 has a legacy unit at 0.35 points each.
        exchange: cross.then(|| (UnitCode::new("STAR").unwrap(), Decimal::new(35, 2))),
        // Merchant 1 gets half the breakage on its issue back at settlement.
        breakage_share: if cross {
            Decimal::new(5, 1)
        } else {
            Decimal::ZERO
        },
    }
}

const CREDIT_LIMIT: i64 = 1_500;

fn merchant(index: u8) -> MerchantId {
    MerchantId::new(format!("merchant-{index}")).unwrap()
}

/// The money an earn (`issue`) or burn of `points` at `terms` leaves on each account, by the
/// rounding rule: (merchant settlement, float, fees, rounding).
/// The money an issue or redemption leaves on the merchant's settlement and fee accounts,
/// the float, the operator's fees and the rounding account.
fn expected_money(issue: bool, points: i64, terms: &MerchantTerms) -> (i64, i64, i64, i64, i64) {
    let price = if issue {
        terms.issue_price_minor_per_point
    } else {
        terms.redeem_price_minor_per_point
    };
    let exact = Decimal::from(points) * price;
    let fee = Decimal::from(points) * terms.fee_minor_per_point;
    let int = |value: Decimal| i64::try_from(value).unwrap();
    let (charged, paid) = (int(exact.ceil()), int(exact.floor()));
    let (fee_charged, fee_paid) = (int(fee.ceil()), int(fee.floor()));
    let rounding = charged - paid + fee_charged - fee_paid;
    if issue {
        (-charged, -fee_charged, paid, fee_paid, rounding)
    } else {
        (paid, -fee_charged, -charged, fee_paid, rounding)
    }
}

/// Per original entry: its kind, merchant, terms version, points, points reversed, and the
/// money it and its reversals left on each account.
type OriginalMoney = (
    EntryKind,
    MerchantId,
    u32,
    i64,
    i64,
    BTreeMap<AccountKey, i64>,
);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_sequence_keeps_the_books(steps in proptest::collection::vec(step(), 1..80)) {
        let mut ledger = Ledger::default();
        // Short lives so that holds and lots expire within a run.
        ledger.set_policy(LedgerPolicy { hold_timeout_ms: 100, points_lifetime_ms: Some(300), ..LedgerPolicy::default() });
        let mut changes = Changes::default();
        // Merchants 0 and 1 have terms, and merchant 1 may reverse others' transactions;
        // merchant 2 never has terms.
        for index in 0..2u8 {
            ledger
                .add_terms(merchant(index), None, prices(105, 95, 10, index == 1), -1, &mut changes)
                .unwrap();
        }
        // Even members are gold; gold earns 1.5×, and merchant 0 runs a double-points
        // campaign for purchases before time 300.
        for index in 0..6 {
            let tier = (index % 2 == 0).then(|| "gold".to_owned());
            ledger.enroll_member(member(index), tier, 0, &mut changes).unwrap();
        }
        ledger
            .add_earn_rules(
                None,
                [("gold".to_owned(), Decimal::new(15, 1))].into(),
                vec![coalition_domain::Campaign {
                    name: "double".into(),
                    merchant_id: Some(merchant(0)),
                    starts_at_ms: 0,
                    ends_at_ms: 300,
                    multiplier: Decimal::from(2),
                }],
                -1,
                &mut changes,
            )
            .unwrap();
        let mut earned: Vec<(u8, u8, i64, String, i64)> = Vec::new();
        // Accepted earns, burns and captures, and holds: (merchant, transaction id, member).
        let mut reversible: Vec<(u8, String, u8)> = Vec::new();
        let mut holds: Vec<(u8, String, u8)> = Vec::new();
        // Members that had an earn reversed: the only ones whose wallet may go negative.
        let mut reversed_earn_members: BTreeSet<MemberId> = BTreeSet::new();
        let mut clock = 0i64;
        for (time, step) in steps.into_iter().enumerate() {
            clock += 10;
            let now = clock;
            // What the writer does before a batch: load the receipts it lacks from the journal.
            for entry in &changes.entries {
                if let Some((key, receipt)) = coalition_domain::Receipt::of_entry(entry)
                    && !ledger.has_receipt(&key)
                {
                    ledger.remember_receipt(key, receipt);
                }
            }
            match step {
                Step::Reprice { merchant: index, issue_cents, redeem_cents } => {
                    let terms = ledger
                        .add_terms(merchant(index), None, prices(issue_cents, redeem_cents, issue_cents % 7, index == 1), now, &mut changes)
                        .unwrap();
                    prop_assert!(terms.version >= 2);
                }
                Step::ForgetReceipts => {
                    ledger.forget_receipts_before(i64::MAX);
                    prop_assert_eq!(ledger.receipts_in_memory(), 0);
                }
                Step::Enroll(index) => {
                    let _ = ledger.enroll_member(member(index), None, now, &mut changes);
                }
                Step::Earn { merchant, member: index, points, occurred, retry_of } => {
                    // Sometimes repeat an earlier earn exactly: it must come back as a duplicate.
                    if let Some(retry) = retry_of.and_then(|r| earned.get(usize::from(r)).cloned()) {
                        let (merchant, index, points, id, occurred) = retry;
                        let before = ledger.head();
                        let outcome = ledger.apply(&submission(merchant, index, TransactionKind::Earn, points, id, occurred), now, &mut changes);
                        prop_assert!(matches!(outcome, Ok(Outcome::Duplicate(_))), "{outcome:?}");
                        prop_assert_eq!(ledger.head(), before);
                        continue;
                    }
                    let id = format!("earn-{time}");
                    // `occurred` is how long before now the purchase happened.
                    let occurred = now - occurred;
                    let before_points = ledger.member_points(&member(index));
                    match ledger.apply(&submission(merchant, index, TransactionKind::Earn, points, id.clone(), occurred), now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert_eq!(receipt.member_points_after, before_points + points);
                            if merchant == 0 {
                                // Merchant 0 (credit-limited) never issues past its limit.
                                prop_assert!(ledger.merchant_position(&self::merchant(0)) >= -CREDIT_LIMIT);
                            }
                            earned.push((merchant, index, points, id.clone(), occurred));
                            reversible.push((merchant, id, index));
                        }
                        Err(ApplyError::Rejected(rejection)) => prop_assert!(
                            matches!(rejection.reason, RejectionReason::MemberUnknown | RejectionReason::TermsMissing | RejectionReason::CreditLimitExceeded),
                            "{rejection:?}"
                        ),
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::EarnBySpend { merchant, member: index, spend } => {
                    let mut body = submission(merchant, index, TransactionKind::Earn, 0, format!("spend-{time}"), now);
                    body.spend_minor = Some(spend);
                    let owner = ledger.resolve_member(&member(index));
                    let gold = owner.as_str().trim_start_matches("m-").parse::<u8>().unwrap() % 2 == 0;
                    let multiplier = ledger
                        .earn_rules_at(now)
                        .unwrap()
                        .multiplier(gold.then_some("gold"), &self::merchant(merchant), now);
                    let expected = (Decimal::from(spend) * Decimal::new(1, 2) * multiplier).floor();
                    match ledger.apply(&body, now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert_eq!(Decimal::from(receipt.points), expected);
                            prop_assert_eq!(changes.entries.last().unwrap().earn_rule_version, Some(1));
                            reversible.push((merchant, format!("spend-{time}"), index));
                        }
                        Err(ApplyError::Rejected(rejection)) => {
                            prop_assert!(matches!(
                                rejection.reason,
                                RejectionReason::SpendEarnsNoPoints | RejectionReason::TermsMissing | RejectionReason::CreditLimitExceeded
                            ), "{rejection:?}");
                            if rejection.reason == RejectionReason::SpendEarnsNoPoints {
                                prop_assert_eq!(expected, Decimal::ZERO);
                            }
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Burn { merchant, member: index, points } => {
                    let before_points = ledger.member_points(&member(index));
                    let before_head = ledger.head();
                    match ledger.apply(&submission(merchant, index, TransactionKind::Burn, points, format!("burn-{time}"), 0), now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert!(points <= before_points);
                            prop_assert_eq!(receipt.member_points_after, before_points - points);
                            reversible.push((merchant, format!("burn-{time}"), index));
                        }
                        Err(ApplyError::Rejected(rejection)) => {
                            prop_assert!(matches!(
                                rejection.reason,
                                RejectionReason::MemberUnknown | RejectionReason::PointsInsufficient | RejectionReason::TermsMissing
                            ));
                            if rejection.reason == RejectionReason::PointsInsufficient {
                                prop_assert!(points > before_points);
                            }
                            prop_assert_eq!(ledger.head(), before_head);
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Hold { merchant, member: index, points } => {
                    let before_points = ledger.member_points(&member(index));
                    let id = format!("hold-{time}");
                    match ledger.apply(&submission(merchant, index, TransactionKind::Hold, points, id.clone(), 0), now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert_eq!(receipt.member_points_after, before_points - points);
                            holds.push((merchant, id, index));
                        }
                        Err(ApplyError::Rejected(rejection)) => {
                            prop_assert!(matches!(
                                rejection.reason,
                                RejectionReason::MemberUnknown | RejectionReason::PointsInsufficient | RejectionReason::TermsMissing
                            ));
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Settle { target, points } => {
                    // Count from the newest, so that most holds are still open.
                    let Some(at) = holds.len().checked_sub(1 + usize::from(target)) else { continue };
                    let (merchant, hold_id, index) = holds[at].clone();
                    let kind = if points == 0 { TransactionKind::Void } else { TransactionKind::Capture };
                    let id = format!("settle-{time}");
                    let mut body = submission(merchant, index, kind, points, id.clone(), 0);
                    body.refers_to = Some((self::merchant(merchant), MerchantTransactionId::new(hold_id).unwrap()));
                    let before_points = ledger.member_points(&member(index));
                    match ledger.apply(&body, now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert!(receipt.member_points_after >= before_points);
                            holds.remove(at);
                            if kind == TransactionKind::Capture {
                                reversible.push((merchant, id, index));
                            }
                        }
                        Err(ApplyError::Rejected(rejection)) => prop_assert!(matches!(
                            rejection.reason,
                            RejectionReason::MemberUnknown | RejectionReason::HoldNotOpen | RejectionReason::CaptureExceedsHold | RejectionReason::ReferenceUnknown | RejectionReason::ReferenceNotApplicable
                        ), "{rejection:?}"),
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Reverse { merchant: by, target, points } => {
                    // Count from the newest, so that burns and captures are reversed too.
                    let Some((original_merchant, original_id, index)) = reversible.len().checked_sub(1 + usize::from(target)).and_then(|at| reversible.get(at)).cloned() else { continue };
                    let mut body = submission(by, index, TransactionKind::Reversal, points, format!("reverse-{time}"), 0);
                    body.refers_to = Some((merchant(original_merchant), MerchantTransactionId::new(original_id.clone()).unwrap()));
                    let before_head = ledger.head();
                    match ledger.apply(&body, now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert!(by == original_merchant || by == 1);
                            if receipt.kind == EntryKind::EarnReversal {
                                reversed_earn_members.insert(ledger.resolve_member(&member(index)));
                            }
                        }
                        Err(ApplyError::Rejected(rejection)) => {
                            prop_assert!(matches!(
                                rejection.reason,
                                RejectionReason::MemberUnknown | RejectionReason::ReversalExceedsRemaining | RejectionReason::ReversalNotPermitted | RejectionReason::ReferenceUnknown | RejectionReason::ReferenceNotApplicable
                            ), "{rejection:?}");
                            if rejection.reason == RejectionReason::ReversalNotPermitted {
                                prop_assert!(by != original_merchant && by != 1);
                            }
                            prop_assert_eq!(ledger.head(), before_head);
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Exchange { member: index, units, points } => {
                    let outgoing = units == 0;
                    let kind = if outgoing { TransactionKind::ExchangeOut } else { TransactionKind::ExchangeIn };
                    let mut body = submission(1, index, kind, if outgoing { points } else { 0 }, format!("exchange-{time}"), now);
                    body.legacy_units = units;
                    let before_points = ledger.member_points(&member(index));
                    let rate = Decimal::new(35, 2);
                    match ledger.apply(&body, now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            let entry = changes.entries.last().unwrap();
                            let star = Asset::Legacy(UnitCode::new("STAR").unwrap());
                            let legacy_moved: i64 = entry.postings.iter().filter(|p| p.asset == star && p.amount > 0).map(|p| p.amount).sum();
                            if outgoing {
                                prop_assert_eq!(receipt.member_points_after, before_points - points);
                                prop_assert_eq!(Decimal::from(legacy_moved), (Decimal::from(points) / rate).floor());
                            } else {
                                prop_assert_eq!(Decimal::from(receipt.points), (Decimal::from(units) * rate).floor());
                                prop_assert_eq!(legacy_moved, units);
                                prop_assert_eq!(receipt.member_points_after, before_points + receipt.points);
                            }
                        }
                        Err(ApplyError::Rejected(rejection)) => prop_assert!(matches!(
                            rejection.reason,
                            RejectionReason::ExchangeTooSmall | RejectionReason::PointsInsufficient
                        ), "{rejection:?}"),
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Step::Fund(amount) => {
                    let before = ledger.merchant_position(&merchant(0));
                    ledger.fund_merchant(&merchant(0), amount, "transfer", now, &mut changes).unwrap();
                    prop_assert_eq!(ledger.merchant_position(&merchant(0)), before + amount);
                }
                Step::Expire => {
                    clock += 200;
                    let now = clock;
                    ledger.expire_holds(now, &mut changes).unwrap();
                    let outstanding_before: i64 = ledger.outstanding_by_issuer().values().sum();
                    let first = ledger.expire_lots(now, &mut changes).unwrap();
                    let outstanding_after: i64 = ledger.outstanding_by_issuer().values().sum();
                    prop_assert_eq!(outstanding_before - outstanding_after, first.points);
                    let before_head = ledger.head();
                    let second = ledger.expire_lots(now, &mut changes).unwrap();
                    prop_assert_eq!(second.entries, 0, "a second expiry run booked something");
                    prop_assert_eq!(ledger.head(), before_head);
                }
                Step::Merge { alias, target } => {
                    let total_before = ledger.member_points(&member(alias)) + ledger.member_points(&member(target));
                    let same = ledger.resolve_member(&member(alias)) == ledger.resolve_member(&member(target));
                    if ledger.alias_member(member(alias), member(target), now, &mut changes).is_ok() && !same {
                        prop_assert_eq!(ledger.member_points(&member(target)), total_before);
                        prop_assert_eq!(ledger.member_points(&member(alias)), total_before);
                    }
                }
            }
            prop_assert_eq!(ledger.check_invariants(), Ok(()));
            for index in 0..6 {
                let owner = ledger.resolve_member(&member(index));
                if ledger.member_points(&owner) < 0 {
                    prop_assert!(reversed_earn_members.contains(&owner), "{} is negative without a reversed earn", owner);
                }
            }
        }

        // Money per original: an earn, burn or capture and all its reversals leave exactly
        // the money of the points not reversed, at the original's prices, on every account.
        let mut by_original: BTreeMap<u64, OriginalMoney> = BTreeMap::new();
        for entry in &changes.entries {
            let money = entry.postings.iter().filter(|p| p.asset != Asset::Points);
            match entry.kind {
                EntryKind::Earn | EntryKind::Burn | EntryKind::Capture => {
                    let slot = by_original.entry(entry.sequence).or_insert((entry.kind, entry.merchant_id().unwrap().clone(), entry.terms_version.unwrap(), entry.points, 0, BTreeMap::new()));
                    for posting in money {
                        *slot.5.entry(posting.account.clone()).or_default() += posting.amount;
                    }
                }
                EntryKind::EarnReversal | EntryKind::BurnReversal => {
                    let slot = by_original.get_mut(&entry.refers_to.unwrap()).unwrap();
                    prop_assert_eq!(entry.terms_version, Some(slot.2));
                    slot.4 += entry.points;
                    for posting in money {
                        *slot.5.entry(posting.account.clone()).or_default() += posting.amount;
                    }
                }
                EntryKind::Hold | EntryKind::Void | EntryKind::HoldExpiry => {
                    prop_assert_eq!(money.count(), 0, "a hold or release moved money");
                }
                _ => {}
            }
        }
        for (sequence, (kind, merchant_id, version, points, reversed, money)) in by_original {
            let terms = &ledger.merchant_terms(&merchant_id)[version as usize - 1];
            let (settlement, merchant_fees, float, fees, rounding) = expected_money(kind == EntryKind::Earn, points - reversed, terms);
            let on = |key: AccountKey| money.get(&key).copied().unwrap_or(0);
            prop_assert_eq!(on(AccountKey::MerchantSettlement(merchant_id.clone())), settlement, "entry {}", sequence);
            prop_assert_eq!(on(AccountKey::MerchantFees(merchant_id.clone())), merchant_fees, "entry {}", sequence);
            prop_assert_eq!(on(AccountKey::OperatorFloat), float, "entry {}", sequence);
            prop_assert_eq!(on(AccountKey::OperatorFees), fees, "entry {}", sequence);
            prop_assert_eq!(on(AccountKey::OperatorRounding), rounding, "entry {}", sequence);
        }

        // Every entry balances, and its money leg is its points times the price of the terms
        // in force at its acceptance, rounded up for the payer and down for the payee.
        for entry in &changes.entries {
            prop_assert_eq!(entry.check_balanced(), Ok(()));
            if !matches!(entry.kind, EntryKind::Earn | EntryKind::Burn) {
                continue;
            }
            let Some(origin) = &entry.origin else { continue };
            let terms = ledger.terms_at(&origin.merchant_id, entry.accepted_at_ms).unwrap();
            prop_assert_eq!(Some(terms.version), entry.terms_version);
            let price = match entry.kind {
                EntryKind::Burn => terms.redeem_price_minor_per_point,
                _ => terms.issue_price_minor_per_point,
            };
            let exact = Decimal::from(entry.points) * price;
            let fee = Decimal::from(entry.points) * terms.fee_minor_per_point;
            let money: Vec<i64> = entry.postings.iter().filter(|p| p.asset != Asset::Points).map(|p| p.amount).collect();
            let charged: i64 = -money.iter().filter(|a| **a < 0).sum::<i64>();
            prop_assert_eq!(Decimal::from(charged), exact.ceil() + fee.ceil());
            let rounding: i64 = entry.postings.iter().filter(|p| p.account == AccountKey::OperatorRounding).map(|p| p.amount).sum();
            prop_assert_eq!(Decimal::from(charged - rounding), exact.floor() + fee.floor());
            let fees: i64 = entry.postings.iter().filter(|p| p.account == AccountKey::OperatorFees).map(|p| p.amount).sum();
            prop_assert_eq!(Decimal::from(fees), fee.floor());
        }
        let head = verify_chain(ChainHead::GENESIS, changes.entries.iter()).unwrap();
        prop_assert_eq!(head, ledger.head());

        // Replaying the journal rebuilds the same balances.
        let mut replayed = Ledger::default();
        for terms in &changes.terms {
            replayed.restore_terms(terms.clone());
        }
        for rules in &changes.earn_rules {
            replayed.restore_earn_rules(rules.clone());
        }
        for (id, key) in &changes.accounts {
            replayed.restore_account(*id, key.clone());
        }
        for record in &changes.members {
            replayed.restore_member(record.member_id.clone(), record.tier.clone());
        }
        for record in &changes.aliases {
            replayed.restore_alias(record.alias.clone(), record.target.clone());
        }
        for entry in changes.entries.clone() {
            replayed.replay(entry).unwrap();
        }
        replayed.finish_restore();
        prop_assert_eq!(replayed.head(), ledger.head());
        prop_assert_eq!(replayed.check_invariants(), Ok(()));
        let money = Asset::Currency(ledger.currency());
        for (key, id) in ledger.accounts() {
            prop_assert_eq!(replayed.balance_of(id, Asset::Points), ledger.balance_of(id, Asset::Points), "{}", key);
            prop_assert_eq!(replayed.balance_of(id, money), ledger.balance_of(id, money), "{}", key);
        }
        prop_assert_eq!(replayed.outstanding_by_issuer(), ledger.outstanding_by_issuer());

        // Settling everything booked as one period: the nets through the operator sum to
        // exactly zero (compute refuses otherwise), the matrix ties to each redeemer's
        // redemptions, and the closing entry clears every merchant's settlement and fee
        // accounts into what is payable, leaving breakage less the share paid back.
        let issuer_of: BTreeMap<(u64, u32), String> = changes
            .lots
            .iter()
            .map(|lot| ((lot.lot_id.entry_sequence, lot.lot_id.index), lot.issuer.as_str().to_owned()))
            .collect();
        let kinds: BTreeMap<u64, EntryKind> = changes.entries.iter().map(|e| (e.sequence, e.kind)).collect();
        let attributions: Vec<settlement::Attribution> = changes
            .lot_consumptions
            .iter()
            .filter(|c| !c.repaid && matches!(kinds[&c.entry_sequence], EntryKind::Burn | EntryKind::Capture | EntryKind::ExchangeOut))
            .map(|c| settlement::Attribution {
                entry_sequence: c.entry_sequence,
                issuer: issuer_of[&(c.lot_id.entry_sequence, c.lot_id.index)].clone(),
                points: c.points,
            })
            .collect();
        let everything = settlement::Period { label: "everything".into(), start_ms: i64::MIN, end_ms: i64::MAX };
        let shares: BTreeMap<String, Decimal> = [(merchant(1).as_str().to_owned(), Decimal::new(5, 1))].into();
        let entries = changes.entries.clone();
        let settled = settlement::compute(&everything, ledger.currency(), coalition_domain::chain::GENESIS_HASH, &entries, &attributions, &shares);
        let settled = match settled {
            Ok(settled) => settled,
            Err(error) => return Err(TestCaseError::fail(format!("settlement: {error}"))),
        };
        prop_assert_eq!(settled.merchants.iter().map(|m| m.net_minor).sum::<i64>() + settled.operator.net_minor, 0);
        // Page by page (as the server reads a period) it is the same settlement, whatever
        // the page length.
        for page_len in [1usize, 2, 7] {
            let mut builder = settlement::SettlementBuilder::new(&everything, ledger.currency(), coalition_domain::chain::GENESIS_HASH);
            for page in entries.chunks(page_len) {
                let (first, last) = (page[0].sequence, page[page.len() - 1].sequence);
                let page_attributions: Vec<_> = attributions.iter().filter(|a| a.entry_sequence >= first && a.entry_sequence <= last).cloned().collect();
                if let Err(error) = builder.add_page(page, &page_attributions) {
                    return Err(TestCaseError::fail(format!("page of {page_len}: {error}")));
                }
            }
            match builder.finish(&shares) {
                Ok(paged) => prop_assert_eq!(&paged, &settled, "pages of {}", page_len),
                Err(error) => return Err(TestCaseError::fail(format!("pages of {page_len}: {error}"))),
            }
        }
        for line in &settled.merchants {
            let from_matrix: i64 = settled.matrix.iter().filter(|cell| cell.redeemer == line.merchant_id).map(|cell| cell.value_minor).sum();
            prop_assert_eq!(from_matrix, line.redemptions_minor, "matrix of {}", line.merchant_id);
        }
        let positions: Vec<i64> = settled.merchants.iter().map(|line| ledger.merchant_position(&MerchantId::new(line.merchant_id.clone()).unwrap())).collect();
        let finalised = ledger.book_settlement(settled.clone(), clock + 10, &mut changes).unwrap();
        // Settling says what is owed; it pays nothing: a merchant's position (what credit
        // limits look at) moves only by the breakage share it is now owed.
        for (line, before) in settled.merchants.iter().zip(positions) {
            let after = ledger.merchant_position(&MerchantId::new(line.merchant_id.clone()).unwrap());
            prop_assert_eq!(after, before + line.breakage_share_minor, "position of {}", line.merchant_id);
        }
        prop_assert_eq!(finalised.closing_sequence.is_some(), !settlement::closing_postings(&settled, ledger.currency()).is_empty());
        if let Some(sequence) = finalised.closing_sequence {
            let closing = changes.entries.last().unwrap();
            prop_assert_eq!(closing.sequence, sequence);
            prop_assert_eq!(closing.kind, EntryKind::Settlement);
            prop_assert_eq!(closing.check_balanced(), Ok(()));
        }
        prop_assert_eq!(ledger.check_invariants(), Ok(()));
        let balance = |key: AccountKey| {
            ledger.accounts().find(|(k, _)| **k == key).map_or(0, |(_, id)| ledger.balance_of(id, money))
        };
        for line in &settled.merchants {
            let id = MerchantId::new(line.merchant_id.clone()).unwrap();
            prop_assert_eq!(balance(AccountKey::MerchantSettlement(id.clone())), 0);
            prop_assert_eq!(balance(AccountKey::MerchantFees(id.clone())), 0);
            prop_assert_eq!(balance(AccountKey::MerchantPayable(id.clone())), line.net_minor);
            prop_assert_eq!(balance(AccountKey::MerchantBreakage(id)), line.breakage_minor - line.breakage_share_minor);
        }
        // Paying out what is payable clears it, and settling the payouts' period nets nothing.
        let before_payouts = changes.entries.len();
        for line in settled.merchants.iter().filter(|line| line.net_minor > 0) {
            let id = MerchantId::new(line.merchant_id.clone()).unwrap();
            ledger.pay_out(&id, line.net_minor, "transfer", clock + 20, &mut changes).unwrap();
            prop_assert_eq!(ledger.merchant_payable(&id), 0);
        }
        prop_assert_eq!(ledger.check_invariants(), Ok(()));
        let payouts = &changes.entries[before_payouts..];
        let after = settlement::compute(&everything, ledger.currency(), payouts.first().map_or([0; 32], |entry| entry.previous_hash), payouts, &[], &shares);
        prop_assert!(matches!(&after, Ok(nothing) if nothing.merchants.is_empty() && nothing.operator.net_minor == 0), "{:?}", after);
    }
}

#[test]
fn an_altered_entry_breaks_the_chain() {
    let mut ledger = Ledger::default();
    let mut changes = Changes::default();
    ledger
        .add_terms(
            MerchantId::new("merchant-0").unwrap(),
            None,
            prices(100, 100, 0, true),
            -1,
            &mut changes,
        )
        .unwrap();
    ledger
        .enroll_member(member(1), None, 0, &mut changes)
        .unwrap();
    for index in 0..3 {
        ledger
            .apply(
                &submission(0, 1, TransactionKind::Earn, 10, format!("e{index}"), 0),
                1,
                &mut changes,
            )
            .unwrap();
    }
    let mut entries: Vec<Entry> = changes.entries.clone();
    assert!(verify_chain(ChainHead::GENESIS, entries.iter()).is_ok());
    entries[1].points = 11;
    assert!(verify_chain(ChainHead::GENESIS, entries.iter()).is_err());
}
