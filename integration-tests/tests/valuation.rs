//! Money legs at the merchants' terms, through the gRPC API on both backends: the rounding
//! rule, versioned terms that never reprice a booked entry, and who may read which money.

use coalition_grpc::pb;
use coalition_integration_tests::{Backend, TestServer, accepted, on_both_backends};
use prost::Message;

async fn money_balance(server: &TestServer, kind: pb::AccountKind, owner: &str) -> i64 {
    server.account_balance(kind, owner, "CNY").await
}

async fn money_legs_follow_the_terms_and_the_rounding_rule(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Test merchants are registered at 1.05 fen per point issued, 0.95 per point redeemed.
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;

    // 333 × 1.05 = 349.65 fen: the issuer is charged 350, the float receives 349, 1 to rounding.
    accepted(&server.earn(&tenant, "e-1", "m-1", 333).await);
    // 200 × 0.95 = 190 fen exactly: the float pays 190, the cinema is owed 190.
    accepted(&server.burn(&cinema, "b-1", "m-1", 200).await);
    assert_eq!(
        money_balance(&server, pb::AccountKind::MerchantSettlement, "tenant-1").await,
        -350
    );
    assert_eq!(
        money_balance(&server, pb::AccountKind::MerchantSettlement, "cinema-1").await,
        190
    );
    assert_eq!(
        money_balance(&server, pb::AccountKind::OperatorFloat, "operator").await,
        349 - 190
    );
    assert_eq!(
        money_balance(&server, pb::AccountKind::OperatorRounding, "operator").await,
        1
    );

    let earn = server.transaction("tenant-1", "e-1").await;
    assert_eq!(earn.terms_version, Some(1));
    let money: Vec<(i32, i64)> = earn
        .postings
        .iter()
        .filter(|p| p.asset == "CNY")
        .map(|p| (p.account_kind, p.amount))
        .collect();
    assert_eq!(
        money,
        vec![
            (pb::AccountKind::MerchantSettlement as i32, -350),
            (pb::AccountKind::OperatorFloat as i32, 349),
            (pb::AccountKind::OperatorRounding as i32, 1),
        ]
    );

    // New terms apply to later entries only.
    server.clock.advance(1_000);
    let mut admin = server.admin();
    let terms = admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "tenant-1".into(),
            effective_from_unix_ms: 0,
            issue_price_minor_per_point: "2".into(),
            redeem_price_minor_per_point: "1".into(),
            fee_minor_per_point: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .terms
        .unwrap();
    assert_eq!(terms.version, 2);
    server.clock.advance(1_000);
    accepted(&server.earn(&tenant, "e-2", "m-1", 10).await);
    assert_eq!(
        server.transaction("tenant-1", "e-2").await.terms_version,
        Some(2)
    );
    assert_eq!(
        money_balance(&server, pb::AccountKind::MerchantSettlement, "tenant-1").await,
        -370
    );
    let first = server.transaction("tenant-1", "e-1").await;
    assert_eq!(
        (first.terms_version, first.postings),
        (earn.terms_version, earn.postings),
        "booked entries are never repriced"
    );

    // Terms that would reprice booked entries, bad prices and unknown merchants are refused.
    let past = admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "tenant-1".into(),
            effective_from_unix_ms: first.accepted_at_unix_ms,
            issue_price_minor_per_point: "3".into(),
            redeem_price_minor_per_point: "1".into(),
            fee_minor_per_point: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        past.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        past.message()
    );
    for (price, field) in [
        ("abc", "issue_price"),
        ("-1", "issue price"),
        ("1.0000001", "issue price"),
    ] {
        let bad = admin
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: "tenant-1".into(),
                effective_from_unix_ms: 0,
                issue_price_minor_per_point: price.into(),
                redeem_price_minor_per_point: "1".into(),
                fee_minor_per_point: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad.code(),
            tonic::Code::InvalidArgument,
            "{price}: {}",
            bad.message()
        );
        assert!(bad.message().contains(field), "{}", bad.message());
    }
    let unknown = admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "nobody".into(),
            effective_from_unix_ms: 0,
            issue_price_minor_per_point: "1".into(),
            redeem_price_minor_per_point: "1".into(),
            fee_minor_per_point: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let shown = admin
        .get_merchant(pb::GetMerchantRequest {
            merchant_id: "tenant-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<(u32, String)> = shown
        .terms
        .iter()
        .map(|t| (t.version, t.issue_price_minor_per_point.clone()))
        .collect();
    assert_eq!(
        versions,
        vec![(1, "1.05".to_string()), (2, "2".to_string())]
    );

    // A merchant reads its own money, not the operator's.
    let own = |kind: pb::AccountKind, owner: &str| pb::BalanceQuery {
        merchant_id: "cinema-1".into(),
        issued_at_unix_ms: server.now_ms(),
        account_kind: kind as i32,
        owner_id: owner.into(),
        as_of_unix_ms: None,
        asset: "CNY".into(),
    };
    let (query, signature) =
        cinema.sign_query(&own(pb::AccountKind::MerchantSettlement, "cinema-1"));
    let mine = server
        .queries()
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap();
    assert_eq!(mine.into_inner().points, 190);
    let (query, signature) = cinema.sign_query(&own(pb::AccountKind::OperatorFloat, "operator"));
    let denied = server
        .queries()
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Terms and money survive a restart, and the books are sound.
    let server = server.restart().await;
    assert_eq!(
        money_balance(&server, pb::AccountKind::MerchantSettlement, "tenant-1").await,
        -370
    );
    server.clock.advance(1_000);
    accepted(&server.earn(&tenant, "e-3", "m-1", 1).await);
    assert_eq!(
        money_balance(&server, pb::AccountKind::MerchantSettlement, "tenant-1").await,
        -372
    );
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

on_both_backends!(money_legs_follow_the_terms_and_the_rounding_rule);

/// Outstanding points as the operator (no signer) or as a merchant sees them.
async fn outstanding(
    server: &TestServer,
    signer: Option<&coalition_grpc::client::MerchantSigner>,
) -> pb::GetOutstandingPointsResponse {
    let query = pb::OutstandingPointsQuery {
        merchant_id: signer.map(|s| s.merchant_id.clone()).unwrap_or_default(),
        issued_at_unix_ms: server.now_ms(),
    };
    let response = match signer {
        Some(signer) => {
            let (query, signature) = signer.sign_query(&query);
            server
                .queries()
                .get_outstanding_points(pb::GetOutstandingPointsRequest {
                    query,
                    signature: Some(signature),
                })
                .await
        }
        None => {
            server
                .admin_queries()
                .get_outstanding_points(pb::GetOutstandingPointsRequest {
                    query: query.encode_to_vec(),
                    signature: None,
                })
                .await
        }
    };
    response.unwrap().into_inner()
}

async fn account_history_runs_balances_and_outstanding_points_age(backend: Backend) {
    const DAY_MS: i64 = 86_400_000;
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    server.clock.advance(40 * DAY_MS);
    accepted(&server.earn(&tenant, "e-2", "m-2", 50).await);
    accepted(&server.burn(&cinema, "b-1", "m-1", 30).await);

    // Outstanding, by issuer and age: the burn took the oldest lot first.
    let all = outstanding(&server, None).await;
    let rows: Vec<(String, String, i64)> = all
        .rows
        .iter()
        .map(|r| (r.issuer_id.clone(), r.age_days.clone(), r.points))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("tenant-1".into(), "0-29".into(), 50),
            ("tenant-1".into(), "30-89".into(), 70)
        ]
    );
    assert_eq!(all.total_points, 120);
    assert_eq!(outstanding(&server, Some(&tenant)).await.total_points, 120);
    let cinema_view = outstanding(&server, Some(&cinema)).await;
    assert!(cinema_view.rows.is_empty() && cinema_view.total_points == 0);

    // The issuer's points account, one line per page, newest first, with running balances.
    let history = |kind: pb::AccountKind, asset: &str, before: Option<u64>, page_len: u32| {
        pb::AccountHistoryQuery {
            merchant_id: "tenant-1".into(),
            issued_at_unix_ms: server.now_ms(),
            account_kind: kind as i32,
            owner_id: "tenant-1".into(),
            asset: asset.into(),
            before_sequence: before,
            page_len,
        }
    };
    let mut lines = Vec::new();
    let mut before = None;
    loop {
        let (query, signature) =
            tenant.sign_query(&history(pb::AccountKind::MerchantIssued, "", before, 1));
        let page = server
            .queries()
            .get_account_history(pb::GetAccountHistoryRequest {
                query,
                signature: Some(signature),
            })
            .await
            .unwrap()
            .into_inner();
        lines.extend(
            page.lines
                .into_iter()
                .map(|l| (l.merchant_transaction_id, l.amount, l.balance_after)),
        );
        match page.next_before_sequence {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(
        lines,
        vec![
            ("e-2".to_string(), -50, -150),
            ("e-1".to_string(), -100, -100)
        ]
    );
    // The money side: 50 × 1.05 = 52.5 → 53 charged; 100 × 1.05 = 105.
    let (query, signature) = tenant.sign_query(&history(
        pb::AccountKind::MerchantSettlement,
        "CNY",
        None,
        0,
    ));
    let money = server
        .queries()
        .get_account_history(pb::GetAccountHistoryRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner();
    let money: Vec<(i64, i64)> = money
        .lines
        .iter()
        .map(|l| (l.amount, l.balance_after))
        .collect();
    assert_eq!(money, vec![(-53, -158), (-105, -105)]);
    // Another merchant may not read it.
    let (query, signature) = cinema.sign_query(&pb::AccountHistoryQuery {
        merchant_id: "cinema-1".into(),
        ..history(pb::AccountKind::MerchantIssued, "", None, 0)
    });
    let denied = server
        .queries()
        .get_account_history(pb::GetAccountHistoryRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

mod reporting {
    use super::*;
    on_both_backends!(account_history_runs_balances_and_outstanding_points_age);
}

async fn clearing_fees_are_charged_by_the_same_rounding_rule(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    for merchant in ["tenant-1", "cinema-1"] {
        server
            .admin()
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: merchant.into(),
                effective_from_unix_ms: 0,
                issue_price_minor_per_point: "1.05".into(),
                redeem_price_minor_per_point: "0.95".into(),
                fee_minor_per_point: "0.1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server.clock.advance(1_000);
    // Earn 333: leg 349.65 → 350 charged, 349 to the float; fee 33.3 → 34 charged, 33 to fees.
    accepted(&server.earn(&tenant, "e-1", "m-1", 333).await);
    // Burn 100 at the cinema: leg 95 paid by the float; fee 10 charged to the cinema.
    accepted(&server.burn(&cinema, "b-1", "m-1", 100).await);
    let balance = |kind, owner: &'static str| money_balance(&server, kind, owner);
    // The legs go to the settlement accounts, the fees to the merchants' fee accounts.
    assert_eq!(
        balance(pb::AccountKind::MerchantSettlement, "tenant-1").await,
        -350
    );
    assert_eq!(
        balance(pb::AccountKind::MerchantFees, "tenant-1").await,
        -34
    );
    assert_eq!(
        balance(pb::AccountKind::MerchantSettlement, "cinema-1").await,
        95
    );
    assert_eq!(
        balance(pb::AccountKind::MerchantFees, "cinema-1").await,
        -10
    );
    assert_eq!(
        balance(pb::AccountKind::OperatorFees, "operator").await,
        33 + 10
    );
    assert_eq!(
        balance(pb::AccountKind::OperatorFloat, "operator").await,
        349 - 95
    );
    assert_eq!(
        balance(pb::AccountKind::OperatorRounding, "operator").await,
        2
    );
    let entry = server.transaction("tenant-1", "e-1").await;
    assert_eq!(entry.terms_version, Some(2));
    let fee_line = entry
        .postings
        .iter()
        .find(|p| p.account_kind == pb::AccountKind::OperatorFees as i32)
        .unwrap();
    assert_eq!(fee_line.amount, 33);
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

mod fees {
    use super::*;
    on_both_backends!(clearing_fees_are_charged_by_the_same_rounding_rule);
}
