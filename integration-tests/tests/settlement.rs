//! Settlement and reconciliation through the gRPC admin API on both backends: periods cut by
//! acceptance time at the configured cut-off, preview as often as wanted, finalise once
//! (again: the same settlement, nothing booked, also after a restart), nets that sum to zero
//! through the operator, closing entries that clear the merchants' settlement and fee
//! accounts into what is payable, the bilateral matrix from lot attribution, breakage shared
//! by the terms, and a merchant's record reconciled over the stream.

use coalition_domain::settlement::{Cutoff, Period};
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestDatabase, TestServer, accepted, on_both_backends, test_config,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

async fn set_terms(server: &TestServer, merchant: &str, fee: &str, breakage_share: &str) {
    server
        .admin()
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: merchant.into(),
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: "0.95".into(),
            fee_minor_per_point: fee.into(),
            breakage_share: breakage_share.into(),
            ..Default::default()
        })
        .await
        .expect("set terms");
}

async fn money(server: &TestServer, kind: pb::AccountKind, owner: &str) -> i64 {
    server.account_balance(kind, owner, "CNY").await
}

fn cutoff(server: &TestServer) -> Cutoff {
    server.config.engine().settlement_cutoff
}

/// Moves the clock to an hour into the next period, so a test's entries share one period.
fn start_of_next_period(server: &TestServer) -> Period {
    let cutoff = cutoff(server);
    let next = cutoff.next(&cutoff.period_at(server.now_ms()));
    server.clock.set(next.start_ms + HOUR_MS);
    next
}

async fn finalise(
    server: &TestServer,
    period: &str,
) -> Result<pb::FinaliseSettlementResponse, tonic::Status> {
    server
        .admin()
        .finalise_settlement(pb::FinaliseSettlementRequest {
            period: period.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn line<'a>(settlement: &'a pb::Settlement, merchant: &str) -> &'a pb::MerchantSettlement {
    settlement
        .merchants
        .iter()
        .find(|line| line.merchant_id == merchant)
        .unwrap_or_else(|| panic!("{merchant} has a line"))
}

fn nets_sum(settlement: &pb::Settlement) -> i64 {
    settlement
        .merchants
        .iter()
        .map(|line| line.net_minor)
        .sum::<i64>()
        + settlement.operator.expect("operator").net_minor
}

/// Runs one statement directly on the test database.
async fn execute(url: &str, statement: &'static str) -> Result<(), String> {
    use sqlx::Connection;
    let result = if url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .map(|_| ())
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .map(|_| ())
    };
    result.map_err(|error| error.to_string())
}

async fn a_period_settles_once_nets_to_zero_and_clears_the_accounts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    set_terms(&server, "tenant-1", "0.01", "0").await;
    set_terms(&server, "cinema-1", "0.01", "0.5").await;
    let period = start_of_next_period(&server);

    accepted(&server.earn(&tenant, "e-1", "m-1", 1_000).await);
    accepted(&server.earn(&cinema, "e-2", "m-2", 200).await);
    // 300 of tenant-1's points redeemed at the cinema, 50 of the cinema's at tenant-1.
    accepted(&server.burn(&cinema, "b-1", "m-1", 300).await);
    accepted(&server.burn(&tenant, "b-2", "m-2", 50).await);

    // Preview while open: as often as wanted, nothing booked.
    let open = server.preview(&period.label).await;
    assert_eq!(open.status, pb::SettlementStatus::Open as i32);
    assert_eq!(
        open,
        server.preview("").await,
        "empty names the open period"
    );
    assert_eq!(nets_sum(&open), 0);
    let refused = finalise(&server, &period.label).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        money(&server, pb::AccountKind::MerchantPayable, "tenant-1").await,
        0
    );

    // Past the cut-off: a late earn falls into the next period.
    server.clock.set(period.end_ms + 1_000);
    let late = accepted(&server.earn(&cinema, "e-late", "m-2", 10).await).entry_sequence;
    let closed = server.preview(&period.label).await;
    assert_eq!(closed.status, pb::SettlementStatus::Closed as i32);
    assert!(closed.last_sequence < late);

    let finalised = finalise(&server, &period.label).await.expect("finalise");
    assert!(!finalised.already_finalised);
    let settlement = finalised.settlement.expect("a settlement");
    assert_eq!(settlement.status, pb::SettlementStatus::Finalised as i32);
    assert_eq!(nets_sum(&settlement), 0);
    let closing = settlement.closing_sequence.expect("a closing entry");
    assert!(closing > late);

    // tenant-1: issued 1000 at 1.05 (1050 owed, fee 10), redeemed 50 at 0.95 (47.5 → 47
    // due, fee 0.5 → 1).
    let tenant_line = line(&settlement, "tenant-1");
    assert_eq!(
        (tenant_line.points_issued, tenant_line.points_redeemed),
        (1_000, 50)
    );
    assert_eq!(tenant_line.issuance_minor, -1_050);
    assert_eq!(tenant_line.redemptions_minor, 47);
    assert_eq!(tenant_line.fees_minor, -10 - 1);
    assert_eq!(tenant_line.net_minor, -1_050 + 47 - 11);
    // cinema-1: issued 200 (210, fee 2), redeemed 300 (285, fee 3).
    let cinema_line = line(&settlement, "cinema-1");
    assert_eq!(cinema_line.net_minor, -210 + 285 - 2 - 3);
    assert_eq!(cinema_line.breakage_share, "0.5");

    // The matrix: whose points were redeemed where, tying to the redemptions.
    let cell = |issuer: &str, redeemer: &str| {
        settlement
            .matrix
            .iter()
            .find(|cell| cell.issuer_id == issuer && cell.redeemer_id == redeemer)
            .map(|cell| (cell.points, cell.value_minor))
    };
    assert_eq!(cell("tenant-1", "cinema-1"), Some((300, 285)));
    assert_eq!(cell("cinema-1", "tenant-1"), Some((50, 47)));
    for redeemer in ["tenant-1", "cinema-1"] {
        let from_matrix: i64 = settlement
            .matrix
            .iter()
            .filter(|cell| cell.redeemer_id == redeemer)
            .map(|cell| cell.value_minor)
            .sum();
        assert_eq!(from_matrix, line(&settlement, redeemer).redemptions_minor);
    }

    // The closing entry cleared the settlement and fee accounts into what is payable; the
    // late earn stays in the open period.
    use pb::AccountKind::{MerchantFees, MerchantPayable, MerchantSettlement};
    assert_eq!(money(&server, MerchantSettlement, "tenant-1").await, 0);
    assert_eq!(money(&server, MerchantFees, "tenant-1").await, 0);
    assert_eq!(
        money(&server, MerchantPayable, "tenant-1").await,
        tenant_line.net_minor
    );
    assert_eq!(money(&server, MerchantSettlement, "cinema-1").await, -11);
    assert_eq!(
        money(&server, MerchantPayable, "cinema-1").await,
        cinema_line.net_minor
    );

    // The record cannot be changed behind the server's back.
    for statement in [
        "UPDATE settlement_periods SET finalised_at_ms = 0",
        "DELETE FROM settlement_periods",
    ] {
        let refused = execute(&server.database.url, statement).await.unwrap_err();
        assert!(refused.contains("immutable"), "{refused}");
    }

    // Finalising again returns the same settlement and books nothing.
    let again = finalise(&server, &period.label).await.expect("again");
    assert!(again.already_finalised);
    assert_eq!(again.settlement.as_ref(), Some(&settlement));
    assert_eq!(server.preview(&period.label).await, settlement);

    // The next period holds the late earn and the closing entry, which it does not net again.
    let next = server.preview(&cutoff(&server).next(&period).label).await;
    assert_eq!(next.first_sequence, late);
    assert_eq!(next.last_sequence, closing);
    assert_eq!(line(&next, "cinema-1").points_issued, 10);
    assert!(
        next.merchants
            .iter()
            .all(|line| line.merchant_id == "cinema-1")
    );
    assert_eq!(nets_sum(&next), 0);

    // The treasury pays the cinema what it is owed. More than is payable is refused and
    // changes nothing; a merchant that owes is paid nothing.
    let payout = |merchant: &str, amount_minor: i64| {
        let mut admin = server.admin();
        let request = pb::RecordPayoutRequest {
            merchant_id: merchant.into(),
            amount_minor,
            reference: format!("COAL-{}-{merchant}", period.label),
        };
        async move { admin.record_payout(request).await }
    };
    let too_much = payout("cinema-1", cinema_line.net_minor + 1)
        .await
        .unwrap_err();
    assert_eq!(
        too_much.code(),
        tonic::Code::FailedPrecondition,
        "{too_much:?}"
    );
    let owes = payout("tenant-1", 1).await.unwrap_err();
    assert_eq!(owes.code(), tonic::Code::FailedPrecondition, "{owes:?}");
    let zero = payout("cinema-1", 0).await.unwrap_err();
    assert_eq!(zero.code(), tonic::Code::InvalidArgument, "{zero:?}");
    assert_eq!(
        money(&server, MerchantPayable, "cinema-1").await,
        cinema_line.net_minor
    );
    let paid = payout("cinema-1", cinema_line.net_minor)
        .await
        .expect("payout")
        .into_inner();
    assert_eq!(paid.payable_minor, 0);
    assert_eq!(money(&server, MerchantPayable, "cinema-1").await, 0);
    // A payout settles an earlier period: it is not business of the open one.
    let with_payout = server.preview(&cutoff(&server).next(&period).label).await;
    assert_eq!(with_payout.last_sequence, paid.entry_sequence);
    assert_eq!(with_payout.merchants, next.merchants);
    assert_eq!(nets_sum(&with_payout), 0);

    // A restart remembers: still finalised, still nothing booked.
    let server = server.restart().await;
    let after_restart = finalise(&server, &period.label)
        .await
        .expect("after restart");
    assert!(after_restart.already_finalised);
    assert_eq!(after_restart.settlement, Some(settlement));
    assert!(server.check().await.is_sound());
}

async fn breakage_is_shared_as_the_terms_say(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let mut config = test_config(&database.url);
    config.points_lifetime_days = 30;
    config.expiry_run_interval_ms = 0;
    let server = TestServer::start_on(database, config).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    set_terms(&server, "tenant-1", "0", "0").await;
    set_terms(&server, "cinema-1", "0", "0.3").await;
    start_of_next_period(&server);
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    accepted(&server.earn(&cinema, "e-2", "m-1", 333).await);

    server.clock.advance(31 * DAY_MS);
    let expiry_period = cutoff(&server).period_at(server.now_ms());
    let run = server
        .admin()
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.points, 433);
    server.clock.set(expiry_period.end_ms);
    let settlement = finalise(&server, &expiry_period.label)
        .await
        .expect("finalise")
        .settlement
        .unwrap();
    // The float held for cinema-1's 333 points: 333 × 1.05 = 349.65 → 349 (the float gets
    // the rounded-down leg); 30% of it, rounded down, goes back to the cinema.
    let cinema_line = line(&settlement, "cinema-1");
    assert_eq!(cinema_line.breakage_minor, 349);
    assert_eq!(cinema_line.breakage_share_minor, 104);
    assert_eq!(cinema_line.net_minor, 104);
    let tenant_line = line(&settlement, "tenant-1");
    assert_eq!(tenant_line.breakage_minor, 105);
    assert_eq!(tenant_line.breakage_share_minor, 0);
    let operator = settlement.operator.unwrap();
    assert_eq!(operator.breakage_kept_minor, 105 + 349 - 104);
    assert_eq!(nets_sum(&settlement), 0);
    assert_eq!(
        money(&server, pb::AccountKind::MerchantPayable, "cinema-1").await,
        104
    );
    assert!(server.check().await.is_sound());
}

async fn a_bad_period_name_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let status = finalise(&server, "2026-13-01").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = finalise(&server, "").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = server
        .admin()
        .preview_settlement(pb::PreviewSettlementRequest {
            period: "yesterday".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

async fn a_breakage_share_outside_zero_to_one_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.tenant_and_cinema().await;
    for share in ["1.5", "-0.1", "0.1234567", "half"] {
        let status = server
            .admin()
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: "tenant-1".into(),
                issue_price_minor_per_point: "1.05".into(),
                redeem_price_minor_per_point: "0.95".into(),
                breakage_share: share.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{share}: {status:?}"
        );
        assert!(status.message().contains("breakage"), "{share}: {status:?}");
    }
    // Nothing was stored: registration set version 1, the next accepted terms are version 2.
    let terms = server
        .admin()
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "tenant-1".into(),
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: "0.95".into(),
            breakage_share: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .terms
        .unwrap();
    assert_eq!((terms.version, terms.breakage_share.as_str()), (2, "1"));
}

/// A member in debt (a reversed earn whose points were on hold) leaves the car park: the
/// capture takes part of the held lot and the released rest of the same lot repays the debt.
/// Both are booked, and the matrix attributes only what the capture took.
async fn a_partial_capture_that_repays_debt_commits_and_attributes_what_it_took(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    let parking = server
        .merchant("parking-1", pb::MerchantCategory::Parking)
        .await;
    server.enroll(&["m-1"]).await;
    let period = start_of_next_period(&server);
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    let hold = server.body(&parking, pb::TransactionKind::Hold, "h-1", "m-1", 100);
    accepted(&server.submit(parking.envelope(&hold)).await);
    let refund = server.referring_body(
        &tenant,
        pb::TransactionKind::Reversal,
        "r-1",
        "m-1",
        100,
        "e-1",
        "tenant-1",
    );
    let refund = server.submit(tenant.envelope(&refund)).await;
    assert_eq!(accepted(&refund).member_points_balance, -100);
    let capture = server.referring_body(
        &parking,
        pb::TransactionKind::Capture,
        "c-1",
        "m-1",
        60,
        "h-1",
        "parking-1",
    );
    let capture = server.submit(parking.envelope(&capture)).await;
    // The 40 released points repaid 40 of the debt.
    assert_eq!(accepted(&capture).member_points_balance, -60);

    server.clock.set(period.end_ms);
    let settlement = finalise(&server, &period.label)
        .await
        .expect("finalise")
        .settlement
        .unwrap();
    let cells: Vec<(&str, &str, i64)> = settlement
        .matrix
        .iter()
        .map(|cell| {
            (
                cell.issuer_id.as_str(),
                cell.redeemer_id.as_str(),
                cell.points,
            )
        })
        .collect();
    assert_eq!(cells, vec![("tenant-1", "parking-1", 60)]);
    assert_eq!(nets_sum(&settlement), 0);
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
    let server = server.restart().await;
    assert_eq!(server.balance("m-1").await, -60);
}

async fn a_merchant_record_reconciles_over_the_stream(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let period = start_of_next_period(&server);
    for (id, points, spend) in [
        ("t-1", 100, 10_000),
        ("t-2", 50, 5_000),
        ("t-3", 30, 3_000),
        ("t-4", 10, 1_000),
    ] {
        let body = pb::TransactionBody {
            spend_minor: Some(spend),
            ..server.body(&tenant, pb::TransactionKind::Earn, id, "m-1", points)
        };
        accepted(&server.submit(tenant.envelope(&body)).await);
    }
    let row = |id: &str, points: i64, amount: Option<i64>| pb::ReconcileRequest {
        item: Some(pb::reconcile_request::Item::Row(pb::MerchantRecordRow {
            merchant_transaction_id: id.into(),
            points,
            amount_minor: amount,
            kind: "earn".into(),
        })),
    };
    let messages = vec![
        pb::ReconcileRequest {
            item: Some(pb::reconcile_request::Item::Header(pb::ReconcileHeader {
                merchant_id: "tenant-1".into(),
                period: period.label.clone(),
            })),
        },
        row("t-1", 100, Some(10_000)),
        row("t-2", 51, Some(5_000)),
        row("t-3", 30, Some(2_999)),
        row("t-9", 5, None),
        row("t-1", 100, Some(10_000)),
        row("", 7, None),
    ];
    let report = server
        .admin()
        .reconcile(tokio_stream::iter(messages.clone()))
        .await
        .expect("reconcile")
        .into_inner();
    assert_eq!(report.matched, 1);
    let statuses: Vec<(i32, &str, u64)> = report
        .differences
        .iter()
        .map(|d| (d.status, d.merchant_transaction_id.as_str(), d.merchant_row))
        .collect();
    use pb::ReconcileStatus as S;
    assert_eq!(
        statuses,
        vec![
            (S::PointsMismatch as i32, "t-2", 2),
            (S::AmountMismatch as i32, "t-3", 3),
            (S::MissingInClearing as i32, "t-9", 4),
            (S::Duplicated as i32, "t-1", 5),
            (S::MissingAtMerchant as i32, "t-4", 0),
        ]
    );
    assert_eq!(
        report.malformed,
        vec!["row 6: merchant_transaction_id is empty".to_owned()]
    );
    let merchant = report.merchant.unwrap();
    let clearing = report.clearing.unwrap();
    assert_eq!((merchant.transactions, merchant.points), (5, 286));
    assert_eq!((clearing.transactions, clearing.points), (4, 190));

    // A stream that does not start with its header is refused.
    let status = server
        .admin()
        .reconcile(tokio_stream::iter(vec![row("t-1", 100, None)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A second header midway is refused, and the reconciliation it abandons leaves nothing
    // behind: the next one on the same server answers as before. Malformed rows beyond the
    // first 1,000 are counted, not listed.
    let header = messages[0].clone();
    let status = server
        .admin()
        .reconcile(tokio_stream::iter(vec![
            header.clone(),
            row("t-1", 100, None),
            header.clone(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut again = vec![header, row("t-1", 100, Some(10_000))];
    again.extend((0..1_005).map(|_| row("", 1, None)));
    let report = server
        .admin()
        .reconcile(tokio_stream::iter(again))
        .await
        .expect("reconcile again")
        .into_inner();
    assert_eq!(report.matched, 1);
    assert_eq!(
        report.differences.len(),
        3,
        "t-2, t-3 and t-4 missing at the merchant"
    );
    assert_eq!(report.malformed.len(), 1_000);
    assert_eq!(report.malformed_not_listed, 5);
    assert_eq!(
        report.malformed[999],
        "row 1001: merchant_transaction_id is empty"
    );
}

/// A record of 12,500 rows against 240 entries, drawn at random (exact rows, points and spend
/// off by one, ids clearing never saw, repeats, empty ids, entries the record leaves out, an
/// entry before the period and another merchant's entry under a shared id): the database's
/// streamed matching gives exactly what the in-memory definition gives, in the same order, and
/// the response lists the first 10,000 differences and counts the rest.
async fn a_large_record_reconciles_as_the_definition_says(backend: Backend) {
    use coalition_domain::reconciliation::{
        ClearedTransaction, Malformed, MerchantRow, Status, reconcile,
    };
    use rand::{Rng, SeedableRng};
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    let earn = |signer, id: &str, points: i64, spend: Option<i64>| pb::TransactionBody {
        spend_minor: spend,
        ..server.body(signer, pb::TransactionKind::Earn, id, "m-1", points)
    };
    // Before the period: named by the record, so missing in clearing for this period.
    accepted(
        &server
            .submit(tenant.envelope(&earn(&tenant, "t-7", 9, None)))
            .await,
    );
    let period = start_of_next_period(&server);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut cleared = Vec::new();
    for index in 0..240 {
        let id = format!("t-{index}");
        if index == 7 {
            continue;
        }
        let points = rng.random_range(1..500);
        let spend = rng.random_bool(0.7).then(|| points * 100);
        let result = server
            .submit(tenant.envelope(&earn(&tenant, &id, points, spend)))
            .await;
        cleared.push(ClearedTransaction {
            merchant_transaction_id: id,
            kind: "earn".into(),
            points,
            spend_minor: spend,
            sequence: accepted(&result).entry_sequence,
        });
    }
    // Another merchant's transaction under an id the tenant also uses.
    accepted(
        &server
            .submit(cinema.envelope(&earn(&cinema, "t-3", 1, None)))
            .await,
    );

    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    let mut messages = vec![pb::ReconcileRequest {
        item: Some(pb::reconcile_request::Item::Header(pb::ReconcileHeader {
            merchant_id: "tenant-1".into(),
            period: period.label.clone(),
        })),
    }];
    for line in 1..=12_500u64 {
        let (id, points, amount) = if rng.random_bool(0.001) {
            (String::new(), 1, None)
        } else if rng.random_bool(0.02) {
            // One of clearing's transactions (some left out, some repeated), as booked or
            // off by one in points or spend.
            let cleared = &cleared[rng.random_range(0..200)];
            let points = cleared.points + i64::from(rng.random_bool(0.2));
            let amount = match rng.random_range(0..3) {
                0 => None,
                1 => cleared.spend_minor,
                _ => Some(cleared.spend_minor.unwrap_or(0) + 1),
            };
            (cleared.merchant_transaction_id.clone(), points, amount)
        } else {
            // Ids clearing never booked for this merchant in this period, some repeated.
            (format!("x-{}", rng.random_range(0..11_000)), 5, Some(500))
        };
        messages.push(pb::ReconcileRequest {
            item: Some(pb::reconcile_request::Item::Row(pb::MerchantRecordRow {
                merchant_transaction_id: id.clone(),
                points,
                amount_minor: amount,
                kind: "earn".into(),
            })),
        });
        if id.is_empty() {
            malformed.push(Malformed {
                line,
                problem: "merchant_transaction_id is empty".into(),
            });
        } else {
            rows.push(MerchantRow {
                line,
                merchant_transaction_id: id,
                kind: "earn".into(),
                points,
                amount_minor: amount,
            });
        }
    }
    for (id, line) in [("t-3", 12_501), ("t-7", 12_502)] {
        rows.push(MerchantRow {
            line,
            merchant_transaction_id: id.into(),
            kind: "earn".into(),
            points: 1,
            amount_minor: None,
        });
        messages.push(pb::ReconcileRequest {
            item: Some(pb::reconcile_request::Item::Row(pb::MerchantRecordRow {
                merchant_transaction_id: id.into(),
                points: 1,
                amount_minor: None,
                kind: "earn".into(),
            })),
        });
    }
    let (expected, differences) = reconcile(&rows, &cleared, malformed.clone());
    assert!(differences.len() > 10_000, "{}", differences.len());
    for status in [
        Status::Matched,
        Status::PointsMismatch,
        Status::AmountMismatch,
        Status::MissingInClearing,
        Status::MissingAtMerchant,
        Status::Duplicated,
    ] {
        assert!(expected.count(status) > 0, "the record has no {status:?}");
    }

    let report = server
        .admin()
        .reconcile(tokio_stream::iter(messages))
        .await
        .expect("reconcile")
        .into_inner();
    let merchant = report.merchant.unwrap();
    let clearing = report.clearing.unwrap();
    assert_eq!(
        (
            merchant.transactions,
            merchant.points,
            merchant.amount_minor
        ),
        (
            expected.merchant.transactions,
            expected.merchant.points,
            expected.merchant.amount_minor
        )
    );
    assert_eq!(
        (
            clearing.transactions,
            clearing.points,
            clearing.amount_minor
        ),
        (
            expected.clearing.transactions,
            expected.clearing.points,
            expected.clearing.amount_minor
        )
    );
    assert_eq!(report.matched, expected.count(Status::Matched));
    let listed: Vec<_> = differences
        .iter()
        .take(10_000)
        .map(|d| {
            (
                d.status.name().to_owned(),
                d.merchant_transaction_id.clone(),
                d.merchant_line.unwrap_or(0),
                d.entry_sequence.unwrap_or(0),
                d.merchant_points,
                d.clearing_points,
                d.merchant_amount_minor,
                d.clearing_amount_minor,
            )
        })
        .collect();
    let got: Vec<_> = report
        .differences
        .iter()
        .map(|d| {
            (
                d.status().as_str_name()["RECONCILE_STATUS_".len()..].to_ascii_lowercase(),
                d.merchant_transaction_id.clone(),
                d.merchant_row,
                d.entry_sequence,
                d.merchant_points,
                d.clearing_points,
                d.merchant_amount_minor,
                d.clearing_amount_minor,
            )
        })
        .collect();
    assert_eq!(got.len(), 10_000);
    assert!(
        got == listed,
        "the listed differences differ from the definition's"
    );
    assert_eq!(
        report.differences_not_listed,
        differences.len() as u64 - 10_000
    );
    assert_eq!(report.malformed.len(), malformed.len());
    assert_eq!(report.malformed_not_listed, 0);
}

/// A report that cannot be written (a full disk, a closed stream) fails the reconciliation
/// with the sink's error and leaves nothing behind: the next one on the same database sees
/// only its own rows.
async fn a_report_that_cannot_be_written_leaves_nothing_behind(backend: Backend) {
    use coalition_domain::MerchantId;
    use coalition_domain::reconciliation::{MerchantRow, Status};
    use coalition_storage::StorageError;
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    for id in ["b-1", "b-2", "b-3"] {
        accepted(
            &server
                .submit(tenant.envelope(&server.body(
                    &tenant,
                    pb::TransactionKind::Earn,
                    id,
                    "m-1",
                    10,
                )))
                .await,
        );
    }
    let storage = server.server.engine.storage();
    let merchant = MerchantId::new("tenant-1").unwrap();
    let rows = |prefix: &str, count: u64| {
        (1..=count)
            .map(|line| MerchantRow {
                line,
                merchant_transaction_id: format!("{prefix}-{line}"),
                kind: "earn".into(),
                points: 10,
                amount_minor: None,
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..2 {
        let mut reconciliation = storage
            .begin_reconciliation(&merchant, 0, i64::MAX)
            .await
            .unwrap();
        for row in rows("x", 5) {
            reconciliation.add(row).await.unwrap();
        }
        let mut written = 0;
        let failed = reconciliation
            .finish(|_| {
                written += 1;
                if written == 2 {
                    Err(std::io::Error::other("no space left on device"))
                } else {
                    Ok(())
                }
            })
            .await;
        match failed {
            Err(StorageError::Output(error)) => {
                assert_eq!(error.to_string(), "no space left on device")
            }
            other => panic!("the sink's failure was not reported: {other:?}"),
        }
    }
    // Rows b-1 (matched) and y-2, y-3 (not in clearing); b-2 and b-3 missing at the merchant.
    let mut reconciliation = storage
        .begin_reconciliation(&merchant, 0, i64::MAX)
        .await
        .unwrap();
    let mut record = rows("y", 3);
    record[0].merchant_transaction_id = "b-1".into();
    for row in record {
        reconciliation.add(row).await.unwrap();
    }
    let mut differences = Vec::new();
    let summary = reconciliation
        .finish(|difference| {
            differences.push((difference.status, difference.merchant_transaction_id));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(summary.merchant.transactions, 3);
    assert_eq!(summary.clearing.transactions, 3);
    assert_eq!(summary.count(Status::Matched), 1);
    assert_eq!(
        differences,
        vec![
            (Status::MissingInClearing, "y-2".to_owned()),
            (Status::MissingInClearing, "y-3".to_owned()),
            (Status::MissingAtMerchant, "b-2".to_owned()),
            (Status::MissingAtMerchant, "b-3".to_owned()),
        ]
    );
}

/// A preview reads only what was committed since the last preview of its period; what it
/// shows after several rounds must be exactly the settlement computed from the whole period
/// (finalising computes it whole), across merchants, the operator and the matrix.
async fn a_preview_built_in_rounds_equals_the_settlement_computed_whole(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2", "m-3"]).await;
    set_terms(&server, "tenant-1", "0.01", "0.2").await;
    set_terms(&server, "cinema-1", "0.01", "0.5").await;
    let period = start_of_next_period(&server);
    let mut rounds = Vec::new();
    for round in 0..3 {
        for (member, points) in [("m-1", 700), ("m-2", 300), ("m-3", 90)] {
            accepted(
                &server
                    .earn(&tenant, &format!("e-{round}-{member}"), member, points)
                    .await,
            );
        }
        accepted(&server.earn(&cinema, &format!("c-{round}"), "m-2", 40).await);
        accepted(
            &server
                .burn(&cinema, &format!("b-{round}"), "m-1", 250)
                .await,
        );
        accepted(&server.burn(&tenant, &format!("t-{round}"), "m-2", 30).await);
        rounds.push(server.preview(&period.label).await);
    }
    assert_ne!(
        rounds[0].merchants, rounds[2].merchants,
        "each round moved the nets"
    );
    assert_ne!(rounds[1].matrix, rounds[2].matrix, "and the matrix");
    let last = rounds.pop().unwrap();
    server.clock.set(period.end_ms + HOUR_MS);
    let whole = finalise(&server, &period.label)
        .await
        .expect("finalise")
        .settlement
        .expect("a settlement");
    assert_eq!(last.merchants, whole.merchants);
    assert_eq!(last.operator, whole.operator);
    assert_eq!(last.matrix, whole.matrix);
    assert_eq!(
        (last.first_sequence, last.last_sequence, &last.head_hash),
        (whole.first_sequence, whole.last_sequence, &whole.head_hash)
    );
}

on_both_backends!(
    a_preview_built_in_rounds_equals_the_settlement_computed_whole,
    a_large_record_reconciles_as_the_definition_says,
    a_report_that_cannot_be_written_leaves_nothing_behind,
    a_period_settles_once_nets_to_zero_and_clears_the_accounts,
    breakage_is_shared_as_the_terms_say,
    a_bad_period_name_is_refused,
    a_breakage_share_outside_zero_to_one_is_refused,
    a_merchant_record_reconciles_over_the_stream,
    a_partial_capture_that_repays_debt_commits_and_attributes_what_it_took,
);
