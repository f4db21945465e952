//! The partner client crate (`coalition-client`) against a real server: every kind of
//! transaction, batches split at the limit with bad items, duplicates and conflicts, retries
//! across a dropped connection (unary and streaming) that book once, signed queries, and the
//! README's worked signing example byte for byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coalition_client::{
    Client, Error, Outcome, RejectionReason, RetryPolicy, Signer, Transaction, TransactionKind,
};
use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use coalition_integration_tests::{Backend, TestServer, on_both_backends};
use tokio::net::{TcpListener, TcpStream};

fn client_for(server: &TestServer, signer: &MerchantSigner) -> Client {
    client_at(server.server.endpoint(), signer)
}

fn client_at(address: String, signer: &MerchantSigner) -> Client {
    Client::builder(
        address,
        Signer::new(&signer.merchant_id, &signer.key_id, signer.key.clone()),
    )
    .location("store-1", "pos-1")
    .retry(RetryPolicy {
        attempts_max: 6,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    })
    .build()
    .expect("a valid address")
}

fn booked(outcome: &Outcome) -> &coalition_client::Accepted {
    match outcome {
        Outcome::Accepted(accepted) => accepted,
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

fn refused(outcome: &Outcome) -> RejectionReason {
    match outcome {
        Outcome::Rejected(rejected) => rejected.reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Terms for `merchant` with an earn rate, cross-merchant reversals and, if given, a legacy
/// unit (a unit belongs to one merchant).
async fn full_terms(server: &TestServer, merchant: &str, legacy_unit: &str) {
    server
        .admin()
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: merchant.into(),
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: "0.95".into(),
            earn_points_per_minor: "0.01".into(),
            legacy_unit: legacy_unit.into(),
            points_per_legacy_unit: if legacy_unit.is_empty() { "" } else { "0.5" }.into(),
            cross_merchant_reversals: true,
            ..Default::default()
        })
        .await
        .expect("set terms");
}

async fn every_kind_is_booked_through_the_client(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let desk = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    full_terms(&server, "tenant-1", "MALLSTAR").await;
    full_terms(&server, "tenant-2", "").await;
    server.enroll(&["m-1"]).await;
    let tenant = client_for(&server, &tenant);
    let cinema = client_for(&server, &cinema);
    let desk = client_for(&server, &desk);

    let earn = tenant
        .submit(&Transaction::earn("sale-1", "m-1", 500))
        .await
        .unwrap();
    let earned = booked(&earn);
    assert_eq!(
        (earned.kind, earned.points, earned.member_points_balance),
        (TransactionKind::Earn, 500, 500)
    );
    // 18,000 minor units at 0.01 points per minor unit: 180 points.
    let by_spend = tenant
        .submit(&Transaction::earn_by_spend("sale-2", "m-1", 18_000).store("store-9"))
        .await
        .unwrap();
    assert_eq!(booked(&by_spend).points, 180);
    let burn = cinema
        .submit(&Transaction::burn("ticket-1", "m-1", 80))
        .await
        .unwrap();
    assert_eq!(booked(&burn).member_points_balance, 600);
    let hold = cinema
        .submit(&Transaction::hold("gate-in-1", "m-1", 100))
        .await
        .unwrap();
    assert_eq!(booked(&hold).member_points_balance, 500);
    let capture = cinema
        .submit(&Transaction::capture("gate-out-1", "gate-in-1", "m-1", 60))
        .await
        .unwrap();
    assert_eq!(
        (
            booked(&capture).points,
            booked(&capture).member_points_balance
        ),
        (60, 540)
    );
    cinema
        .submit(&Transaction::hold("gate-in-2", "m-1", 40))
        .await
        .unwrap();
    let void = cinema
        .submit(&Transaction::void("gate-void-2", "gate-in-2", "m-1"))
        .await
        .unwrap();
    assert_eq!(
        (booked(&void).kind, booked(&void).member_points_balance),
        (TransactionKind::Void, 540)
    );
    let reversal = tenant
        .submit(&Transaction::reverse("refund-1", "sale-1", "m-1", 100))
        .await
        .unwrap();
    assert_eq!(booked(&reversal).member_points_balance, 440);
    // Bought at tenant-1, returned at tenant-2.
    let returned = desk
        .submit(&Transaction::reverse("return-1", "sale-2", "m-1", 80).of_merchant("tenant-1"))
        .await
        .unwrap();
    assert_eq!(booked(&returned).member_points_balance, 360);
    // 101 units at 0.5 points per unit: 50 points.
    let exchange_in = tenant
        .submit(&Transaction::exchange_in("miles-in-1", "m-1", 101))
        .await
        .unwrap();
    assert_eq!(
        (
            booked(&exchange_in).points,
            booked(&exchange_in).member_points_balance
        ),
        (50, 410)
    );
    let exchange_out = tenant
        .submit(&Transaction::exchange_out("miles-out-1", "m-1", 10))
        .await
        .unwrap();
    assert_eq!(booked(&exchange_out).member_points_balance, 400);

    assert_eq!(server.balance("m-1").await, 400);
    let entry = server.transaction("tenant-1", "sale-2").await;
    assert_eq!(entry.store_id, "store-9", "a transaction's own store wins");
    assert_eq!(entry.terminal_id, "pos-1", "the client's default terminal");
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

async fn batches_split_at_the_limit_and_keep_the_good_items(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    let client = Client::builder(
        server.server.endpoint(),
        Signer::new("tenant-1", "key-1", tenant.key.clone()),
    )
    .location("store-1", "pos-1")
    .batch_len_max(3)
    .build()
    .unwrap();

    let batch = [
        Transaction::earn("b-1", "m-1", 10),
        Transaction::earn("b-2", "m-1", 0),
        Transaction::earn("b-3", "m-2", 20),
        Transaction::earn("b-4", "nobody", 5),
        Transaction::earn("b-5", "m-1", 30),
        Transaction::burn("b-6", "m-2", 500),
        Transaction::earn("b-7", "m-2", 40),
    ];
    let signed: Vec<_> = batch.iter().map(|t| client.sign(t)).collect();
    let outcomes = client.submit_batch_signed(&signed).await.unwrap();
    assert_eq!(outcomes.len(), 7, "one outcome per transaction, in order");
    let ids: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Accepted(a) | Outcome::Duplicate(a) => a.merchant_transaction_id.as_str(),
            Outcome::Rejected(r) => r.merchant_transaction_id.as_str(),
        })
        .collect();
    assert_eq!(ids, ["b-1", "b-2", "b-3", "b-4", "b-5", "b-6", "b-7"]);
    assert_eq!(refused(&outcomes[1]), RejectionReason::PointsInvalid);
    assert_eq!(refused(&outcomes[3]), RejectionReason::MemberUnknown);
    assert_eq!(refused(&outcomes[5]), RejectionReason::PointsInsufficient);
    assert_eq!(booked(&outcomes[6]).member_points_balance, 60);
    assert_eq!(server.balance("m-1").await, 40);

    // The same bytes again: each booked one is a duplicate with its original result.
    let again = client.submit_batch_signed(&signed).await.unwrap();
    for (first, second) in outcomes.iter().zip(&again) {
        match (first, second) {
            (Outcome::Accepted(a), Outcome::Duplicate(b)) => assert_eq!(a, b),
            (Outcome::Rejected(a), Outcome::Rejected(b)) => assert_eq!(a.reason, b.reason),
            pair => panic!("a resend changed the answer: {pair:?}"),
        }
    }
    // The same id with another body is a conflict, and books nothing.
    let conflict = client
        .submit(&Transaction::earn("b-1", "m-1", 11))
        .await
        .unwrap();
    assert_eq!(refused(&conflict), RejectionReason::TransactionIdConflict);
    assert_eq!(server.balance("m-1").await, 40);
}

async fn signed_queries_read_balance_history_and_transactions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let tenant = client_for(&server, &tenant);
    let cinema = client_for(&server, &cinema);
    for i in 0..5 {
        tenant
            .submit(&Transaction::earn(format!("e-{i}"), "m-1", 10))
            .await
            .unwrap();
    }
    cinema
        .submit(&Transaction::burn("c-1", "m-1", 15))
        .await
        .unwrap();

    let balance = tenant.balance("m-1").await.unwrap();
    assert_eq!((balance.points, balance.as_of_entry_sequence), (35, 6));
    let page = tenant.history("m-1", None, 3).await.unwrap();
    let sequences: Vec<u64> = page.entries.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        [5, 4, 3],
        "newest first, only the tenant's entries"
    );
    let rest = tenant
        .history("m-1", page.next_before_sequence, 3)
        .await
        .unwrap();
    let sequences: Vec<u64> = rest.entries.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [2, 1]);
    assert_eq!(rest.member_points_balance, 35);
    let entry = tenant.transaction("e-3").await.unwrap().expect("booked");
    assert_eq!((entry.sequence, entry.points), (4, 10));
    assert_eq!(tenant.transaction("never-sent").await.unwrap(), None);
    match tenant.balance("not-a-member").await {
        Err(Error::Refused(status)) => assert_eq!(status.code(), tonic::Code::NotFound),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

/// A TCP proxy in front of the server whose first `drop_first` connections carry the
/// client's bytes to the server but none of the server's back, and are cut after `cut_after`:
/// the server books what it received, and the client never hears of it. Later connections
/// pass both ways.
async fn lossy_proxy(server: String, drop_first: usize, cut_after: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let upstream = server.trim_start_matches("http://").to_owned();
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut outbound = TcpStream::connect(&upstream).await.unwrap();
            if connections.fetch_add(1, Ordering::SeqCst) < drop_first {
                tokio::spawn(async move {
                    let (mut client_read, _client_write) = inbound.split();
                    let (mut server_read, mut server_write) = outbound.split();
                    let mut sink = tokio::io::sink();
                    let forward = tokio::io::copy(&mut client_read, &mut server_write);
                    let swallow = tokio::io::copy(&mut server_read, &mut sink);
                    let _ =
                        tokio::time::timeout(cut_after, async { tokio::join!(forward, swallow) })
                            .await;
                    // Dropping both sockets here cuts the connection.
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }
    });
    format!("http://{address}")
}

async fn a_retry_after_a_dropped_connection_books_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let proxy = lossy_proxy(server.server.endpoint(), 1, Duration::from_millis(500)).await;
    let client = client_at(proxy, &tenant);

    // Sent on the first connection, booked, the answer lost; sent again on the second.
    let outcome = client
        .submit(&Transaction::earn("lost-answer-1", "m-1", 70))
        .await
        .unwrap();
    let Outcome::Duplicate(original) = &outcome else {
        panic!("the retry should read the booking of the first attempt: {outcome:?}");
    };
    assert_eq!(
        (original.entry_sequence, original.member_points_balance),
        (1, 70)
    );
    assert_eq!(server.balance("m-1").await, 70, "booked once");
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
}

async fn the_stream_resends_what_a_dropped_connection_left_unanswered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let proxy = lossy_proxy(server.server.endpoint(), 1, Duration::from_millis(500)).await;
    let submitter = client_at(proxy, &tenant).stream(8);

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let submitter = submitter.clone();
        calls.spawn(async move {
            submitter
                .submit(&Transaction::earn(format!("s-{i}"), "m-1", 1))
                .await
        });
    }
    let (mut accepted, mut duplicates) = (0, 0);
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap().unwrap() {
            Outcome::Accepted(_) => accepted += 1,
            Outcome::Duplicate(_) => duplicates += 1,
            Outcome::Rejected(rejected) => panic!("{rejected:?}"),
        }
    }
    assert_eq!(accepted + duplicates, 40);
    assert!(
        duplicates > 0,
        "the first connection's requests were booked and their answers lost"
    );
    assert_eq!(server.balance("m-1").await, 40, "each booked once");
}

on_both_backends!(
    every_kind_is_booked_through_the_client,
    batches_split_at_the_limit_and_keep_the_good_items,
    signed_queries_read_balance_history_and_transactions,
    a_retry_after_a_dropped_connection_books_once,
    the_stream_resends_what_a_dropped_connection_left_unanswered,
);

#[tokio::test]
async fn retries_end_after_the_policy_s_attempts() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = Client::builder(address, Signer::from_seed("tenant-1", "key-1", &[1; 32]))
        .retry(RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
        })
        .build()
        .unwrap();
    match client.submit(&Transaction::earn("e-1", "m-1", 1)).await {
        Err(Error::RetriesExhausted { attempts, last, .. }) => {
            assert_eq!(attempts, 3);
            assert_eq!(last.code(), tonic::Code::Unavailable);
        }
        other => panic!("expected the retries to run out, got {other:?}"),
    }
}

#[test]
fn the_client_signs_the_readme_example_byte_for_byte() {
    let seed: [u8; 32] = std::array::from_fn(|index| index as u8);
    let signer = Signer::from_seed("tenant-001", "key-1", &seed);
    let transaction = Transaction::earn("pos-7-000123", "member-000042", 180)
        .spend_minor(18_000)
        .occurred_at(1_767_225_600_000);
    let location = coalition_client::Location {
        store_id: "store-12".into(),
        terminal_id: "pos-7".into(),
    };
    let signed = signer.sign(&transaction, &location);
    // Found at run time, as in readme_and_demo.rs: a test binary may be reused elsewhere.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(std::path::Path::new(&manifest).join("../README.md"))
        .expect("the README");
    let line = |label: &str| -> String {
        readme
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("the README has {label:?}"))
            .trim()
            .to_owned()
    };
    assert_eq!(hex::encode(&signed.envelope.body), line("body (hex):"));
    assert_eq!(
        hex::encode(&signed.envelope.signature),
        line("signature (hex):")
    );
    assert_eq!(hex::encode(signer.public_key()), line("public key (hex):"));
    assert_eq!(
        coalition_client::SUBMISSION_DOMAIN,
        coalition_domain::signing::SUBMISSION_DOMAIN
    );
    assert_eq!(
        coalition_client::QUERY_DOMAIN,
        coalition_domain::signing::QUERY_DOMAIN
    );
    // The README's signed query, from the client's signer.
    let query = pb::BalanceQuery {
        merchant_id: "tenant-001".into(),
        issued_at_unix_ms: 1_767_225_600_000,
        account_kind: pb::AccountKind::MemberWallet as i32,
        owner_id: "member-000042".into(),
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&query);
    assert_eq!(hex::encode(&bytes), line("query (hex):"));
    assert_eq!(
        hex::encode(signer.sign_bytes(coalition_client::QUERY_DOMAIN, &bytes)),
        line("query signature (hex):")
    );
}

/// The worked example of docs/entry-hash.md: an earn entry and its hash.
fn documented_entry() -> pb::JournalEntry {
    pb::JournalEntry {
        sequence: 1,
        entry_kind: pb::EntryKind::Earn as i32,
        accepted_at_unix_ms: 1_767_225_600_250,
        merchant_id: "tenant-001".into(),
        merchant_transaction_id: "pos-7-000123".into(),
        store_id: "store-12".into(),
        terminal_id: "pos-7".into(),
        occurred_at_unix_ms: 1_767_225_600_000,
        body_hash: vec![0x11; 32],
        member_id: "member-000042".into(),
        points: 180,
        spend_minor: Some(18_000),
        member_points_balance: 180,
        terms_version: Some(1),
        expires_at_unix_ms: Some(1_798_761_600_000),
        previous_hash: vec![0; 32],
        postings: vec![
            pb::Posting {
                account_kind: pb::AccountKind::MemberWallet as i32,
                owner_id: "member-000042".into(),
                asset: "PTS".into(),
                amount: 180,
            },
            pb::Posting {
                account_kind: pb::AccountKind::MerchantIssued as i32,
                owner_id: "tenant-001".into(),
                asset: "PTS".into(),
                amount: -180,
            },
        ],
        ..Default::default()
    }
}

#[test]
fn the_entry_hash_document_s_example_is_what_the_client_computes() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let document =
        std::fs::read_to_string(std::path::Path::new(&manifest).join("../docs/entry-hash.md"))
            .expect("docs/entry-hash.md");
    let documented = document
        .lines()
        .find_map(|line| line.strip_prefix("hash (hex):"))
        .expect("the document gives the example's hash")
        .trim()
        .to_owned();
    assert_eq!(
        hex::encode(coalition_client::entry_hash(&documented_entry())),
        documented
    );
}
