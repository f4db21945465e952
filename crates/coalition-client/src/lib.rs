//! A partner's client for Coalition, the clearing engine of a coalition loyalty programme.
//!
//! A merchant signs each transaction body with its ed25519 key and submits it over gRPC; this
//! crate builds the bodies, signs exactly the bytes it sends, retries what is safe to retry,
//! and gives every answer a type. It depends only on the generated wire types
//! (`coalition-wire`), tonic and ed25519-dalek.
//!
//! # Connecting
//!
//! ```no_run
//! use coalition_client::{Client, Signer};
//! # fn main() -> Result<(), coalition_client::Error> {
//! let seed = [7_u8; 32]; // the merchant's 32-byte ed25519 seed, kept secret
//! let signer = Signer::from_seed("cinema-1", "key-2026", &seed);
//! let client = Client::builder("http://127.0.0.1:50051", signer)
//!     .location("store-1", "pos-1") // for transactions that name no store and terminal
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # Submitting
//!
//! Each kind has a builder on [`Transaction`]; the id is the merchant's own transaction id,
//! the idempotency key. An answer is an [`Outcome`]: accepted, duplicate (booked before: the
//! original result), or rejected with a [`RejectionReason`] and a message. Only whole-call
//! failures are errors.
//!
//! ```no_run
//! # async fn run(client: coalition_client::Client) -> Result<(), coalition_client::Error> {
//! use coalition_client::{Outcome, RejectionReason, Transaction};
//! match client.submit(&Transaction::earn("sale-1001", "member-42", 120)).await? {
//!     Outcome::Accepted(booked) | Outcome::Duplicate(booked) => {
//!         println!("entry {}, balance {}", booked.entry_sequence, booked.member_points_balance)
//!     }
//!     Outcome::Rejected(refused) if refused.reason == RejectionReason::MemberUnknown => {
//!         println!("enrol the member first: {}", refused.message)
//!     }
//!     Outcome::Rejected(refused) => println!("{:?}: {}", refused.reason, refused.message),
//! }
//! // The other kinds:
//! client.submit(&Transaction::earn_by_spend("sale-1002", "member-42", 8_800)).await?;
//! client.submit(&Transaction::burn("redeem-1", "member-42", 50)).await?;
//! client.submit(&Transaction::hold("gate-in-7", "member-42", 30)).await?;
//! client.submit(&Transaction::capture("gate-out-7", "gate-in-7", "member-42", 20)).await?;
//! client.submit(&Transaction::hold("gate-in-8", "member-42", 30)).await?;
//! client.submit(&Transaction::void("gate-void-8", "gate-in-8", "member-42")).await?;
//! client.submit(&Transaction::reverse("refund-1", "sale-1001", "member-42", 20)).await?;
//! client
//!     .submit(&Transaction::reverse("refund-2", "their-sale-9", "member-42", 10).of_merchant("mall-store-3"))
//!     .await?;
//! client.submit(&Transaction::exchange_in("miles-in-1", "member-42", 1_000)).await?;
//! client.submit(&Transaction::exchange_out("miles-out-1", "member-42", 100)).await?;
//! # Ok(()) }
//! ```
//!
//! Many at once: [`Client::submit_batch`] sends calls of at most the server's batch limit and
//! returns one outcome per transaction, in order; a refused item never affects the others.
//!
//! ```no_run
//! # async fn run(client: coalition_client::Client) -> Result<(), coalition_client::Error> {
//! use coalition_client::Transaction;
//! let day: Vec<Transaction> = (0..25_000)
//!     .map(|i| Transaction::earn(format!("sale-{i}"), format!("member-{}", i % 500), 10))
//!     .collect();
//! let outcomes = client.submit_batch(&day).await?;
//! let refused = outcomes.iter().filter(|o| o.rejected().is_some()).count();
//! println!("{} booked, {refused} refused", outcomes.len() - refused);
//! # Ok(()) }
//! ```
//!
//! A gateway that keeps one connection open uses [`Client::stream`]: a bounded number in
//! flight, answers in any order, each `submit` resolving with its own answer.
//!
//! ```no_run
//! # async fn run(client: coalition_client::Client) -> Result<(), coalition_client::Error> {
//! use coalition_client::Transaction;
//! let submitter = client.stream(64);
//! let mut calls = tokio::task::JoinSet::new();
//! for i in 0..1_000 {
//!     let submitter = submitter.clone();
//!     calls.spawn(async move {
//!         submitter.submit(&Transaction::earn(format!("pos-{i}"), "member-42", 5)).await
//!     });
//! }
//! while let Some(outcome) = calls.join_next().await {
//!     println!("{:?}", outcome.expect("the task ran")?);
//! }
//! # Ok(()) }
//! ```
//!
//! # Queries
//!
//! Signed with the merchant's key; a merchant reads any member's balance, the history of
//! entries made at it, and its own transactions.
//!
//! ```no_run
//! # async fn run(client: coalition_client::Client) -> Result<(), coalition_client::Error> {
//! let balance = client.balance("member-42").await?;
//! let page = client.history("member-42", None, 50).await?;
//! let older = match page.next_before_sequence {
//!     Some(before) => Some(client.history("member-42", Some(before), 50).await?),
//!     None => None,
//! };
//! let entry = client.transaction("sale-1001").await?; // None if never booked
//! println!("{} points; {} entries; {:?}", balance.points, page.entries.len(), entry.map(|e| e.sequence));
//! # let _ = older;
//! # Ok(()) }
//! ```
//!
//! # Following committed entries
//!
//! [`Client::subscribe`] follows what was booked for the merchant, from the database first
//! and then live, in sequence order; keep [`EntrySubscription::last_sequence`] to resume
//! after your own restart. Each entry's hash can be recomputed ([`entry_hash`]), and each
//! `previous_hash` links to the hash of the entry before it in the journal.
//!
//! ```no_run
//! # async fn run(client: coalition_client::Client, saved: u64) -> Result<(), coalition_client::Error> {
//! let mut entries = client.subscribe(saved); // 0: from the first entry
//! loop {
//!     let received = entries.next().await?;
//!     assert_ne!(received.hash_checks(), Some(false), "an entry whose hash does not check");
//!     println!("#{} {:?} {} points", received.entry.sequence, received.entry.entry_kind(), received.entry.points);
//!     // persist entries.last_sequence() with what you did with the entry
//! }
//! # }
//! ```
//!
//! # What is retried, and why it is safe
//!
//! The server books a transaction once per merchant and transaction id, and answers the same
//! body sent again with its original result ([`Outcome::Duplicate`]). So the client signs a
//! transaction once and sends those very bytes on every attempt: a retry after an answer
//! that was lost can never book twice. It retries only failures that may pass
//! ([`retry::is_retryable`]): `UNAVAILABLE`, `DEADLINE_EXCEEDED` and failures of the
//! connection itself, with a doubling backoff ([`RetryPolicy`], by default eight attempts
//! over about five seconds). It never re-signs and never retries a status the server gave
//! for a reason of its own (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, …).
//!
//! The rule for your own retries is the same: resend the same [`Signed`] value
//! ([`Client::sign`], then [`Client::submit_signed`]), never a transaction built again,
//! because a new build carries a new time (a different body) and is refused as
//! `TRANSACTION_ID_CONFLICT`. When the retries run out ([`Error::RetriesExhausted`]), the
//! transaction may or may not be booked: keep the `Signed` value and send it again later, and
//! the answer tells which.
//!
//! Two refusals are answered differently when the same bytes are sent again after the
//! ledger changed: `POINTS_INSUFFICIENT` and `CREDIT_LIMIT_EXCEEDED`/
//! `PREPAID_BALANCE_INSUFFICIENT` depend on the balances at the time; a refusal books
//! nothing, so a resend that is accepted later is still booked once.

mod client;
mod entries;
mod outcome;
pub mod retry;
mod stream;
mod transaction;

pub use client::{BATCH_LEN_MAX_DEFAULT, Balance, Client, ClientBuilder, HistoryPage};
pub use coalition_wire::pb;
pub use entries::{
    EntrySubscription, ReceivedEntry, account_kind_code, entry_hash, entry_kind_code,
};
pub use outcome::{Accepted, Error, Outcome, Rejected, RejectionReason};
pub use retry::RetryPolicy;
pub use stream::StreamSubmitter;
pub use transaction::{
    Location, QUERY_DOMAIN, SUBMISSION_DOMAIN, Signed, Signer, Transaction, TransactionKind,
};
