//! `coalition relay`: tails the journal in the database and publishes each committed entry to
//! NATS JetStream, once whole on `PREFIX.all` and once per merchant it concerns on
//! `PREFIX.merchant.MERCHANT` (the merchant's view, as `SubscribeEntries` gives it), each a
//! protobuf `SubscribedEntry`.
//!
//! Exactly once as a consumer sees it: every message carries a `Nats-Msg-Id` (the sequence
//! for `.all`, `SEQUENCE:MERCHANT` for a merchant's subject), and the relay records its
//! position in the database (`relay_positions`) only after JetStream acknowledged every
//! message up to it. After a crash, also `kill -9`, it publishes again from the entry after
//! its position; JetStream drops what it already stored by message id, as long as the
//! restart comes within the stream's duplicate window (`--duplicate-window-s`).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use coalition_engine::{Clock, SystemClock};
use coalition_storage::{ConnectOptions, Storage};
use prost::Message;

/// What `coalition relay` is told.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// The database whose journal is published.
    #[arg(
        long,
        env = "COALITION_DATABASE_URL",
        default_value = "sqlite://coalition.db"
    )]
    pub database_url: String,
    /// The NATS server.
    #[arg(
        long,
        env = "COALITION_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The JetStream stream, created if missing, capturing `SUBJECT_PREFIX.>`.
    #[arg(long, default_value = "COALITION_ENTRIES")]
    pub stream: String,
    /// The subjects' prefix.
    #[arg(long, default_value = "coalition.entries")]
    pub subject_prefix: String,
    /// The name the relay's position is kept under; one per relay publishing this journal.
    #[arg(long, default_value = "nats")]
    pub name: String,
    /// How long the stream remembers message ids to drop duplicates, in seconds: a relay
    /// restarted later than this after a crash may publish up to `--position-every` pages
    /// twice.
    #[arg(long, default_value_t = 600)]
    pub duplicate_window_s: u64,
    /// Entries read from the journal at a time.
    #[arg(long, default_value_t = 500)]
    pub page_len: u64,
    /// Pages published between two records of the position.
    #[arg(long, default_value_t = 1)]
    pub position_every: u64,
    /// How long to wait before looking again when the journal has nothing new, in ms.
    #[arg(long, default_value_t = 100)]
    pub poll_interval_ms: u64,
}

/// A merchant id as one subject token: `.`, `*`, `>` and `%` are written `%2E`, `%2A`,
/// `%3E` and `%25`, so that distinct ids stay distinct and no id spans two tokens.
pub fn subject_token(merchant_id: &str) -> String {
    let mut token = String::with_capacity(merchant_id.len());
    for character in merchant_id.chars() {
        match character {
            '%' => token.push_str("%25"),
            '.' => token.push_str("%2E"),
            '*' => token.push_str("%2A"),
            '>' => token.push_str("%3E"),
            other => token.push(other),
        }
    }
    token
}

/// Runs the relay until `shutdown` resolves or a publish fails for good (then it returns the
/// error, having recorded only what was acknowledged).
pub async fn run(args: &RelayArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let storage = Storage::connect(&ConnectOptions::existing(&args.database_url)).await?;
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
    let context = jetstream::new(client);
    context
        .get_or_create_stream(stream::Config {
            name: args.stream.clone(),
            subjects: vec![format!("{}.>", args.subject_prefix)],
            duplicate_window: Duration::from_secs(args.duplicate_window_s),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create or open the stream {}", args.stream))?;
    let mut position = storage.relay_position(&args.name).await?;
    tracing::info!(
        position,
        stream = %args.stream,
        nats = %args.nats_url,
        "relay publishing from the entry after its position"
    );
    tokio::pin!(shutdown);
    let mut pages_since_record = 0;
    let mut published_through = position;
    loop {
        let page = storage
            .entries_after(published_through, args.page_len.max(1) as i64)
            .await?;
        if page.is_empty() {
            if published_through > position {
                storage
                    .set_relay_position(&args.name, published_through, SystemClock.now_ms())
                    .await?;
                position = published_through;
                pages_since_record = 0;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(args.poll_interval_ms)) => continue,
                _ = &mut shutdown => return Ok(()),
            }
        }
        let mut acknowledgements = Vec::with_capacity(page.len() * 2);
        for entry in &page {
            let sequence = entry.sequence;
            acknowledgements.push(
                publish(
                    &context,
                    format!("{}.all", args.subject_prefix),
                    sequence.to_string(),
                    sequence,
                    coalition_grpc::whole_view(entry).encode_to_vec(),
                )
                .await?,
            );
            for merchant in coalition_grpc::merchants_concerned(entry, &storage).await? {
                acknowledgements.push(
                    publish(
                        &context,
                        format!(
                            "{}.merchant.{}",
                            args.subject_prefix,
                            subject_token(merchant.as_str())
                        ),
                        format!("{sequence}:{merchant}"),
                        sequence,
                        coalition_grpc::merchant_view(entry, &merchant).encode_to_vec(),
                    )
                    .await?,
                );
            }
        }
        for acknowledgement in acknowledgements {
            acknowledgement
                .await
                .context("JetStream did not acknowledge a message")?;
        }
        published_through = page.last().map_or(published_through, |e| e.sequence);
        metrics::gauge!("coalition_relay_position").set(published_through as f64);
        pages_since_record += 1;
        if pages_since_record >= args.position_every {
            storage
                .set_relay_position(&args.name, published_through, SystemClock.now_ms())
                .await?;
            position = published_through;
            pages_since_record = 0;
        }
    }
}

async fn publish(
    context: &jetstream::Context,
    subject: String,
    message_id: String,
    sequence: u64,
    payload: Vec<u8>,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", message_id.as_str());
    headers.insert("Coalition-Sequence", sequence.to_string().as_str());
    context
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .with_context(|| format!("cannot publish entry {sequence} to {subject}"))
}

#[cfg(test)]
mod tests {
    use super::subject_token;

    #[test]
    fn merchant_ids_become_one_token_each_and_stay_distinct() {
        assert_eq!(subject_token("cinema-1"), "cinema-1");
        assert_eq!(subject_token("mall.store_3"), "mall%2Estore_3");
        assert_eq!(subject_token("a%2Eb"), "a%252Eb");
        assert_ne!(subject_token("a.b"), subject_token("a%2Eb"));
        assert!(!subject_token("x.*>y").contains(['.', '*', '>']));
    }
}
