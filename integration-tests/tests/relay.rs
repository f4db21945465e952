//! `coalition relay` against the NATS JetStream server on this machine (127.0.0.1:4222, or
//! `COALITION_TEST_NATS_URL`): every entry exactly once on `.all` and on the subject of each
//! merchant it concerns, as a JetStream consumer sees it, across a `kill -9` of the relay and
//! a restart from a position behind what it had published. Fails, never skips, when NATS
//! cannot be reached (`.ci/run` starts it).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use coalition_client::{Client, RetryPolicy, Signer, Transaction, entry_hash};
use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use coalition_integration_tests::{Backend, ServerProcess, TestServer, on_both_backends};
use prost::Message;

fn nats_url() -> String {
    std::env::var("COALITION_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn client(address: &str, signer: &MerchantSigner) -> Client {
    Client::builder(
        address,
        Signer::new(&signer.merchant_id, &signer.key_id, signer.key.clone()),
    )
    .location("store-1", "pos-1")
    .retry(RetryPolicy::default())
    .build()
    .unwrap()
}

/// The relay as a process of its own, killed when dropped (also when the test fails).
fn start_relay(database_url: &str, stream: &str, prefix: &str) -> ServerProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_coalition-under-test"))
        .args([
            "relay",
            "--stream",
            stream,
            "--subject-prefix",
            prefix,
            "--page-len",
            "10",
            "--position-every",
            "3",
            "--poll-interval-ms",
            "20",
        ])
        .env("COALITION_DATABASE_URL", database_url)
        .env("COALITION_NATS_URL", nats_url())
        .env("COALITION_LOG_FILTER", "warn")
        .env_remove("RUST_LOG")
        .spawn()
        .expect("start the relay");
    ServerProcess(child)
}

/// Every message on `subject` in the stream so far: (sequence from the header, payload);
/// none before the relay created the stream.
async fn read_subject(
    context: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<(u64, pb::SubscribedEntry)> {
    let Ok(stream) = context.get_stream(stream).await else {
        return Vec::new();
    };
    let reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = Vec::new();
    loop {
        let mut batch = reader
            .batch()
            .max_messages(500)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        let before = messages.len();
        while let Some(message) = futures_next(&mut batch).await {
            let message = message.unwrap();
            let sequence: u64 = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Coalition-Sequence"))
                .expect("the sequence header")
                .as_str()
                .parse()
                .unwrap();
            let decoded = pb::SubscribedEntry::decode(message.payload.as_ref()).unwrap();
            messages.push((sequence, decoded));
        }
        if messages.len() == before {
            return messages;
        }
    }
}

async fn futures_next<S: tokio_stream::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    use tokio_stream::StreamExt;
    stream.next().await
}

/// Waits until `subject` holds `count` messages.
async fn wait_for(context: &jetstream::Context, stream: &str, subject: &str, count: usize) {
    for _ in 0..300 {
        let seen = read_subject(context, stream, subject).await.len();
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{subject} never reached {count} messages");
}

async fn the_relay_publishes_every_entry_once_across_a_kill_9(backend: Backend) {
    let nats = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "NATS is not reachable at {} ({error}); .ci/run starts it",
                nats_url()
            )
        });
    let context = jetstream::new(nats);
    let unique = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let stream = format!("TEST_ENTRIES_{unique}");
    let prefix = format!("test{unique}.entries");

    let server = TestServer::start(backend).await;
    let address = server.server.endpoint();
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    let (tenant, cinema) = (client(&address, &tenant), client(&address, &cinema));
    let book = |round: usize| {
        let (tenant, cinema) = (tenant.clone(), cinema.clone());
        async move {
            let earns: Vec<Transaction> = (0..50)
                .map(|i| Transaction::earn(format!("e-{round}-{i}"), ["m-1", "m-2"][i % 2], 10))
                .collect();
            let burns: Vec<Transaction> = (0..50)
                .map(|i| Transaction::burn(format!("b-{round}-{i}"), ["m-1", "m-2"][i % 2], 3))
                .collect();
            for outcome in tenant.submit_batch(&earns).await.unwrap() {
                assert!(outcome.booked().is_some(), "{outcome:?}");
            }
            for outcome in cinema.submit_batch(&burns).await.unwrap() {
                assert!(outcome.booked().is_some(), "{outcome:?}");
            }
        }
    };
    book(1).await;
    book(2).await;

    let all = format!("{prefix}.all");
    let mut relay = start_relay(&server.database.url, &stream, &prefix);
    wait_for(&context, &stream, &all, 60).await;
    relay.0.kill().unwrap();
    relay.0.wait().unwrap();

    // Rewind the recorded position behind what the stream holds, as a crash between a
    // publish and its record leaves it: the restarted relay publishes those entries again,
    // and the stream must drop them.
    let storage = server.server.engine.storage().clone();
    let published = read_subject(&context, &stream, &all).await.len() as u64;
    let position = storage.relay_position("nats").await.unwrap();
    assert!(
        position <= published,
        "a position is recorded after its acknowledgements"
    );
    storage
        .set_relay_position("nats", position.min(published / 2), 0)
        .await
        .unwrap();

    let relay = start_relay(&server.database.url, &stream, &prefix);
    book(3).await;
    wait_for(&context, &stream, &all, 300).await;
    // Nothing more comes: each entry is there once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let everything = read_subject(&context, &stream, &all).await;
    drop(relay);
    let sequences: Vec<u64> = everything.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(sequences, (1..=300).collect::<Vec<u64>>());
    let mut previous = vec![0_u8; 32];
    for (sequence, message) in &everything {
        let entry = message.entry.as_ref().unwrap();
        assert_eq!(entry.sequence, *sequence);
        assert_eq!(entry_hash(entry).to_vec(), entry.hash, "entry {sequence}");
        assert_eq!(entry.previous_hash, previous);
        previous = entry.hash.clone();
    }

    // Each merchant's subject: the entries that concern it, once each, in order.
    let mut expected: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (sequence, message) in &everything {
        let entry = message.entry.as_ref().unwrap();
        for merchant in ["tenant-1", "cinema-1"] {
            let posts = entry.postings.iter().any(|p| {
                p.owner_id == merchant
                    && !matches!(
                        p.account_kind(),
                        pb::AccountKind::MemberWallet | pb::AccountKind::MemberHeld
                    )
            });
            if entry.merchant_id == merchant || posts {
                expected.entry(merchant).or_default().push(*sequence);
            }
        }
    }
    for (merchant, sequences) in expected {
        let received =
            read_subject(&context, &stream, &format!("{prefix}.merchant.{merchant}")).await;
        let received: Vec<u64> = received.iter().map(|(sequence, _)| *sequence).collect();
        assert_eq!(received, sequences, "{merchant}");
    }
    context.delete_stream(&stream).await.unwrap();
}

on_both_backends!(the_relay_publishes_every_entry_once_across_a_kill_9);
