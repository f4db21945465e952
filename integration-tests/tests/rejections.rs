//! Every rejection reason, triggered through the gRPC API on both backends. The table must
//! cover every reason the domain defines, so a new reason without a test fails here.

use coalition_domain::RejectionReason;
use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestServer, accepted, new_key, on_both_backends, rejection,
};

const HOUR_MS: i64 = 3_600_000;

async fn add_key(
    server: &TestServer,
    merchant: &str,
    key_id: &str,
    from: i64,
    until: Option<i64>,
) -> MerchantSigner {
    let key = new_key();
    server
        .admin()
        .add_merchant_key(pb::AddMerchantKeyRequest {
            merchant_id: merchant.into(),
            key: Some(pb::MerchantKey {
                key_id: key_id.into(),
                public_key: key.verifying_key().as_bytes().to_vec(),
                valid_from_unix_ms: from,
                valid_until_unix_ms: until,
                revoked_at_unix_ms: None,
            }),
        })
        .await
        .expect("add key");
    MerchantSigner::new(merchant, key_id, key)
}

async fn every_rejection_reason_is_reachable_and_applies_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let now = server.now_ms();
    let tenant = server
        .merchant("tenant", pb::MerchantCategory::MallTenant)
        .await;
    let suspended = server
        .merchant("suspended-shop", pb::MerchantCategory::MallTenant)
        .await;
    server
        .admin()
        .suspend_merchant(pb::SuspendMerchantRequest {
            merchant_id: "suspended-shop".into(),
        })
        .await
        .unwrap();
    let revoked = add_key(&server, "tenant", "old", 0, None).await;
    server
        .admin()
        .revoke_merchant_key(pb::RevokeMerchantKeyRequest {
            merchant_id: "tenant".into(),
            key_id: "old".into(),
        })
        .await
        .unwrap();
    let future = add_key(&server, "tenant", "future", now + HOUR_MS, None).await;
    let expired = add_key(
        &server,
        "tenant",
        "expired",
        now - 2 * HOUR_MS,
        Some(now - HOUR_MS),
    )
    .await;
    server.enroll(&["m-1", "m-poor"]).await;
    // A merchant registered without terms: its points have no price.
    let unpriced_key = new_key();
    server
        .admin()
        .register_merchant(pb::RegisterMerchantRequest {
            merchant_id: "unpriced".into(),
            name: "Unpriced".into(),
            category: pb::MerchantCategory::Other as i32,
            keys: vec![pb::MerchantKey {
                key_id: "key-1".into(),
                public_key: unpriced_key.verifying_key().as_bytes().to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let unpriced = MerchantSigner::new("unpriced", "key-1", unpriced_key);
    let first = server.earn(&tenant, "dup-1", "m-1", 10).await;
    accepted(&first);
    // Another merchant, whose terms do not allow reversing others' sales.
    let other = server
        .merchant("other-shop", pb::MerchantCategory::MallTenant)
        .await;
    // An open hold of 4 points, and a hold that was voided.
    let hold =
        |id: &str, points: i64| server.body(&tenant, pb::TransactionKind::Hold, id, "m-1", points);
    accepted(&server.submit(tenant.envelope(&hold("h-open", 4))).await);
    accepted(&server.submit(tenant.envelope(&hold("h-voided", 1))).await);
    accepted(
        &server
            .submit(tenant.envelope(&server.referring_body(
                &tenant,
                pb::TransactionKind::Void,
                "v-1",
                "m-1",
                0,
                "h-voided",
                "",
            )))
            .await,
    );
    // A prepaid merchant that paid nothing in, and a post-paid one with a 1 yuan limit.
    let prepaid = server
        .merchant("prepaid-shop", pb::MerchantCategory::MallTenant)
        .await;
    let postpaid = server
        .merchant("postpaid-shop", pb::MerchantCategory::MallTenant)
        .await;
    for (merchant, limit) in [("prepaid-shop", 0), ("postpaid-shop", 100)] {
        server
            .admin()
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: merchant.into(),
                issue_price_minor_per_point: "1.05".into(),
                redeem_price_minor_per_point: "0.95".into(),
                credit_limit_minor: Some(limit),
                // One point per yuan spent.
                earn_points_per_minor: "0.01".into(),
                // The prepaid shop has a legacy unit at 0.35 points each.
                legacy_unit: if limit == 0 {
                    "SHOPPTS".into()
                } else {
                    String::new()
                },
                points_per_legacy_unit: if limit == 0 {
                    "0.35".into()
                } else {
                    String::new()
                },
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let referring = |signer: &MerchantSigner,
                     kind: pb::TransactionKind,
                     id: &str,
                     points: i64,
                     refers_to: &str,
                     refers_to_merchant: &str| {
        signer.envelope(&server.referring_body(
            signer,
            kind,
            id,
            "m-1",
            points,
            refers_to,
            refers_to_merchant,
        ))
    };

    let earn = |id: &str| server.body(&tenant, pb::TransactionKind::Earn, id, "m-1", 10);
    let signed = |body: pb::TransactionBody| tenant.envelope(&body);
    let with_body = |change: &dyn Fn(&mut pb::TransactionBody)| {
        let mut body = earn("t-x");
        change(&mut body);
        tenant.envelope(&body)
    };
    let mut wrong_key = tenant.clone();
    wrong_key.key = new_key();

    let cases: Vec<(RejectionReason, pb::Envelope)> = vec![
        (
            RejectionReason::SignatureMalformed,
            pb::Envelope {
                signature: vec![1; 10],
                ..signed(earn("t-1"))
            },
        ),
        (
            RejectionReason::MerchantUnknown,
            pb::Envelope {
                merchant_id: "nobody".into(),
                ..signed(earn("t-2"))
            },
        ),
        (
            RejectionReason::MerchantSuspended,
            suspended.envelope(&server.body(
                &suspended,
                pb::TransactionKind::Earn,
                "t-3",
                "m-1",
                10,
            )),
        ),
        (
            RejectionReason::KeyUnknown,
            pb::Envelope {
                key_id: "key-9".into(),
                ..signed(earn("t-4"))
            },
        ),
        (RejectionReason::KeyRevoked, revoked.envelope(&earn("t-5"))),
        (
            RejectionReason::KeyNotYetValid,
            future.envelope(&earn("t-6")),
        ),
        (RejectionReason::KeyExpired, expired.envelope(&earn("t-7"))),
        (
            RejectionReason::SignatureInvalid,
            wrong_key.envelope(&earn("t-8")),
        ),
        (
            RejectionReason::BodyMalformed,
            tenant.envelope_for_bytes(vec![0xff, 0xff, 0xff]),
        ),
        (
            RejectionReason::BodyMerchantMismatch,
            with_body(&|b| b.merchant_id = "suspended-shop".into()),
        ),
        (
            RejectionReason::TransactionIdInvalid,
            with_body(&|b| b.merchant_transaction_id = "bad id!".into()),
        ),
        (RejectionReason::KindUnspecified, with_body(&|b| b.kind = 0)),
        (
            RejectionReason::MemberIdInvalid,
            with_body(&|b| b.member_id = String::new()),
        ),
        (RejectionReason::PointsInvalid, with_body(&|b| b.points = 0)),
        (
            RejectionReason::DetailsInvalid,
            with_body(&|b| b.store_id = String::new()),
        ),
        (
            RejectionReason::OccurredAtInFuture,
            with_body(&|b| b.occurred_at_unix_ms = now + HOUR_MS),
        ),
        (
            RejectionReason::OccurredAtBeyondOfflineWindow,
            with_body(&|b| b.occurred_at_unix_ms = now - 73 * HOUR_MS),
        ),
        (
            RejectionReason::TransactionIdConflict,
            with_body(&|b| {
                b.merchant_transaction_id = "dup-1".into();
                b.points = 11;
            }),
        ),
        (
            RejectionReason::MemberUnknown,
            with_body(&|b| b.member_id = "stranger".into()),
        ),
        (
            RejectionReason::PointsInsufficient,
            signed(server.body(&tenant, pb::TransactionKind::Burn, "t-9", "m-poor", 5)),
        ),
        (
            RejectionReason::TermsMissing,
            unpriced.envelope(&server.body(&unpriced, pb::TransactionKind::Earn, "t-10", "m-1", 5)),
        ),
        (
            RejectionReason::ReferenceUnknown,
            referring(
                &tenant,
                pb::TransactionKind::Reversal,
                "t-11",
                1,
                "no-such-sale",
                "",
            ),
        ),
        (
            RejectionReason::ReferenceNotApplicable,
            referring(
                &tenant,
                pb::TransactionKind::Capture,
                "t-12",
                1,
                "dup-1",
                "",
            ),
        ),
        (
            RejectionReason::ReversalNotPermitted,
            referring(
                &other,
                pb::TransactionKind::Reversal,
                "t-13",
                1,
                "dup-1",
                "tenant",
            ),
        ),
        (
            RejectionReason::ReversalExceedsRemaining,
            referring(
                &tenant,
                pb::TransactionKind::Reversal,
                "t-14",
                11,
                "dup-1",
                "",
            ),
        ),
        (
            RejectionReason::HoldNotOpen,
            referring(
                &tenant,
                pb::TransactionKind::Capture,
                "t-15",
                1,
                "h-voided",
                "",
            ),
        ),
        (
            RejectionReason::CaptureExceedsHold,
            referring(
                &tenant,
                pb::TransactionKind::Capture,
                "t-16",
                5,
                "h-open",
                "",
            ),
        ),
        (
            RejectionReason::EarnRuleMissing,
            with_body(&|b| {
                b.points = 0;
                b.spend_minor = Some(18_000);
            }),
        ),
        (
            RejectionReason::SpendEarnsNoPoints,
            prepaid.envelope(&pb::TransactionBody {
                points: 0,
                spend_minor: Some(99),
                ..server.body(&prepaid, pb::TransactionKind::Earn, "t-19", "m-1", 0)
            }),
        ),
        (
            RejectionReason::CreditLimitExceeded,
            postpaid.envelope(&server.body(
                &postpaid,
                pb::TransactionKind::Earn,
                "t-17",
                "m-1",
                200,
            )),
        ),
        (
            RejectionReason::PrepaidBalanceInsufficient,
            prepaid.envelope(&server.body(&prepaid, pb::TransactionKind::Earn, "t-18", "m-1", 1)),
        ),
        (
            RejectionReason::ExchangeRateMissing,
            with_body(&|b| {
                b.kind = pb::TransactionKind::ExchangeIn as i32;
                b.points = 0;
                b.legacy_units = 100;
            }),
        ),
        (
            RejectionReason::ExchangeTooSmall,
            prepaid.envelope(&pb::TransactionBody {
                points: 0,
                legacy_units: 2,
                ..server.body(&prepaid, pb::TransactionKind::ExchangeIn, "t-20", "m-1", 0)
            }),
        ),
        (
            // 10 billion yuan at one point per yuan: above the 10 million point limit.
            RejectionReason::ComputedPointsAboveLimit,
            prepaid.envelope(&pb::TransactionBody {
                points: 0,
                spend_minor: Some(1_000_000_000_000),
                ..server.body(&prepaid, pb::TransactionKind::Earn, "t-21", "m-1", 0)
            }),
        ),
    ];
    let covered: Vec<RejectionReason> = cases.iter().map(|(reason, _)| *reason).collect();
    assert_eq!(
        covered,
        RejectionReason::ALL.to_vec(),
        "every reason has a case, in precedence order"
    );

    for (reason, envelope) in cases {
        let result = server.submit(envelope).await;
        assert_eq!(
            rejection(&result) as i32,
            i32::from(reason.code()),
            "{reason}: got {result:?}"
        );
    }
    // Nothing of any refusal was applied: 10 earned, 4 still held.
    assert_eq!(server.balance("m-1").await, 6);
    assert_eq!(server.balance("m-poor").await, 0);
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
    assert_eq!(
        report.entries, 4,
        "only the earn, the two holds and the void were booked"
    );
}

on_both_backends!(every_rejection_reason_is_reachable_and_applies_nothing);
