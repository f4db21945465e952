//! Operating the real binary: the Prometheus endpoint counts submissions, rejections by
//! reason, batch sizes and commit latency; logs come out as JSON when asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use coalition_grpc::client::SubmissionServiceClient;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestDatabase, accepted, new_key, on_both_backends, register_merchant, rejection,
    spawn_server,
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
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
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

on_both_backends!(metrics_and_json_logs_report_what_happened);
