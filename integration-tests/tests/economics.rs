//! Reversals, holds and expiry through the gRPC API on both backends: points and money go
//! back at the original prices, a reversed earn already spent leaves a debt that blocks
//! burns until repaid, parking holds capture at locked prices, release and time out, and the
//! expiry run books breakage to the issuer exactly once. Every test ends with the ledger
//! check and a restart (replay) that must rebuild the same balances.
//!
//! Longer than 800 lines: one scenario per test, each run on both backends, kept in one
//! file per area so that the scenarios share their helpers.

use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestDatabase, TestServer, accepted, on_both_backends, rejection, test_config,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

async fn money(server: &TestServer, kind: pb::AccountKind, owner: &str) -> i64 {
    server.account_balance(kind, owner, "CNY").await
}

async fn points(server: &TestServer, kind: pb::AccountKind, owner: &str) -> i64 {
    server.account_balance(kind, owner, "").await
}

async fn set_terms(server: &TestServer, merchant: &str, redeem_price: &str, cross: bool) {
    server
        .admin()
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: merchant.into(),
            effective_from_unix_ms: 0,
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: redeem_price.into(),
            fee_minor_per_point: String::new(),
            cross_merchant_reversals: cross,
            credit_limit_minor: None,
            earn_points_per_minor: String::new(),
            legacy_unit: String::new(),
            points_per_legacy_unit: String::new(),
            breakage_share: String::new(),
        })
        .await
        .expect("set terms");
}

#[allow(clippy::too_many_arguments)]
async fn refer(
    server: &TestServer,
    signer: &MerchantSigner,
    kind: pb::TransactionKind,
    id: &str,
    member: &str,
    points: i64,
    refers_to: &str,
    refers_to_merchant: &str,
) -> pb::SubmissionResult {
    let body = server.referring_body(
        signer,
        kind,
        id,
        member,
        points,
        refers_to,
        refers_to_merchant,
    );
    server.submit(signer.envelope(&body)).await
}

async fn submit(
    server: &TestServer,
    signer: &MerchantSigner,
    kind: pb::TransactionKind,
    id: &str,
    member: &str,
    points: i64,
) -> pb::SubmissionResult {
    server
        .submit(signer.envelope(&server.body(signer, kind, id, member, points)))
        .await
}

/// The check is sound, and a restart replays the journal into the same balances.
async fn check_and_restart(server: TestServer, members: &[&str]) -> TestServer {
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
    let mut before = Vec::new();
    for member in members {
        before.push(server.balance(member).await);
    }
    let server = server.restart().await;
    for (member, balance) in members.iter().zip(before) {
        assert_eq!(
            server.balance(member).await,
            balance,
            "{member} after restart"
        );
    }
    server
}

async fn reversals_give_points_and_money_back_at_the_original_prices(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let returns_desk = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    set_terms(&server, "tenant-2", "0.95", true).await;
    server.enroll(&["m-1", "m-2"]).await;
    use pb::AccountKind::{MerchantIssued, MerchantRedeemed, MerchantSettlement, OperatorFloat};
    use pb::TransactionKind::{Burn, Reversal};

    accepted(&server.earn(&tenant, "sale-1", "m-1", 1000).await);
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, -1050);
    // A partial refund at the till: 333 points back to the issuer; the issuer's money is
    // that of the 667 points that remain: 667 × 1.05 = 700.35, charged 701.
    let refund = refer(
        &server, &tenant, Reversal, "refund-1", "m-1", 333, "sale-1", "",
    )
    .await;
    assert_eq!(accepted(&refund).member_points_balance, 667);
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, -701);
    assert_eq!(points(&server, MerchantIssued, "tenant-1").await, -667);
    let entry = server.transaction("tenant-1", "refund-1").await;
    assert_eq!(entry.entry_kind(), pb::EntryKind::EarnReversal);
    assert_eq!(entry.terms_version, Some(1));

    // Bought at tenant-1, returned at tenant-2, whose terms allow it: the money is reversed
    // with tenant-1, the seller.
    let returned = refer(
        &server,
        &returns_desk,
        Reversal,
        "return-7",
        "m-1",
        100,
        "sale-1",
        "tenant-1",
    )
    .await;
    assert_eq!(accepted(&returned).member_points_balance, 567);
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, -596);
    assert_eq!(money(&server, MerchantSettlement, "tenant-2").await, 0);
    // The cinema's terms do not allow it.
    let refused = refer(
        &server, &cinema, Reversal, "r-x", "m-1", 1, "sale-1", "tenant-1",
    )
    .await;
    assert_eq!(
        rejection(&refused),
        pb::RejectionReason::ReversalNotPermitted
    );

    // Never beyond what remains; the rest reverses the sale to the last fen.
    let too_much = refer(
        &server, &tenant, Reversal, "refund-2", "m-1", 568, "sale-1", "",
    )
    .await;
    assert_eq!(
        rejection(&too_much),
        pb::RejectionReason::ReversalExceedsRemaining
    );
    let rest = refer(
        &server, &tenant, Reversal, "refund-3", "m-1", 567, "sale-1", "",
    )
    .await;
    assert_eq!(accepted(&rest).member_points_balance, 0);
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, 0);
    assert_eq!(money(&server, OperatorFloat, "operator").await, 0);
    assert_eq!(points(&server, MerchantIssued, "tenant-1").await, 0);
    // A retry of a reversal is a duplicate, not a second reversal.
    let retry = refer(
        &server, &tenant, Reversal, "refund-3", "m-1", 567, "sale-1", "",
    )
    .await;
    assert!(accepted(&retry).duplicate);

    // A cancelled ticket: the burn's points come back to the member, the cinema's money goes.
    accepted(&server.earn(&tenant, "sale-2", "m-2", 500).await);
    accepted(&submit(&server, &cinema, Burn, "ticket-1", "m-2", 300).await);
    assert_eq!(money(&server, MerchantSettlement, "cinema-1").await, 285);
    let cancel = refer(
        &server, &cinema, Reversal, "cancel-1", "m-2", 300, "ticket-1", "",
    )
    .await;
    assert_eq!(accepted(&cancel).member_points_balance, 500);
    assert_eq!(
        server
            .transaction("cinema-1", "cancel-1")
            .await
            .entry_kind(),
        pb::EntryKind::BurnReversal
    );
    assert_eq!(money(&server, MerchantSettlement, "cinema-1").await, 0);
    assert_eq!(points(&server, MerchantRedeemed, "cinema-1").await, 0);
    // The points came back as tenant-1's: they can be spent again.
    accepted(&submit(&server, &cinema, Burn, "ticket-2", "m-2", 500).await);

    check_and_restart(server, &["m-1", "m-2"]).await;
}

async fn a_reversed_earn_already_spent_leaves_a_debt_that_blocks_burns(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    use pb::TransactionKind::{Burn, Reversal};

    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    accepted(&submit(&server, &cinema, Burn, "b-1", "m-1", 80).await);
    // The purchase is refunded in full after 80 of its points were spent: all 100 go back
    // to the issuer, and the member owes 80.
    let refund = refer(&server, &tenant, Reversal, "r-1", "m-1", 100, "e-1", "").await;
    assert_eq!(accepted(&refund).member_points_balance, -80);
    let blocked = submit(&server, &cinema, Burn, "b-2", "m-1", 1).await;
    assert_eq!(rejection(&blocked), pb::RejectionReason::PointsInsufficient);
    let pb::submission_result::Outcome::Rejected(refused) = blocked.outcome.unwrap() else {
        unreachable!()
    };
    assert!(
        refused.message.contains("owes 80 points"),
        "{}",
        refused.message
    );
    // A member in debt cannot be merged away: the debt would have no wallet left.
    server.enroll(&["m-2"]).await;
    let merge = server
        .admin()
        .alias_member(pb::AliasMemberRequest {
            alias_member_id: "m-1".into(),
            target_member_id: "m-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(merge.code(), tonic::Code::FailedPrecondition);
    assert!(
        merge.message().contains("owes 80 points"),
        "{}",
        merge.message()
    );
    // New points repay the debt first.
    assert_eq!(
        accepted(&server.earn(&tenant, "e-2", "m-1", 50).await).member_points_balance,
        -30
    );
    assert_eq!(
        accepted(&server.earn(&tenant, "e-3", "m-1", 100).await).member_points_balance,
        70
    );
    assert_eq!(
        accepted(&submit(&server, &cinema, Burn, "b-3", "m-1", 70).await).member_points_balance,
        0
    );
    // No point was created or lost: the issuer has 150 out, all redeemed at the cinema.
    assert_eq!(
        points(&server, pb::AccountKind::MerchantIssued, "tenant-1").await,
        -150
    );
    assert_eq!(
        points(&server, pb::AccountKind::MerchantRedeemed, "cinema-1").await,
        150
    );

    check_and_restart(server, &["m-1"]).await;
}

async fn parking_holds_capture_at_locked_prices_release_and_time_out(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let parking = server
        .merchant("parking-1", pb::MerchantCategory::Parking)
        .await;
    server.enroll(&["m-1"]).await;
    use pb::AccountKind::{MemberHeld, MerchantRedeemed, MerchantSettlement};
    use pb::TransactionKind::{Burn, Capture, Hold, Void};

    accepted(&server.earn(&tenant, "e-1", "m-1", 2000).await);
    // At the gate: 1,200 points held. They are not available to other burns.
    let entry = submit(&server, &parking, Hold, "gate-in-1", "m-1", 1200).await;
    assert_eq!(accepted(&entry).member_points_balance, 800);
    assert_eq!(points(&server, MemberHeld, "m-1").await, 1200);
    let burn = submit(&server, &cinema, Burn, "b-1", "m-1", 900).await;
    assert_eq!(rejection(&burn), pb::RejectionReason::PointsInsufficient);
    // Prices change while the car is parked; the capture keeps the hold's prices.
    set_terms(&server, "parking-1", "2.00", false).await;
    // At the exit: 700 captured, the rest released.
    let exit = refer(
        &server,
        &parking,
        Capture,
        "gate-out-1",
        "m-1",
        700,
        "gate-in-1",
        "",
    )
    .await;
    assert_eq!(accepted(&exit).member_points_balance, 1300);
    assert_eq!(points(&server, MemberHeld, "m-1").await, 0);
    assert_eq!(points(&server, MerchantRedeemed, "parking-1").await, 700);
    assert_eq!(money(&server, MerchantSettlement, "parking-1").await, 665);
    assert_eq!(
        server
            .transaction("parking-1", "gate-out-1")
            .await
            .terms_version,
        Some(1)
    );
    let again = refer(
        &server,
        &parking,
        Capture,
        "gate-out-2",
        "m-1",
        1,
        "gate-in-1",
        "",
    )
    .await;
    assert_eq!(rejection(&again), pb::RejectionReason::HoldNotOpen);

    // A void gives everything back; a capture beyond the hold is refused.
    accepted(&submit(&server, &parking, Hold, "gate-in-2", "m-1", 300).await);
    let over = refer(
        &server,
        &parking,
        Capture,
        "gate-out-3",
        "m-1",
        301,
        "gate-in-2",
        "",
    )
    .await;
    assert_eq!(rejection(&over), pb::RejectionReason::CaptureExceedsHold);
    let void = refer(
        &server,
        &parking,
        Void,
        "gate-void-2",
        "m-1",
        0,
        "gate-in-2",
        "",
    )
    .await;
    assert_eq!(accepted(&void).member_points_balance, 1300);
    assert_eq!(accepted(&void).points, 300);

    // A hold nobody settles is released when its timeout passes.
    accepted(&submit(&server, &parking, Hold, "gate-in-3", "m-1", 400).await);
    assert_eq!(server.balance("m-1").await, 900);
    server.clock.advance(server.config.hold_timeout_ms + 1);
    let late = refer(
        &server,
        &parking,
        Capture,
        "gate-out-4",
        "m-1",
        400,
        "gate-in-3",
        "",
    )
    .await;
    assert_eq!(rejection(&late), pb::RejectionReason::HoldNotOpen);
    assert_eq!(server.balance("m-1").await, 1300);
    assert_eq!(points(&server, MemberHeld, "m-1").await, 0);

    check_and_restart(server, &["m-1"]).await;
}

async fn the_expiry_run_books_breakage_to_the_issuer_once(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let mut config = test_config(&database.url);
    config.points_lifetime_days = 30;
    config.expiry_run_interval_ms = 0;
    let server = TestServer::start_on(database, config).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let restaurant = server
        .merchant("restaurant-1", pb::MerchantCategory::Restaurant)
        .await;
    server.enroll(&["m-1", "m-2"]).await;
    use pb::AccountKind::{MerchantBreakage, OperatorFloat};

    accepted(&server.earn(&tenant, "e-1", "m-1", 500).await);
    server.clock.advance(1_000);
    accepted(&server.earn(&restaurant, "e-2", "m-1", 300).await);
    accepted(&server.earn(&tenant, "e-3", "m-2", 200).await);
    // The soonest-expiring points go first: tenant-1's.
    accepted(
        &submit(
            &server,
            &cinema,
            pb::TransactionKind::Burn,
            "b-1",
            "m-1",
            100,
        )
        .await,
    );

    // Nothing has expired yet.
    let mut admin = server.admin();
    let early = admin
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((early.entries, early.points), (0, 0));

    server.clock.advance(31 * DAY_MS);
    let run = admin
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((run.entries, run.points), (2, 900));
    // Float money at the issue price: 400 + 200 of tenant-1's (630 fen), 300 of the
    // restaurant's (315 fen).
    assert_eq!(run.breakage_minor, 945);
    assert_eq!(server.balance("m-1").await, 0);
    assert_eq!(server.balance("m-2").await, 0);
    assert_eq!(points(&server, MerchantBreakage, "tenant-1").await, 600);
    assert_eq!(money(&server, MerchantBreakage, "tenant-1").await, 630);
    assert_eq!(points(&server, MerchantBreakage, "restaurant-1").await, 300);
    assert_eq!(money(&server, MerchantBreakage, "restaurant-1").await, 315);
    // 1,050 in from the issuers, 95 paid to the cinema, 945 to breakage.
    assert_eq!(money(&server, OperatorFloat, "operator").await, 10);

    // A second run books nothing twice.
    let again = admin
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.entries, again.points), (0, 0));

    // Outstanding points by issuer are gone with them.
    check_and_restart(server, &["m-1", "m-2"]).await;
}

async fn the_server_runs_expiry_on_its_schedule(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let mut config = test_config(&database.url);
    config.points_lifetime_days = 1;
    config.expiry_run_interval_ms = 60_000;
    let server = TestServer::start_on(database, config).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    server.clock.advance(2 * DAY_MS);
    // The idle writer wakes every second; the run is due since more than its interval passed.
    let mut balance = server.balance("m-1").await;
    for _ in 0..50 {
        if balance == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        balance = server.balance("m-1").await;
    }
    assert_eq!(
        balance, 0,
        "the scheduled expiry run did not expire the points"
    );
    assert_eq!(
        points(&server, pb::AccountKind::MerchantBreakage, "tenant-1").await,
        100
    );
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

/// An expiry run over more members than one batch may load takes them in parts: the
/// requested run books the first part, and the writer books the rest in the batches after
/// it, each member once.
async fn an_expiry_run_over_many_members_goes_in_parts(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let mut config = test_config(&database.url);
    config.points_lifetime_days = 30;
    config.expiry_run_interval_ms = 0;
    config.expiry_members_per_batch_max = 2;
    let server = TestServer::start_on(database, config).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    let members = ["m-1", "m-2", "m-3", "m-4", "m-5"];
    server.enroll(&members).await;
    for (index, member) in members.iter().enumerate() {
        accepted(
            &server
                .earn(&tenant, &format!("e-{index}"), member, 100)
                .await,
        );
    }
    server.clock.advance(31 * DAY_MS);
    let first = server
        .admin()
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .unwrap()
        .into_inner();
    // The part loaded (two members) and the members still in the working set expire now;
    // not all five. Resident are the tests' budget of one and, when the writer takes the
    // request before it has seen the last earn's commit, that earn's member (a member is
    // evicted only once the batch that used it has committed).
    assert!((2..=4).contains(&first.entries), "{first:?}");
    assert_eq!(first.points, 100 * first.entries as i64);
    // The idle writer takes the next part each second.
    let mut left = Vec::new();
    for _ in 0..100 {
        left.clear();
        for member in members {
            if server.balance(member).await != 0 {
                left.push(member);
            }
        }
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "not expired: {left:?}");
    assert_eq!(
        points(&server, pb::AccountKind::MerchantBreakage, "tenant-1").await,
        500
    );
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

async fn credit_limits_and_prepaid_funding_bound_issuance(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, cinema) = server.tenant_and_cinema().await;
    let kiosk = server
        .merchant("kiosk", pb::MerchantCategory::MallTenant)
        .await;
    let shop = server
        .merchant("shop", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let mut admin = server.admin();
    for (merchant, limit) in [("kiosk", 0), ("shop", 1_000)] {
        admin
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: merchant.into(),
                issue_price_minor_per_point: "1.05".into(),
                redeem_price_minor_per_point: "0.95".into(),
                credit_limit_minor: Some(limit),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    use pb::AccountKind::{MerchantSettlement, OperatorCash};

    // Prepaid: nothing paid in, nothing issued; after 100 yuan, earns draw it down.
    let refused = server.earn(&kiosk, "k-1", "m-1", 100).await;
    assert_eq!(
        rejection(&refused),
        pb::RejectionReason::PrepaidBalanceInsufficient
    );
    let funded = admin
        .fund_merchant(pb::FundMerchantRequest {
            merchant_id: "kiosk".into(),
            amount_minor: 10_000,
            reference: "bank transfer 2026-11-23/001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(funded.position_minor, 10_000);
    assert_eq!(money(&server, OperatorCash, "operator").await, -10_000);
    // 9,000 points cost 9,450 fen; 600 more would cost 630, beyond the 550 left.
    accepted(&server.earn(&kiosk, "k-2", "m-1", 9_000).await);
    let beyond = server.earn(&kiosk, "k-3", "m-1", 600).await;
    assert_eq!(
        rejection(&beyond),
        pb::RejectionReason::PrepaidBalanceInsufficient
    );
    // 523 points cost 549.15, charged 550: exactly what is left.
    accepted(&server.earn(&kiosk, "k-4", "m-1", 523).await);
    assert_eq!(money(&server, MerchantSettlement, "kiosk").await, 0);
    // A refund gives issuance back, so it is never limited.
    accepted(
        &refer(
            &server,
            &kiosk,
            pb::TransactionKind::Reversal,
            "k-5",
            "m-1",
            100,
            "k-2",
            "",
        )
        .await,
    );

    // Post-paid with a 10 yuan limit: 952 points cost 999.6, charged 1,000; one more is refused.
    accepted(&server.earn(&shop, "s-1", "m-1", 952).await);
    let over = server.earn(&shop, "s-2", "m-1", 1).await;
    assert_eq!(rejection(&over), pb::RejectionReason::CreditLimitExceeded);
    // Points redeemed at the shop are owed to it, which makes room again.
    accepted(&submit(&server, &shop, pb::TransactionKind::Burn, "s-3", "m-1", 100).await);
    accepted(&server.earn(&shop, "s-4", "m-1", 50).await);

    // Bad fundings are refused with the field named and change nothing.
    let bad = admin
        .fund_merchant(pb::FundMerchantRequest {
            merchant_id: "kiosk".into(),
            amount_minor: -5,
            reference: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("amount_minor"), "{}", bad.message());
    let unknown = admin
        .fund_merchant(pb::FundMerchantRequest {
            merchant_id: "nobody".into(),
            amount_minor: 5,
            reference: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(money(&server, OperatorCash, "operator").await, -10_000);
    let _ = cinema;

    let server = check_and_restart(server, &["m-1"]).await;
    // The limits hold after a restart: state and terms come back from the database.
    let still_over = server.earn(&shop, "s-5", "m-1", 1_000).await;
    assert_eq!(
        rejection(&still_over),
        pb::RejectionReason::CreditLimitExceeded
    );
}

async fn earns_by_spend_follow_the_rules_in_force(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    let mut admin = server.admin();
    admin
        .enroll_members(pb::EnrollMembersRequest {
            members: vec![
                pb::MemberEnrollment {
                    member_id: "m-gold".into(),
                    tier: Some("gold".into()),
                },
                pb::MemberEnrollment {
                    member_id: "m-plain".into(),
                    tier: None,
                },
            ],
        })
        .await
        .unwrap();
    let now = server.now_ms();
    // Without a base rate, an earn by spend is refused.
    let by_spend = |id: &str, member: &str, spend: i64| pb::TransactionBody {
        points: 0,
        spend_minor: Some(spend),
        ..server.body(&tenant, pb::TransactionKind::Earn, id, member, 0)
    };
    let refused = server
        .submit(tenant.envelope(&by_spend("s-0", "m-plain", 18_000)))
        .await;
    assert_eq!(rejection(&refused), pb::RejectionReason::EarnRuleMissing);

    admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "tenant-1".into(),
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: "0.95".into(),
            earn_points_per_minor: "0.01".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rules = admin
        .set_earn_rules(pb::SetEarnRulesRequest {
            effective_from_unix_ms: 0,
            tiers: vec![pb::TierMultiplier {
                tier: "gold".into(),
                multiplier: "1.5".into(),
            }],
            campaigns: vec![pb::Campaign {
                name: "double weekend".into(),
                merchant_id: "tenant-1".into(),
                starts_at_unix_ms: now - HOUR_MS,
                ends_at_unix_ms: now + HOUR_MS,
                multiplier: "2".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.version, 1);
    // ¥179.99 at one point per yuan: gold in the campaign 179.99 × 3 = 539.97 → 539; a
    // member without a tier 359.98 → 359; a spend under one point earns nothing.
    let gold = server
        .submit(tenant.envelope(&by_spend("s-1", "m-gold", 17_999)))
        .await;
    assert_eq!(accepted(&gold).points, 539);
    let plain = server
        .submit(tenant.envelope(&by_spend("s-2", "m-plain", 17_999)))
        .await;
    assert_eq!(accepted(&plain).points, 359);
    let tiny = server
        .submit(tenant.envelope(&by_spend("s-3", "m-plain", 49)))
        .await;
    assert_eq!(rejection(&tiny), pb::RejectionReason::SpendEarnsNoPoints);
    let entry = server.transaction("tenant-1", "s-1").await;
    assert_eq!(
        (entry.earn_rule_version, entry.spend_minor),
        (Some(1), Some(17_999))
    );
    // Explicit points are taken as sent.
    assert_eq!(
        accepted(&server.earn(&tenant, "s-4", "m-gold", 7).await).points,
        7
    );

    // New rules apply to later earns only; rules effective in the past are refused.
    let in_the_past = admin
        .set_earn_rules(pb::SetEarnRulesRequest {
            effective_from_unix_ms: now - DAY_MS,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(in_the_past.code(), tonic::Code::FailedPrecondition);
    server.clock.advance(1_000);
    admin
        .set_earn_rules(pb::SetEarnRulesRequest {
            tiers: vec![pb::TierMultiplier {
                tier: "gold".into(),
                multiplier: "1.5".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let later = server
        .submit(tenant.envelope(&by_spend("s-5", "m-gold", 17_999)))
        .await;
    assert_eq!(accepted(&later).points, 269);
    assert_eq!(
        server
            .transaction("tenant-1", "s-5")
            .await
            .earn_rule_version,
        Some(2)
    );
    assert_eq!(server.transaction("tenant-1", "s-1").await.points, 539);
    let bad = admin
        .set_earn_rules(pb::SetEarnRulesRequest {
            tiers: vec![pb::TierMultiplier {
                tier: "gold".into(),
                multiplier: "0".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let server = check_and_restart(server, &["m-gold", "m-plain"]).await;
    // Rules and tiers come back from the database (10,000 × 0.01 × 1.5); acceptance times
    // continue from the journal's, so the rules in force are still version 2.
    let again = pb::TransactionBody {
        points: 0,
        spend_minor: Some(10_000),
        ..server.body(&tenant, pb::TransactionKind::Earn, "s-7", "m-gold", 0)
    };
    assert_eq!(
        accepted(&server.submit(tenant.envelope(&again)).await).points,
        150
    );
}

async fn legacy_units_exchange_through_the_trading_account(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let mut admin = server.admin();
    let set_rate = |rate: &str| pb::SetMerchantTermsRequest {
        merchant_id: "tenant-1".into(),
        issue_price_minor_per_point: "1.05".into(),
        redeem_price_minor_per_point: "0.95".into(),
        legacy_unit: "MALLSTAR".into(),
        points_per_legacy_unit: rate.into(),
        ..Default::default()
    };
    admin.set_merchant_terms(set_rate("0.35")).await.unwrap();
    let exchange =
        |id: &str, kind: pb::TransactionKind, units: i64, points: i64| pb::TransactionBody {
            legacy_units: units,
            ..server.body(&tenant, kind, id, "m-1", points)
        };
    use pb::AccountKind::{MerchantIssued, MerchantSettlement, OperatorRounding, OperatorTrading};
    use pb::TransactionKind::{ExchangeIn, ExchangeOut};

    // 101 units at 0.35 = 35.35 points: 35 points, bought by 100 units; the 101st unit buys no
    // whole point and goes to rounding.
    let first = server
        .submit(tenant.envelope(&exchange("x-1", ExchangeIn, 101, 0)))
        .await;
    assert_eq!(accepted(&first).points, 35);
    assert_eq!(
        server
            .account_balance(MerchantIssued, "tenant-1", "MALLSTAR")
            .await,
        -101
    );
    assert_eq!(
        server
            .account_balance(OperatorTrading, "MALLSTAR", "MALLSTAR")
            .await,
        100
    );
    assert_eq!(
        server
            .account_balance(OperatorRounding, "operator", "MALLSTAR")
            .await,
        1
    );
    assert_eq!(
        server
            .account_balance(OperatorTrading, "MALLSTAR", "")
            .await,
        -35
    );
    // The points are tenant-1's issue: it pays the float as for an earn (35 × 1.05 → 37).
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, -37);
    assert_eq!(
        server.transaction("tenant-1", "x-1").await.entry_kind(),
        pb::EntryKind::ExchangeIn
    );

    // Out: 10 points at 0.35 = 28.57 units: 28 units, bought by 9.8 → 10 points.
    let out = server
        .submit(tenant.envelope(&exchange("x-2", ExchangeOut, 0, 10)))
        .await;
    assert_eq!(accepted(&out).member_points_balance, 25);
    assert_eq!(
        server
            .account_balance(MerchantIssued, "tenant-1", "MALLSTAR")
            .await,
        -73
    );
    assert_eq!(
        server
            .account_balance(OperatorTrading, "MALLSTAR", "")
            .await,
        -25
    );
    let too_small = server
        .submit(tenant.envelope(&exchange("x-3", ExchangeIn, 2, 0)))
        .await;
    assert_eq!(rejection(&too_small), pb::RejectionReason::ExchangeTooSmall);
    let beyond = server
        .submit(tenant.envelope(&exchange("x-4", ExchangeOut, 0, 26)))
        .await;
    assert_eq!(rejection(&beyond), pb::RejectionReason::PointsInsufficient);

    // A new rate applies to later exchanges only; the first keeps its terms version (version
    // 1 is the test's registration, without a unit).
    server.clock.advance(1_000);
    admin.set_merchant_terms(set_rate("0.5")).await.unwrap();
    let later = server
        .submit(tenant.envelope(&exchange("x-5", ExchangeIn, 100, 0)))
        .await;
    assert_eq!(accepted(&later).points, 50);
    assert_eq!(
        server.transaction("tenant-1", "x-1").await.terms_version,
        Some(2)
    );
    assert_eq!(
        server.transaction("tenant-1", "x-5").await.terms_version,
        Some(3)
    );
    // A unit belongs to one merchant.
    let taken = admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "cinema-1".into(),
            ..set_rate("1")
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::FailedPrecondition);

    check_and_restart(server, &["m-1"]).await;
}

on_both_backends!(
    legacy_units_exchange_through_the_trading_account,
    earns_by_spend_follow_the_rules_in_force,
    credit_limits_and_prepaid_funding_bound_issuance,
    reversals_give_points_and_money_back_at_the_original_prices,
    a_reversed_earn_already_spent_leaves_a_debt_that_blocks_burns,
    parking_holds_capture_at_locked_prices_release_and_time_out,
    the_expiry_run_books_breakage_to_the_issuer_once,
    the_server_runs_expiry_on_its_schedule,
    an_expiry_run_over_many_members_goes_in_parts,
);
