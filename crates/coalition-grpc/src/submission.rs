//! The submission service: authenticate and check each envelope off the writer, in parallel,
//! then hand the checked submissions to the writer in one command per call.

use std::pin::Pin;
use std::sync::Arc;

use coalition_domain::signing::SUBMISSION_DOMAIN;
use coalition_domain::{Rejection, RejectionReason, Submission};
use coalition_engine::{Engine, SubmitOutcome};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::pb;
use crate::pb::submission_service_server::SubmissionService;
use crate::server::ServerConfig;

/// Below this many envelopes a batch is checked on the calling task; above, it is split
/// across the blocking pool so signature checks use every core.
const PARALLEL_CHECK_THRESHOLD: usize = 32;

pub struct Submissions {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
}

/// A checked envelope, or why it was refused, with the transaction id when it could be read.
type Checked = Result<Submission, (String, Rejection)>;

/// Everything done before the writer: signature first, then the body.
fn check_envelope(engine: &Engine, envelope: pb::Envelope) -> Checked {
    let envelope = convert::envelope(envelope);
    engine
        .authenticate(&envelope, SUBMISSION_DOMAIN)
        .map_err(|rejection| (String::new(), rejection))?;
    let body = pb::TransactionBody::decode(envelope.body.as_slice()).map_err(|error| {
        (
            String::new(),
            Rejection::new(
                RejectionReason::BodyMalformed,
                format!("the body is not a coalition.v1.TransactionBody: {error}"),
            ),
        )
    })?;
    let transaction_id = body.merchant_transaction_id.clone();
    engine
        .check_submission(convert::raw_submission(body), envelope)
        .map_err(|rejection| (transaction_id, rejection))
}

async fn check_all(engine: &Engine, envelopes: Vec<pb::Envelope>) -> Result<Vec<Checked>, Status> {
    if envelopes.len() < PARALLEL_CHECK_THRESHOLD {
        return Ok(envelopes
            .into_iter()
            .map(|e| check_envelope(engine, e))
            .collect());
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk_len = envelopes.len().div_ceil(workers);
    let mut chunks = Vec::with_capacity(workers);
    let mut envelopes = envelopes.into_iter();
    loop {
        let chunk: Vec<pb::Envelope> = envelopes.by_ref().take(chunk_len).collect();
        if chunk.is_empty() {
            break;
        }
        let engine = engine.clone();
        chunks.push(tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|e| check_envelope(&engine, e))
                .collect::<Vec<_>>()
        }));
    }
    let mut checked = Vec::new();
    for chunk in chunks {
        checked.extend(
            chunk
                .await
                .map_err(|error| Status::internal(format!("checker failed: {error}")))?,
        );
    }
    Ok(checked)
}

/// Every check `Submit` makes before the writer (signature, registry, body, limits), in
/// parallel on the blocking pool, without the network: what a tool that drives the engine
/// directly (the journal generator) hands to `Engine::submit`. One result per envelope, in
/// order.
pub async fn check_envelopes(
    engine: &Engine,
    envelopes: Vec<pb::Envelope>,
) -> Result<Vec<Result<Submission, Rejection>>, Status> {
    Ok(check_all(engine, envelopes)
        .await?
        .into_iter()
        .map(|checked| checked.map_err(|(_, rejection)| rejection))
        .collect())
}

fn record_rejection(rejection: &Rejection) {
    metrics::counter!("coalition_submissions_total", "outcome" => "rejected").increment(1);
    metrics::counter!("coalition_rejections_total", "reason" => rejection.reason.name())
        .increment(1);
}

fn record_outcome(outcome: &SubmitOutcome) {
    let label = if outcome.duplicate {
        "duplicate"
    } else {
        "accepted"
    };
    metrics::counter!("coalition_submissions_total", "outcome" => label).increment(1);
}

/// Checks and submits envelopes; one result per envelope, in order.
async fn process(
    engine: &Engine,
    envelopes: Vec<pb::Envelope>,
) -> Result<Vec<pb::SubmissionResult>, Status> {
    let checked = check_all(engine, envelopes).await?;
    let mut results: Vec<Option<pb::SubmissionResult>> = Vec::with_capacity(checked.len());
    let mut submissions = Vec::new();
    let mut positions = Vec::new();
    for (position, item) in checked.into_iter().enumerate() {
        match item {
            Ok(submission) => {
                positions.push((position, submission.merchant_transaction_id.to_string()));
                submissions.push(submission);
                results.push(None);
            }
            Err((transaction_id, rejection)) => {
                record_rejection(&rejection);
                results.push(Some(convert::rejected(&rejection, transaction_id)));
            }
        }
    }
    let outcomes = engine
        .submit(submissions)
        .await
        .map_err(convert::engine_status)?;
    for ((position, transaction_id), outcome) in positions.into_iter().zip(outcomes) {
        results[position] = Some(match outcome {
            Ok(outcome) => {
                record_outcome(&outcome);
                convert::accepted(&outcome, transaction_id)
            }
            Err(rejection) => {
                record_rejection(&rejection);
                convert::rejected(&rejection, transaction_id)
            }
        });
    }
    Ok(results
        .into_iter()
        .map(|result| result.expect("every position has a result"))
        .collect())
}

fn required_envelope(envelope: Option<pb::Envelope>) -> Result<pb::Envelope, Status> {
    envelope.ok_or_else(|| Status::invalid_argument("envelope is required"))
}

#[tonic::async_trait]
impl SubmissionService for Submissions {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let envelope = required_envelope(request.into_inner().envelope)?;
        let mut results = process(&self.engine, vec![envelope]).await?;
        Ok(Response::new(pb::SubmitResponse {
            result: results.pop(),
        }))
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let envelopes = request.into_inner().envelopes;
        if envelopes.len() > self.config.batch_request_len_max {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {} envelopes, this one has {}",
                self.config.batch_request_len_max,
                envelopes.len()
            )));
        }
        let results = process(&self.engine, envelopes).await?;
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    type SubmitStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::SubmitStreamResponse, Status>> + Send + 'static>>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let in_flight_max = self.config.stream_in_flight_max;
        let (sender, receiver) = mpsc::channel(in_flight_max);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            // Each request is processed on its own task so many are in flight at once and
            // the writer can batch them; the semaphore bounds how many. Every task answers
            // its item before the stream can end: the response stream closes only when the
            // last sender (the tasks' clones and this one) is dropped.
            let in_flight = Arc::new(Semaphore::new(in_flight_max));
            // A whole-call failure (the writer could not commit) ends the stream, but only
            // after every item handed to the writer before it has been answered.
            let failure: Arc<std::sync::Mutex<Option<Status>>> = Arc::default();
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(message) = incoming.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => {
                        // The client reset the stream, or sent what cannot be read (a message
                        // over the size limit): the stream ends with that, after every item
                        // read before is answered.
                        tracing::debug!(%status, "submission stream's requests failed");
                        failure
                            .lock()
                            .expect("the failure slot is never poisoned")
                            .get_or_insert(crate::server::request_stream_status(status));
                        break;
                    }
                };
                if failure
                    .lock()
                    .expect("the failure slot is never poisoned")
                    .is_some()
                {
                    break;
                }
                // Finished tasks are reaped as the stream goes, so a long stream holds only
                // what is in flight.
                while tasks.try_join_next().is_some() {}
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let engine = engine.clone();
                let sender = sender.clone();
                let failure = failure.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let client_reference = message.client_reference;
                    let result = match message.envelope {
                        // A request without an envelope is one refused item, not the end
                        // of the stream.
                        None => {
                            let rejection = Rejection::new(
                                RejectionReason::SignatureMalformed,
                                "the request carries no envelope",
                            );
                            record_rejection(&rejection);
                            Ok(convert::rejected(&rejection, String::new()))
                        }
                        Some(envelope) => process(&engine, vec![envelope])
                            .await
                            .map(|mut results| results.pop().expect("one result per envelope")),
                    };
                    match result {
                        Ok(result) => {
                            let _ = sender
                                .send(Ok(pb::SubmitStreamResponse {
                                    client_reference,
                                    result: Some(result),
                                }))
                                .await;
                        }
                        Err(status) => {
                            failure
                                .lock()
                                .expect("the failure slot is never poisoned")
                                .get_or_insert(status);
                        }
                    }
                });
            }
            // Every item handed over is answered before the stream ends, with an error
            // last if the writer failed.
            while tasks.join_next().await.is_some() {}
            let failure = failure
                .lock()
                .expect("the failure slot is never poisoned")
                .take();
            if let Some(status) = failure {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
