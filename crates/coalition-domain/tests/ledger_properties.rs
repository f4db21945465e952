//! Property tests of the ledger state machine: for any sequence of enrolments, earns, burns
//! and member merges, every entry balances per asset, the chain verifies, lots sum to the
//! wallets, no wallet goes negative, and replaying the journal rebuilds the same state.

use coalition_domain::chain::{ChainHead, verify_chain};
use coalition_domain::ledger::{ApplyError, Outcome};
use coalition_domain::{
    Asset, Changes, Entry, Ledger, MemberId, MerchantId, RejectionReason, Submission,
    TransactionKind,
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
    /// The finance team sets new prices for a merchant.
    Reprice {
        merchant: u8,
        issue_cents: i64,
        redeem_cents: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6).prop_map(Step::Enroll),
        (
            0u8..3,
            0u8..6,
            1i64..500,
            0i64..1000,
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
        (0u8..3, 0u8..6, 1i64..700).prop_map(|(merchant, member, points)| Step::Burn {
            merchant,
            member,
            points
        }),
        (0u8..6, 0u8..6).prop_map(|(alias, target)| Step::Merge { alias, target }),
        Just(Step::ForgetReceipts),
        (0u8..2, 0i64..300, 0i64..300).prop_map(|(merchant, issue_cents, redeem_cents)| {
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
        merchant_transaction_id: coalition_domain::MerchantTransactionId::new(id.clone()).unwrap(),
        kind,
        member_id: member(member_index),
        points,
        spend_minor: None,
        occurred_at_ms: occurred,
        store_id: "s".into(),
        terminal_id: "t".into(),
        body_hash: coalition_domain::body_hash(format!("{id}/{points}/{member_index}").as_bytes()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_sequence_keeps_the_books(steps in proptest::collection::vec(step(), 1..80)) {
        let mut ledger = Ledger::default();
        let mut changes = Changes::default();
        // Merchants 0 and 1 have terms; merchant 2 never does.
        for merchant in 0..2u8 {
            ledger
                .add_terms(MerchantId::new(format!("merchant-{merchant}")).unwrap(), None, coalition_domain::Prices { issue_price_minor_per_point: Decimal::new(105, 2), redeem_price_minor_per_point: Decimal::new(95, 2), fee_minor_per_point: Decimal::new(10, 2) }, -1, &mut changes)
                .unwrap();
        }
        let mut earned: Vec<(u8, u8, i64, String, i64)> = Vec::new();
        for (time, step) in steps.into_iter().enumerate() {
            let now = time as i64;
            // What the writer does before a batch: load the receipts it lacks from the journal.
            for entry in &changes.entries {
                if let Some((key, receipt)) = coalition_domain::Receipt::of_entry(entry)
                    && !ledger.has_receipt(&key)
                {
                    ledger.remember_receipt(key, receipt);
                }
            }
            match step {
                Step::Reprice { merchant, issue_cents, redeem_cents } => {
                    let terms = ledger
                        .add_terms(MerchantId::new(format!("merchant-{merchant}")).unwrap(), None, coalition_domain::Prices { issue_price_minor_per_point: Decimal::new(issue_cents, 2), redeem_price_minor_per_point: Decimal::new(redeem_cents, 2), fee_minor_per_point: Decimal::new(issue_cents % 7, 2) }, now, &mut changes)
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
                    let before_points = ledger.member_points(&member(index));
                    match ledger.apply(&submission(merchant, index, TransactionKind::Earn, points, id.clone(), occurred), now, &mut changes) {
                        Ok(Outcome::Applied(receipt)) => {
                            prop_assert_eq!(receipt.member_points_after, before_points + points);
                            earned.push((merchant, index, points, id, occurred));
                        }
                        Err(ApplyError::Rejected(rejection)) => prop_assert!(
                            matches!(rejection.reason, RejectionReason::MemberUnknown | RejectionReason::TermsMissing),
                            "{rejection:?}"
                        ),
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
        }

        // Every entry balances, and its money leg is its points times the price of the terms
        // in force at its acceptance, rounded up for the payer and down for the payee.
        for entry in &changes.entries {
            prop_assert_eq!(entry.check_balanced(), Ok(()));
            let Some(origin) = &entry.origin else { continue };
            let terms = ledger.terms_at(&origin.merchant_id, entry.accepted_at_ms).unwrap();
            prop_assert_eq!(Some(terms.version), entry.terms_version);
            let price = match entry.kind {
                coalition_domain::EntryKind::Burn => terms.redeem_price_minor_per_point,
                _ => terms.issue_price_minor_per_point,
            };
            let exact = Decimal::from(entry.points) * price;
            let fee = Decimal::from(entry.points) * terms.fee_minor_per_point;
            let money: Vec<i64> = entry.postings.iter().filter(|p| p.asset != Asset::Points).map(|p| p.amount).collect();
            let charged: i64 = -money.iter().filter(|a| **a < 0).sum::<i64>();
            prop_assert_eq!(Decimal::from(charged), exact.ceil() + fee.ceil());
            let rounding: i64 = entry.postings.iter().filter(|p| p.account == coalition_domain::AccountKey::OperatorRounding).map(|p| p.amount).sum();
            prop_assert_eq!(Decimal::from(charged - rounding), exact.floor() + fee.floor());
            let fees: i64 = entry.postings.iter().filter(|p| p.account == coalition_domain::AccountKey::OperatorFees).map(|p| p.amount).sum();
            prop_assert_eq!(Decimal::from(fees), fee.floor());
        }
        let head = verify_chain(ChainHead::GENESIS, changes.entries.iter()).unwrap();
        prop_assert_eq!(head, ledger.head());

        // Replaying the journal rebuilds the same balances.
        let mut replayed = Ledger::default();
        for terms in &changes.terms {
            replayed.restore_terms(terms.clone());
        }
        for (id, key) in &changes.accounts {
            replayed.restore_account(*id, key.clone());
        }
        for record in &changes.members {
            replayed.restore_member(record.member_id.clone());
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
            coalition_domain::Prices {
                issue_price_minor_per_point: Decimal::ONE,
                redeem_price_minor_per_point: Decimal::ONE,
                fee_minor_per_point: Decimal::ZERO,
            },
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
