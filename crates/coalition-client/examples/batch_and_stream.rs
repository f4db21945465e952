//! A gateway's integration: a batch with a bad item in it, then a stream with 32 in flight.
//!
//! ```sh
//! cargo run -p coalition-client --example batch_and_stream -- \
//!     http://127.0.0.1:50051 tenant-001 key-1 tenant.key member-000042
//! ```

mod common;

use coalition_client::{Outcome, Transaction};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (client, member) = common::client_from_args()?;
    let run = std::process::id();

    let mut batch: Vec<Transaction> = (0..10)
        .map(|i| Transaction::earn(format!("example-{run}-batch-{i}"), &member, 10))
        .collect();
    // Refused (no points), while the other ten are booked.
    batch.push(Transaction::earn(
        format!("example-{run}-batch-bad"),
        &member,
        0,
    ));
    for outcome in client.submit_batch(&batch).await? {
        match outcome {
            Outcome::Accepted(booked) | Outcome::Duplicate(booked) => {
                println!(
                    "booked  {} as #{}",
                    booked.merchant_transaction_id, booked.entry_sequence
                )
            }
            Outcome::Rejected(refused) => println!(
                "refused {}: {:?} ({})",
                refused.merchant_transaction_id, refused.reason, refused.message
            ),
        }
    }

    let submitter = client.stream(32);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let submitter = submitter.clone();
        let transaction = Transaction::earn(format!("example-{run}-stream-{i}"), &member, 1);
        calls.spawn(async move { submitter.submit(&transaction).await });
    }
    let mut booked = 0;
    while let Some(outcome) = calls.join_next().await {
        if outcome??.booked().is_some() {
            booked += 1;
        }
    }
    println!("stream: {booked} of 100 booked");
    Ok(())
}
