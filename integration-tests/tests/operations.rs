//! Operating the real binary: the Prometheus endpoint counts submissions, rejections by
//! reason, batch sizes and commit latency; logs come out as JSON when asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use coalition_grpc::client::SubmissionServiceClient;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestDatabase, accepted, connect, new_key, on_both_backends, register_merchant,
    rejection, spawn_server,
};
use tonic::transport::Channel;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the metrics endpoint answers");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

async fn metrics_and_json_logs_report_what_happened(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let port = free_port();
    let metrics_address = format!("127.0.0.1:{port}");
    let (mut child, endpoint) = spawn_server(
        SERVER,
        &database.url,
        &[
            ("COALITION_METRICS_ADDRESS", &metrics_address),
            ("COALITION_LOG_FORMAT", "json"),
            ("COALITION_LOG_FILTER", "info"),
        ],
    );
    let channel = connect(&endpoint).await;
    let signer = register_merchant(
        &channel,
        "tenant-1",
        pb::MerchantCategory::MallTenant,
        new_key(),
        &["m-1"],
    )
    .await;
    let body = pb::TransactionBody {
        merchant_id: "tenant-1".into(),
        merchant_transaction_id: "e-1".into(),
        kind: pb::TransactionKind::Earn as i32,
        member_id: "m-1".into(),
        points: 10,
        spend_minor: None,
        occurred_at_unix_ms: coalition_engine::Clock::now_ms(&coalition_engine::SystemClock),
        store_id: "s".into(),
        terminal_id: "t".into(),
        ..Default::default()
    };
    let good = signer.envelope(&body);
    let mut bad = good.clone();
    bad.signature[0] ^= 1;
    let results = SubmissionServiceClient::new(channel)
        .submit_batch(pb::SubmitBatchRequest {
            envelopes: vec![good.clone(), bad, good],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    accepted(&results[0]);
    assert_eq!(
        rejection(&results[1]),
        pb::RejectionReason::SignatureInvalid
    );
    assert!(accepted(&results[2]).duplicate);

    let metrics = scrape(port);
    for expected in [
        "coalition_submissions_total{outcome=\"accepted\"} 1",
        "coalition_submissions_total{outcome=\"duplicate\"} 1",
        "coalition_rejections_total{reason=\"signature_invalid\"} 1",
        "coalition_commit_seconds_count",
        "coalition_batch_submissions_count",
        "coalition_batch_entries_sum",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }

    child.kill().unwrap();
    child.wait().unwrap();
    let mut logs = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut logs)
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&logs).unwrap_or_else(|error| panic!("not JSON: {logs:?}: {error}"));
    assert!(
        first.get("level").is_some() && first.get("fields").is_some(),
        "{first}"
    );
}

/// The real server binary.
const SERVER: &str = env!("CARGO_BIN_EXE_coalition-under-test");

/// With `connections_max` = 1 a second connection waits until the first closes.
async fn connections_beyond_the_limit_wait_their_turn(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let config = coalition::config::Config {
        connections_max: 1,
        ..coalition_integration_tests::test_config(&database.url)
    };
    let server = coalition_integration_tests::TestServer::start_on(database, config).await;
    let health = |channel: Channel| async move {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    // The test server's own channel holds the one permitted connection.
    assert!(health(server.channel.clone()).await.is_ok());
    let endpoint = server.server.endpoint();
    let second = Channel::from_shared(endpoint.clone())
        .unwrap()
        .timeout(std::time::Duration::from_millis(300))
        .connect_lazy();
    assert!(
        health(second).await.is_err(),
        "a second connection is not served while the first is open"
    );
    let coalition_integration_tests::TestServer {
        server: running,
        channel,
        ..
    } = server;
    drop(channel);
    let third = connect(&endpoint).await;
    let started = std::time::Instant::now();
    loop {
        if health(third.clone()).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the freed connection slot was not reused"
        );
    }
    running.shutdown().await.unwrap();
}

/// A gateway's stream that never ends does not hold a graceful shutdown beyond its grace
/// period, and what it submitted before is committed.
async fn shutdown_does_not_wait_forever_for_an_open_stream(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let url = database.url.clone();
    let config = coalition::config::Config {
        shutdown_grace_ms: 300,
        ..coalition_integration_tests::test_config(&database.url)
    };
    let server = coalition_integration_tests::TestServer::start_on(database, config).await;
    let signer = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut responses = server
        .submissions()
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let body = server.body(&signer, pb::TransactionKind::Earn, "e-1", "m-1", 7);
    sender
        .send(pb::SubmitStreamRequest {
            client_reference: "1".into(),
            envelope: Some(signer.envelope(&body)),
        })
        .await
        .unwrap();
    let response = responses.message().await.unwrap().unwrap();
    accepted(&response.result.unwrap());
    let coalition_integration_tests::TestServer {
        server: running,
        database,
        ..
    } = server;
    let started = std::time::Instant::now();
    running.shutdown().await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(sender);
    let report = coalition_integration_tests::check_database(&url).await;
    assert_eq!(report.entries, 1);
    drop(database);
}

/// On SQLite the writer's commits leave the WAL to a passive checkpoint on a pool connection,
/// started after each commit, instead of SQLite's automatic checkpoint inside the commit
/// (which the writer's connection runs only past 16,384 pages, as a backstop). So after
/// thirty batches the data is in the database file and the WAL, restarted after each
/// checkpoint, holds little more than the last batches: without the checkpointer all of it
/// would still be in the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_the_wal_into_the_database_beside_the_writer() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let path = database.url.strip_prefix("sqlite://").unwrap().to_owned();
    let config = coalition_integration_tests::test_config(&database.url);
    let server = coalition_integration_tests::TestServer::start_on(database, config).await;
    let members: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
    let member_ids: Vec<&str> = members.iter().map(String::as_str).collect();
    let signer = register_merchant(
        &server.channel,
        "tenant-1",
        pb::MerchantCategory::MallTenant,
        new_key(),
        &member_ids,
    )
    .await;
    let now = coalition_engine::Clock::now_ms(&server.clock);
    for batch in 0..30 {
        let envelopes = (0..100)
            .map(|i| {
                signer.envelope(&pb::TransactionBody {
                    merchant_id: "tenant-1".into(),
                    merchant_transaction_id: format!("e-{batch}-{i}"),
                    kind: pb::TransactionKind::Earn as i32,
                    member_id: members[i].clone(),
                    points: 10,
                    occurred_at_unix_ms: now,
                    store_id: "s".into(),
                    terminal_id: "t".into(),
                    ..Default::default()
                })
            })
            .collect();
        for result in &server.submit_batch(envelopes).await {
            accepted(result);
        }
    }
    let wal = std::fs::metadata(format!("{path}-wal")).unwrap().len();
    let file = std::fs::metadata(&path).unwrap().len();
    // Without the checkpointer nothing reaches the file (4 KB) and the WAL holds all of it
    // (10.9 MB). With it the file holds the data (about 2 MB) and the WAL no more than the
    // batches since a checkpoint last caught up (about 1 MB): how many depends on timing, so
    // the bounds are loose.
    assert!(
        file > 1_000_000 && wal < 4_000_000,
        "the WAL ({wal} bytes) was not copied into the database file ({file} bytes)"
    );
    server.server.shutdown().await.unwrap();
}

on_both_backends!(
    metrics_and_json_logs_report_what_happened,
    connections_beyond_the_limit_wait_their_turn,
    shutdown_does_not_wait_forever_for_an_open_stream,
);
