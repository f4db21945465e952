//! `SubscribeEntries`: committed entries for a merchant (or, with the admin token, all of
//! them), first from the database after the sequence the subscriber names, then from the
//! writer's live feed, in sequence order, each once.
//!
//! Each subscription is one task with a bounded buffer of messages to its client: a message
//! per committed batch (or database page), with the entries of it that concern the
//! subscriber. The writer publishes every committed batch on a broadcast channel that never
//! waits (`Engine::committed_entries`); a subscription that reads slowly blocks only on its
//! own buffer, falls behind the feed, is told so by the channel, and reads what it missed
//! from the database before it rejoins the feed. The cursor is the last sequence examined
//! (delivered or not concerning the subscriber), so a catch-up neither repeats nor skips.

use std::sync::Arc;

use coalition_domain::{Entry, EntryKind, MerchantId};
use coalition_engine::Engine;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert;
use crate::pb;

/// Entries read from the database per page while catching up.
const CATCH_UP_PAGE_LEN: u64 = 500;

/// The server's subscriptions: a bound on how many are open, their buffer length, and the
/// signal that the server is stopping.
#[derive(Clone)]
pub struct Subscriptions {
    pub open: Arc<Semaphore>,
    pub buffer_len: usize,
    pub stopping: watch::Receiver<bool>,
}

pub type EntryStream = ReceiverStream<Result<pb::SubscribeEntriesResponse, Status>>;

/// Why a subscription ended early, or that its client went away.
enum End {
    ClientGone,
    Failed(Status),
}

impl From<Status> for End {
    fn from(status: Status) -> Self {
        End::Failed(status)
    }
}

impl Subscriptions {
    /// Opens a subscription for `merchant` (None: every entry, whole) after `after`.
    pub fn open(
        &self,
        engine: Engine,
        merchant: Option<MerchantId>,
        after: u64,
    ) -> Result<EntryStream, Status> {
        let permit = self.open.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "the server has subscribers_max entry subscriptions open; retry later",
            )
        })?;
        let (sender, receiver) = mpsc::channel(self.buffer_len.max(1));
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let feed = Feed {
                engine,
                merchant,
                cursor: after,
                sender,
                stopping,
                _permit: permit,
            };
            feed.run().await;
        });
        Ok(ReceiverStream::new(receiver))
    }
}

struct Feed {
    engine: Engine,
    merchant: Option<MerchantId>,
    /// The last sequence examined.
    cursor: u64,
    sender: mpsc::Sender<Result<pb::SubscribeEntriesResponse, Status>>,
    stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    async fn run(mut self) {
        match self.feed().await {
            End::ClientGone => {}
            End::Failed(status) => {
                let _ = self.sender.send(Err(status)).await;
            }
        }
    }

    fn stopped(&self) -> Status {
        Status::unavailable(format!(
            "the server is stopping; subscribe again with after_sequence {} (the last entry \
             examined) to resume",
            self.cursor
        ))
    }

    async fn feed(&mut self) -> End {
        // Joined before the database is read: every batch committed from here on is in the
        // feed, and every one before is in the database.
        let mut live = self.engine.committed_entries();
        loop {
            if let Err(end) = self.catch_up().await {
                return end;
            }
            loop {
                if *self.stopping.borrow() {
                    return End::Failed(self.stopped());
                }
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = self.stopping.changed() => return End::Failed(self.stopped()),
                    _ = self.sender.closed() => return End::ClientGone,
                };
                match received {
                    Ok(batch) => {
                        let (Some(first), Some(last)) =
                            (batch.entries.first(), batch.entries.last())
                        else {
                            continue;
                        };
                        if last.sequence <= self.cursor {
                            continue;
                        }
                        if first.sequence > self.cursor + 1 {
                            // Batches went by unread: they are in the database.
                            break;
                        }
                        if let Err(end) = self.deliver(&batch.entries).await {
                            return end;
                        }
                    }
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return End::Failed(self.stopped()),
                }
            }
        }
    }

    /// Delivers from the database everything up to its last committed entry.
    async fn catch_up(&mut self) -> Result<(), End> {
        let engine = self.engine.clone();
        let storage = engine.storage();
        let head = storage.last_sequence().await.map_err(unavailable)?;
        while self.cursor < head {
            let page = storage
                .entries_after(
                    self.cursor,
                    (head - self.cursor).min(CATCH_UP_PAGE_LEN) as i64,
                )
                .await
                .map_err(unavailable)?;
            if page.is_empty() {
                return Err(End::Failed(Status::internal(format!(
                    "the journal has no entries after {} though it ends at {head}",
                    self.cursor
                ))));
            }
            self.deliver(&page).await?;
        }
        Ok(())
    }

    /// Sends, as one message, the entries after the cursor that concern the subscriber,
    /// waiting for room in the buffer (or for the server to stop), and moves the cursor past
    /// the last of them.
    async fn deliver(&mut self, entries: &[Entry]) -> Result<(), End> {
        let mut views = Vec::new();
        let mut last = self.cursor;
        for entry in entries.iter().filter(|entry| entry.sequence > self.cursor) {
            debug_assert!(entry.sequence > last, "entries come in sequence order");
            last = entry.sequence;
            if let Some(view) = self.view(entry).await? {
                views.push(view);
            }
        }
        if !views.is_empty() {
            let message = pb::SubscribeEntriesResponse { entries: views };
            tokio::select! {
                sent = self.sender.send(Ok(message)) => sent.map_err(|_| End::ClientGone)?,
                _ = self.stopping.changed() => return Err(End::Failed(self.stopped())),
            }
        }
        self.cursor = last;
        Ok(())
    }

    /// What the subscriber sees of an entry: all of it for the admin token; for a merchant
    /// the entry does not concern, nothing.
    async fn view(&self, entry: &Entry) -> Result<Option<pb::SubscribedEntry>, End> {
        let Some(merchant) = &self.merchant else {
            return Ok(Some(whole_view(entry)));
        };
        let concerned = merchants_concerned(entry, self.engine.storage())
            .await
            .map_err(unavailable)?;
        Ok(concerned
            .contains(merchant)
            .then(|| merchant_view(entry, merchant)))
    }
}

/// The merchants an entry concerns, without repeats: the one that submitted it, those whose
/// accounts it posts to, and for a hold released by its timeout, the merchant that held it.
pub async fn merchants_concerned(
    entry: &Entry,
    storage: &coalition_storage::Storage,
) -> Result<Vec<MerchantId>, coalition_storage::StorageError> {
    let mut merchants: Vec<MerchantId> = Vec::new();
    let mut add = |merchant: &MerchantId| {
        if !merchants.contains(merchant) {
            merchants.push(merchant.clone());
        }
    };
    if let Some(merchant) = entry.merchant_id() {
        add(merchant);
    }
    for posting in &entry.postings {
        if let Some(merchant) = posting.account.merchant() {
            add(merchant);
        }
    }
    if entry.kind == EntryKind::HoldExpiry
        && let Some(hold) = entry.refers_to
        && let Some(holder) = storage.entry_merchant(hold).await?
    {
        add(&holder);
    }
    Ok(merchants)
}

/// An entry as the admin token sees it: whole.
pub fn whole_view(entry: &Entry) -> pb::SubscribedEntry {
    pb::SubscribedEntry {
        entry: Some(convert::journal_entry(entry)),
        postings_withheld: 0,
    }
}

/// An entry as `merchant` sees it: without the postings of other merchants' accounts, and
/// how many were left out.
pub fn merchant_view(entry: &Entry, merchant: &MerchantId) -> pb::SubscribedEntry {
    let mut wire = convert::journal_entry(entry);
    let on_wire = std::mem::take(&mut wire.postings);
    let mut withheld = 0;
    wire.postings = entry
        .postings
        .iter()
        .zip(on_wire)
        .filter_map(|(posting, on_wire)| {
            if posting
                .account
                .merchant()
                .is_some_and(|owner| owner != merchant)
            {
                withheld += 1;
                None
            } else {
                Some(on_wire)
            }
        })
        .collect();
    pb::SubscribedEntry {
        entry: Some(wire),
        postings_withheld: withheld,
    }
}

fn unavailable(error: coalition_storage::StorageError) -> End {
    tracing::error!(%error, "an entry subscription could not read the journal");
    End::Failed(Status::unavailable(format!(
        "the database did not answer: {error}"
    )))
}
