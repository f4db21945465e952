//! The streaming submitter: one long-lived `SubmitStream`, a bounded number of transactions in
//! flight, and every unanswered transaction resent (the same bytes) on a new stream when the
//! old one fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use coalition_wire::pb;
use coalition_wire::pb::submission_service_client::SubmissionServiceClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::transport::Channel;

use crate::outcome::{Error, Outcome};
use crate::retry::{RetryPolicy, is_retryable};
use crate::transaction::{Location, Signed, Signer, Transaction};

type Reply = oneshot::Sender<Result<Outcome, Error>>;

struct Pending {
    signed: Signed,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// Submits over one `SubmitStream` with at most `in_flight_max` transactions awaiting their
/// answers; [`StreamSubmitter::submit`] waits for room, sends, and resolves with the answer.
/// Answers may come in any order. When the stream fails with a retryable failure, a new one
/// is opened (with the client's backoff) and every unanswered transaction is sent on it
/// again, the same bytes, so none is booked twice; when the policy's attempts run out, the
/// unanswered ones fail with [`Error::RetriesExhausted`] and the next submissions start
/// afresh. Dropping the submitter (and every clone) ends the stream once the answers are in.
#[derive(Debug, Clone)]
pub struct StreamSubmitter {
    requests: mpsc::UnboundedSender<Pending>,
    room: Arc<Semaphore>,
    signer: Signer,
    location: Location,
}

impl StreamSubmitter {
    pub(crate) fn start(
        submissions: SubmissionServiceClient<Channel>,
        signer: Signer,
        location: Location,
        retry: RetryPolicy,
        in_flight_max: usize,
    ) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(submissions, receiver, retry));
        Self {
            requests,
            room: Arc::new(Semaphore::new(in_flight_max.max(1))),
            signer,
            location,
        }
    }

    /// Signs and submits one transaction; resolves when it is answered.
    pub async fn submit(&self, transaction: &Transaction) -> Result<Outcome, Error> {
        self.submit_signed(self.signer.sign(transaction, &self.location))
            .await
    }

    /// Submits a signed transaction (again); resolves when it is answered.
    pub async fn submit_signed(&self, signed: Signed) -> Result<Outcome, Error> {
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Pending {
                signed,
                reply,
                _permit: permit,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// The stream's task: sends what comes in, matches answers to references, and reopens the
/// stream after a retryable failure, resending whatever is unanswered.
async fn run(
    submissions: SubmissionServiceClient<Channel>,
    mut incoming: mpsc::UnboundedReceiver<Pending>,
    retry: RetryPolicy,
) {
    let mut next_reference: u64 = 0;
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut failures = 0_u32;
    let mut failing_since = std::time::Instant::now();
    let mut closed = false;
    loop {
        if closed && pending.is_empty() {
            return;
        }
        if pending.is_empty() {
            // Nothing to send: wait for the first transaction before opening a stream.
            match incoming.recv().await {
                Some(item) => {
                    pending.insert(next_reference, item);
                    next_reference += 1;
                }
                None => return,
            }
        }
        let (sender, receiver) = mpsc::unbounded_channel::<pb::SubmitStreamRequest>();
        for (reference, item) in &pending {
            let _ = sender.send(request(*reference, &item.signed));
        }
        let mut client = submissions.clone();
        let failure = match client
            .submit_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(
                receiver,
            ))
            .await
        {
            Err(status) => status,
            Ok(response) => {
                let mut answers = response.into_inner();
                let mut sender = Some(sender);
                loop {
                    tokio::select! {
                        item = incoming.recv(), if sender.is_some() => match item {
                            Some(item) => {
                                if let Some(sender) = &sender {
                                    let _ = sender.send(request(next_reference, &item.signed));
                                }
                                pending.insert(next_reference, item);
                                next_reference += 1;
                            }
                            // Every submitter is gone: half-close, then read the answers.
                            None => {
                                closed = true;
                                sender = None;
                            }
                        },
                        answer = answers.message() => match answer {
                            Ok(Some(answer)) => {
                                failures = 0;
                                deliver(&mut pending, answer);
                                if closed && pending.is_empty() {
                                    return;
                                }
                            }
                            Ok(None) => break tonic::Status::unavailable(
                                "the server ended the stream with answers outstanding",
                            ),
                            Err(status) => break status,
                        },
                    }
                }
            }
        };
        if pending.is_empty() {
            continue;
        }
        if failures == 0 {
            failing_since = std::time::Instant::now();
        }
        failures += 1;
        if !is_retryable(&failure) || failures >= retry.attempts_max {
            let attempts = failures;
            failures = 0;
            for (_, item) in std::mem::take(&mut pending) {
                let error = if is_retryable(&failure) {
                    Error::RetriesExhausted {
                        attempts,
                        elapsed: failing_since.elapsed(),
                        last: failure.clone(),
                    }
                } else {
                    Error::Refused(failure.clone())
                };
                let _ = item.reply.send(Err(error));
            }
            continue;
        }
        tokio::time::sleep(retry.backoff(failures)).await;
    }
}

fn request(reference: u64, signed: &Signed) -> pb::SubmitStreamRequest {
    pb::SubmitStreamRequest {
        client_reference: reference.to_string(),
        envelope: Some(signed.envelope.clone()),
    }
}

fn deliver(pending: &mut BTreeMap<u64, Pending>, answer: pb::SubmitStreamResponse) {
    let Ok(reference) = answer.client_reference.parse::<u64>() else {
        return;
    };
    let Some(item) = pending.remove(&reference) else {
        // An answer to a request of an earlier stream that was answered there too.
        return;
    };
    let outcome = match answer.result {
        Some(result) => Outcome::from_wire(result),
        None => Err(Error::Protocol(format!(
            "the answer to reference {reference} carries no result"
        ))),
    };
    let _ = item.reply.send(outcome);
}
