//! Earn, resend, burn and read back, as a point-of-sale integration would:
//!
//! ```sh
//! cargo run -p coalition-client --example earn_and_burn -- \
//!     http://127.0.0.1:50051 tenant-001 key-1 tenant.key member-000042
//! ```

mod common;

use coalition_client::{Outcome, Transaction};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (client, member) = common::client_from_args()?;
    let run = std::process::id();

    // Sign once; a resend of the same bytes is answered with the original result.
    let earn = client.sign(&Transaction::earn(
        format!("example-{run}-earn"),
        &member,
        120,
    ));
    let first = client.submit_signed(&earn).await?;
    let again = client.submit_signed(&earn).await?;
    println!("earn:   {first:?}");
    println!("resend: {again:?}");
    if let (Outcome::Accepted(booked), Outcome::Duplicate(original)) = (&first, &again) {
        assert_eq!(booked, original, "a resend gets the original result");
    }

    let burn = client
        .submit(&Transaction::burn(
            format!("example-{run}-burn"),
            &member,
            20,
        ))
        .await?;
    println!("burn:   {burn:?}");

    let balance = client.balance(&member).await?;
    println!(
        "balance: {} points as of entry {}",
        balance.points, balance.as_of_entry_sequence
    );
    let page = client.history(&member, None, 10).await?;
    for entry in &page.entries {
        println!(
            "history: #{} {} {} points",
            entry.sequence, entry.merchant_transaction_id, entry.points
        );
    }
    let entry = client
        .transaction(earn.merchant_transaction_id.as_str())
        .await?;
    println!("transaction: {:?}", entry.map(|e| e.sequence));
    Ok(())
}
