//! `SubscribeEntries` through the partner client: each merchant sees exactly the entries that
//! concern it, in order, with other merchants' postings withheld; the admin token sees every
//! entry and every hash checks; a subscription resumes across a `kill -9` of the server with
//! nothing lost or repeated; a subscriber that does not read never holds up submissions and
//! still receives everything; the subscriber limit.

use std::time::Duration;

use coalition_client::{Client, ReceivedEntry, RetryPolicy, Signer, Transaction};
use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use coalition_integration_tests::{
    ADMIN_TOKEN, Backend, TestDatabase, TestServer, connect, new_key, on_both_backends,
    register_merchant, spawn_server, test_config,
};

fn client(address: &str, signer: &MerchantSigner) -> Client {
    Client::builder(
        address,
        Signer::new(&signer.merchant_id, &signer.key_id, signer.key.clone()),
    )
    .location("store-1", "pos-1")
    .retry(RetryPolicy {
        attempts_max: 200,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    })
    .build()
    .unwrap()
}

fn admin_client(address: &str) -> Client {
    Client::builder(address, Signer::from_seed("operator", "none", &[9; 32]))
        .admin_token(ADMIN_TOKEN)
        .build()
        .unwrap()
}

/// A subscription to every entry from the first, as the admin token asks for it.
fn every_entry() -> pb::SubscribeEntriesRequest {
    pb::SubscribeEntriesRequest {
        query: prost::Message::encode_to_vec(&pb::EntriesSubscription::default()),
        signature: None,
    }
}

/// The next `count` entries of a subscription, failing the test if they do not come.
async fn take(
    subscription: &mut coalition_client::EntrySubscription,
    count: usize,
) -> Vec<ReceivedEntry> {
    let mut received = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("the entry arrives")
            .expect("the subscription goes on");
        received.push(entry);
    }
    received
}

/// A merchant's view of a whole entry, as the server promises it: the entry if the merchant
/// submitted it or it posts to one of the merchant's accounts, without other merchants'
/// postings.
fn merchant_view(entry: &pb::JournalEntry, merchant: &str) -> Option<ReceivedEntry> {
    use pb::AccountKind::*;
    let merchant_account = |posting: &pb::Posting| {
        matches!(
            posting.account_kind(),
            MerchantIssued
                | MerchantRedeemed
                | MerchantSettlement
                | MerchantFees
                | MerchantPayable
                | MerchantBreakage
        )
    };
    let concerns = entry.merchant_id == merchant
        || entry
            .postings
            .iter()
            .any(|p| merchant_account(p) && p.owner_id == merchant);
    if !concerns {
        return None;
    }
    let mut view = entry.clone();
    view.postings
        .retain(|p| !merchant_account(p) || p.owner_id == merchant);
    Some(ReceivedEntry {
        postings_withheld: (entry.postings.len() - view.postings.len()) as u32,
        entry: view,
    })
}

/// Books a mix at three merchants: earns, burns of another merchant's points, a hold and its
/// capture, a refund, a return at another merchant than the seller. Returns the last
/// sequence booked.
async fn book_mix(
    tenant: &Client,
    cinema: &Client,
    desk: &Client,
    round: usize,
    members: &[&str],
) -> u64 {
    let mut last = 0;
    let mut booked = |outcome: coalition_client::Outcome| {
        let accepted = outcome.booked().expect("booked").clone();
        last = last.max(accepted.entry_sequence);
    };
    for (i, member) in members.iter().enumerate() {
        booked(
            tenant
                .submit(&Transaction::earn(format!("e-{round}-{i}"), *member, 300))
                .await
                .unwrap(),
        );
        booked(
            cinema
                .submit(&Transaction::burn(format!("b-{round}-{i}"), *member, 40))
                .await
                .unwrap(),
        );
    }
    let member = members[0];
    booked(
        cinema
            .submit(&Transaction::hold(format!("h-{round}"), member, 50))
            .await
            .unwrap(),
    );
    booked(
        cinema
            .submit(&Transaction::capture(
                format!("c-{round}"),
                format!("h-{round}"),
                member,
                30,
            ))
            .await
            .unwrap(),
    );
    booked(
        tenant
            .submit(&Transaction::reverse(
                format!("r-{round}"),
                format!("e-{round}-0"),
                member,
                20,
            ))
            .await
            .unwrap(),
    );
    booked(
        desk.submit(
            &Transaction::reverse(format!("x-{round}"), format!("e-{round}-1"), members[1], 10)
                .of_merchant("tenant-1"),
        )
        .await
        .unwrap(),
    );
    last
}

async fn each_subscriber_sees_exactly_what_concerns_it_in_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let address = server.server.endpoint();
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let desk = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    server
        .admin()
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: "tenant-2".into(),
            issue_price_minor_per_point: "1.05".into(),
            redeem_price_minor_per_point: "0.95".into(),
            cross_merchant_reversals: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let members = ["m-1", "m-2", "m-3"];
    server.enroll(&members).await;
    let (tenant, cinema, desk) = (
        client(&address, &tenant),
        client(&address, &cinema),
        client(&address, &desk),
    );

    // Half the day before anyone subscribes (read from the database), half after (live).
    book_mix(&tenant, &cinema, &desk, 1, &members).await;
    let mut subscriptions = [
        ("tenant-1", tenant.subscribe(0)),
        ("cinema-1", cinema.subscribe(0)),
        ("tenant-2", desk.subscribe(0)),
    ];
    // Each reads its first entry before the second half is booked, so the rest comes live.
    let mut firsts = Vec::new();
    for (_, subscription) in &mut subscriptions {
        firsts.push(take(subscription, 1).await);
    }
    let mut everything = admin_client(&address).subscribe(0);
    let first = take(&mut everything, 1).await;
    let last = book_mix(&tenant, &cinema, &desk, 2, &members).await;
    let mut all = first;
    all.extend(take(&mut everything, last as usize - 1).await);

    let sequences: Vec<u64> = all.iter().map(|r| r.entry.sequence).collect();
    assert_eq!(
        sequences,
        (1..=last).collect::<Vec<_>>(),
        "every entry, once, in order"
    );
    let mut previous = [0_u8; 32].to_vec();
    for received in &all {
        assert_eq!(received.postings_withheld, 0);
        assert_eq!(
            received.hash_checks(),
            Some(true),
            "entry {}",
            received.entry.sequence
        );
        assert_eq!(received.entry.previous_hash, previous, "the chain links");
        previous = received.entry.hash.clone();
    }

    for ((merchant, subscription), first) in subscriptions.iter_mut().zip(firsts) {
        let expected: Vec<ReceivedEntry> = all
            .iter()
            .filter_map(|r| merchant_view(&r.entry, merchant))
            .collect();
        assert!(!expected.is_empty());
        let mut received = first;
        received.extend(take(subscription, expected.len() - 1).await);
        assert_eq!(received, expected, "what {merchant} receives");
        for r in &received {
            if r.postings_withheld == 0 {
                assert_eq!(r.hash_checks(), Some(true));
            }
        }
        // Nothing more for it arrives: the next entry would be one it must not see.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), subscription.next())
                .await
                .is_err(),
            "{merchant} received an entry beyond its own"
        );
    }
    // The return at tenant-2 of tenant-1's sale reached both, each without the other's
    // postings.
    let returned = all
        .iter()
        .find(|r| r.entry.merchant_transaction_id == "x-1")
        .unwrap();
    let for_seller = merchant_view(&returned.entry, "tenant-1").unwrap();
    assert!(
        for_seller
            .entry
            .postings
            .iter()
            .all(|p| p.owner_id != "tenant-2")
    );
}

async fn a_subscriber_resumes_across_a_kill_9_with_nothing_lost_or_repeated(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let binary = env!("CARGO_BIN_EXE_coalition-under-test");
    let environment = [("COALITION_LISTEN_ADDRESS", listen.as_str())];
    let (mut process, address) = spawn_server(binary, &database.url, &environment);
    let channel = connect(&address).await;
    let tenant = register_merchant(
        &channel,
        "tenant-1",
        pb::MerchantCategory::MallTenant,
        new_key(),
        &["m-1"],
    )
    .await;
    let tenant = client(&address, &tenant);
    let reader = {
        let mut subscription = tenant.subscribe(0);
        tokio::spawn(async move {
            let mut sequences = Vec::new();
            while sequences.len() < 60 {
                match tokio::time::timeout(Duration::from_secs(60), subscription.next()).await {
                    Ok(Ok(received)) => sequences.push(received.entry.sequence),
                    other => panic!("the subscription stopped: {other:?}"),
                }
            }
            sequences
        })
    };
    for i in 0..30 {
        tenant
            .submit(&Transaction::earn(format!("before-{i}"), "m-1", 10))
            .await
            .unwrap();
    }
    // Killed while the subscriber reads, then started again on the same address.
    process.0.kill().unwrap();
    process.0.wait().unwrap();
    let (_process, _) = spawn_server(binary, &database.url, &environment);
    for i in 0..30 {
        tenant
            .submit(&Transaction::earn(format!("after-{i}"), "m-1", 10))
            .await
            .unwrap();
    }
    let sequences = tokio::time::timeout(Duration::from_secs(90), reader)
        .await
        .expect("the reader finishes")
        .unwrap();
    assert_eq!(sequences, (1..=60).collect::<Vec<u64>>());
}

async fn a_subscriber_that_does_not_read_holds_up_nothing_and_misses_nothing(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let config = coalition::config::Config {
        subscriber_buffer_len: 2,
        ..test_config(&database.url)
    };
    let server = TestServer::start_on(database, config).await;
    let address = server.server.endpoint();
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    let tenant = client(&address, &tenant);
    // A subscriber on a connection with small HTTP/2 windows, so that what it leaves unread
    // stops the server's sending soon rather than after megabytes.
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut queries = pb::query_service_client::QueryServiceClient::with_interceptor(
        channel,
        coalition_grpc::client::AdminToken::new(ADMIN_TOKEN).unwrap(),
    );
    let mut stalled = queries
        .subscribe_entries(every_entry())
        .await
        .unwrap()
        .into_inner();
    // Left unread while 60 batches of 50 commit: megabytes of entries, far more than the
    // windows, its buffer and the live feed's 16 batches hold.
    let (rounds, per_round) = (60, 50);
    for round in 0..rounds {
        let batch: Vec<Transaction> = (0..per_round)
            .map(|i| Transaction::earn(format!("e-{round}-{i}"), ["m-1", "m-2"][i % 2], 1))
            .collect();
        let outcomes = tokio::time::timeout(Duration::from_secs(20), tenant.submit_batch(&batch))
            .await
            .expect("submissions go on while the subscriber does not read")
            .unwrap();
        assert!(outcomes.iter().all(|o| o.booked().is_some()));
    }
    let total = (rounds * per_round) as u64;
    let mut sequences = Vec::new();
    while (sequences.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(20), stalled.message())
            .await
            .expect("the entries arrive")
            .unwrap()
            .expect("the stream goes on");
        assert!(!message.entries.is_empty(), "a message is never empty");
        sequences.extend(
            message
                .entries
                .iter()
                .map(|e| e.entry.as_ref().unwrap().sequence),
        );
    }
    assert_eq!(sequences, (1..=total).collect::<Vec<u64>>());
}

on_both_backends!(
    each_subscriber_sees_exactly_what_concerns_it_in_order,
    a_subscriber_resumes_across_a_kill_9_with_nothing_lost_or_repeated,
    a_subscriber_that_does_not_read_holds_up_nothing_and_misses_nothing,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused_until_one_closes() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let config = coalition::config::Config {
        subscribers_max: 1,
        ..test_config(&database.url)
    };
    let server = TestServer::start_on(database, config).await;
    let mut queries = server.admin_queries();
    let first = queries.subscribe_entries(every_entry()).await.unwrap();
    let refused = queries.subscribe_entries(every_entry()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    drop(first);
    // The server notices the closed stream and frees its place.
    let mut opened = false;
    for _ in 0..50 {
        if queries.subscribe_entries(every_entry()).await.is_ok() {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "a place frees when a subscriber leaves");
}

/// A graceful shutdown does not wait for open subscriptions (they never end by themselves):
/// each ends at once with UNAVAILABLE naming where to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_open_subscriptions_at_once() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut queries = server.admin_queries();
    let mut stream = queries
        .subscribe_entries(every_entry())
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.server.shutdown())
        .await
        .expect("the shutdown does not wait for the subscription (its grace is 10 s)")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    let status = ended.expect_err("it ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("after_sequence"), "{status:?}");
}
