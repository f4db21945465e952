//! The client: connection, signing, submissions with retries, and signed queries.

use std::future::Future;
use std::time::{Duration, Instant};

use coalition_wire::pb;
use coalition_wire::pb::query_service_client::QueryServiceClient;
use coalition_wire::pb::submission_service_client::SubmissionServiceClient;
use prost::Message;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::entries::EntrySubscription;
use crate::outcome::{Error, Outcome};
use crate::retry::{RetryPolicy, is_retryable};
use crate::stream::StreamSubmitter;
use crate::transaction::{Location, QUERY_DOMAIN, Signed, Signer, Transaction, now_unix_ms};

/// The server's default limit on envelopes per `SubmitBatch` call (`batch_request_len_max`).
pub const BATCH_LEN_MAX_DEFAULT: usize = 10_000;

/// How a [`Client`] is set up; [`Client::builder`] starts one.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    address: String,
    signer: Signer,
    location: Location,
    retry: RetryPolicy,
    batch_len_max: usize,
    timeout: Option<Duration>,
    admin_token: Option<String>,
}

impl ClientBuilder {
    /// Reads as the operator: queries and subscriptions carry the admin token instead of the
    /// merchant's signature, and a subscription receives every entry whole. Submissions are
    /// still signed by the merchant.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// The store and terminal of transactions that do not name their own.
    pub fn location(mut self, store_id: impl Into<String>, terminal_id: impl Into<String>) -> Self {
        self.location = Location {
            store_id: store_id.into(),
            terminal_id: terminal_id.into(),
        };
        self
    }

    /// The retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Envelopes per `SubmitBatch` call at most; [`Client::submit_batch`] splits longer
    /// batches. Default [`BATCH_LEN_MAX_DEFAULT`], the server's default limit.
    pub fn batch_len_max(mut self, batch_len_max: usize) -> Self {
        self.batch_len_max = batch_len_max.max(1);
        self
    }

    /// A deadline for each attempt of a call; an attempt past it fails with
    /// `DEADLINE_EXCEEDED` and is retried. None by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The client, connecting lazily: the first call connects, and a server that is not up
    /// yet is a retryable failure of that call.
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |message: String| Error::InvalidAddress {
            address: self.address.clone(),
            message,
        };
        let mut endpoint =
            Endpoint::from_shared(self.address.clone()).map_err(|e| invalid(e.to_string()))?;
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let channel = endpoint.connect_lazy();
        let bearer = match &self.admin_token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Error::InvalidAdminToken)?,
            ),
            None => None,
        };
        Ok(Client {
            submissions: SubmissionServiceClient::new(channel.clone()),
            queries: QueryServiceClient::with_interceptor(channel, Bearer(bearer)),
            signer: self.signer,
            location: self.location,
            retry: self.retry,
            batch_len_max: self.batch_len_max,
            admin: self.admin_token.is_some(),
        })
    }
}

/// A merchant's connection to Coalition. Cheap to clone; clones share the connection.
///
/// Every submission is signed once and sent as the same bytes on each attempt, so a retry can
/// never book twice (see [`crate::retry::is_retryable`] for what is retried).
#[derive(Debug, Clone)]
pub struct Client {
    submissions: SubmissionServiceClient<Channel>,
    queries: QueryServiceClient<InterceptedService<Channel, Bearer>>,
    signer: Signer,
    location: Location,
    retry: RetryPolicy,
    batch_len_max: usize,
    /// Whether queries carry the admin token instead of the merchant's signature.
    admin: bool,
}

/// Adds the admin token, when there is one, to every query.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A member's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Points in the wallet.
    pub points: i64,
    /// The last journal entry included.
    pub as_of_entry_sequence: u64,
}

/// One page of a member's history, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The entries; a merchant sees those made at it.
    pub entries: Vec<pb::JournalEntry>,
    /// Pass as `before_sequence` for the next (older) page; none when this is the last.
    pub next_before_sequence: Option<u64>,
    /// The member's wallet balance now.
    pub member_points_balance: i64,
}

impl Client {
    /// A client for `address` (for example `http://127.0.0.1:50051`) signing as `signer`.
    pub fn builder(address: impl Into<String>, signer: Signer) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            signer,
            location: Location::default(),
            retry: RetryPolicy::default(),
            batch_len_max: BATCH_LEN_MAX_DEFAULT,
            timeout: None,
            admin_token: None,
        }
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Follows committed entries after `after_sequence` (0: from the first), then live: for a
    /// merchant, those that concern it; with the admin token, all. See [`EntrySubscription`].
    pub fn subscribe(&self, after_sequence: u64) -> EntrySubscription {
        EntrySubscription::new(self.clone(), after_sequence)
    }

    /// Opens the subscription stream, once: `EntrySubscription` owns the retries.
    pub(crate) async fn open_subscription(
        &self,
        after_sequence: u64,
    ) -> Result<Streaming<pb::SubscribeEntriesResponse>, tonic::Status> {
        let mut subscription = pb::EntriesSubscription {
            merchant_id: self.reader_id(),
            after_sequence,
            ..Default::default()
        };
        let (query, signature) = self.stamped(&mut subscription);
        let response = self
            .queries
            .clone()
            .subscribe_entries(pb::SubscribeEntriesRequest { query, signature })
            .await?;
        Ok(response.into_inner())
    }

    /// The merchant a query names: none when the admin token reads.
    fn reader_id(&self) -> String {
        if self.admin {
            String::new()
        } else {
            self.signer.merchant_id().to_owned()
        }
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Signs a transaction as this client would send it; [`Client::submit_signed`] sends it.
    pub fn sign(&self, transaction: &Transaction) -> Signed {
        self.signer.sign(transaction, &self.location)
    }

    /// Signs and submits one transaction, returning once it is committed or refused.
    pub async fn submit(&self, transaction: &Transaction) -> Result<Outcome, Error> {
        self.submit_signed(&self.sign(transaction)).await
    }

    /// Submits a signed transaction (again): the same bytes on every attempt.
    pub async fn submit_signed(&self, signed: &Signed) -> Result<Outcome, Error> {
        let request = pb::SubmitRequest {
            envelope: Some(signed.envelope.clone()),
        };
        let response = self
            .with_retries(|| {
                let mut submissions = self.submissions.clone();
                let request = request.clone();
                async move { submissions.submit(request).await }
            })
            .await?;
        let result = response
            .result
            .ok_or_else(|| Error::Protocol("the Submit response carries no result".to_owned()))?;
        Outcome::from_wire(result)
    }

    /// Signs and submits many transactions: one result each, in order. Sent in calls of at
    /// most the batch limit, one after the other; a refused item never affects the others.
    pub async fn submit_batch(&self, transactions: &[Transaction]) -> Result<Vec<Outcome>, Error> {
        let signed: Vec<Signed> = transactions.iter().map(|t| self.sign(t)).collect();
        self.submit_batch_signed(&signed).await
    }

    /// Submits signed transactions (again), split at the batch limit. If a call fails for
    /// good, the error is returned and the results of the calls before it are lost to the
    /// caller, though booked: resend the same `Signed` values to read them.
    pub async fn submit_batch_signed(&self, signed: &[Signed]) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::with_capacity(signed.len());
        for chunk in signed.chunks(self.batch_len_max) {
            let request = pb::SubmitBatchRequest {
                envelopes: chunk.iter().map(|s| s.envelope.clone()).collect(),
            };
            let response = self
                .with_retries(|| {
                    let mut submissions = self.submissions.clone();
                    let request = request.clone();
                    async move { submissions.submit_batch(request).await }
                })
                .await?;
            if response.results.len() != chunk.len() {
                return Err(Error::Protocol(format!(
                    "{} results for {} envelopes",
                    response.results.len(),
                    chunk.len()
                )));
            }
            for result in response.results {
                outcomes.push(Outcome::from_wire(result)?);
            }
        }
        Ok(outcomes)
    }

    /// A submitter over one long-lived `SubmitStream`, with at most `in_flight_max`
    /// transactions sent and not yet answered; see [`StreamSubmitter`].
    pub fn stream(&self, in_flight_max: usize) -> StreamSubmitter {
        StreamSubmitter::start(
            self.submissions.clone(),
            self.signer.clone(),
            self.location.clone(),
            self.retry,
            in_flight_max,
        )
    }

    /// A member's points balance (any merchant may ask: a POS shows it before a burn).
    pub async fn balance(&self, member_id: &str) -> Result<Balance, Error> {
        let query = pb::BalanceQuery {
            merchant_id: self.reader_id(),
            account_kind: pb::AccountKind::MemberWallet as i32,
            owner_id: member_id.to_owned(),
            asset: "PTS".to_owned(),
            ..Default::default()
        };
        let response = self
            .signed_query(query, |mut queries, query, signature| async move {
                queries
                    .get_balance(pb::GetBalanceRequest { query, signature })
                    .await
            })
            .await?;
        Ok(Balance {
            points: response.points,
            as_of_entry_sequence: response.as_of_entry_sequence,
        })
    }

    /// A page of a member's history made at this merchant, newest first: `page_len` entries
    /// (0: the server's default) before `before_sequence` (none: from the newest).
    pub async fn history(
        &self,
        member_id: &str,
        before_sequence: Option<u64>,
        page_len: u32,
    ) -> Result<HistoryPage, Error> {
        let query = pb::MemberHistoryQuery {
            merchant_id: self.reader_id(),
            member_id: member_id.to_owned(),
            before_sequence,
            page_len,
            ..Default::default()
        };
        let response = self
            .signed_query(query, |mut queries, query, signature| async move {
                queries
                    .get_member_history(pb::GetMemberHistoryRequest { query, signature })
                    .await
            })
            .await?;
        Ok(HistoryPage {
            entries: response.entries,
            next_before_sequence: response.next_before_sequence,
            member_points_balance: response.member_points_balance,
        })
    }

    /// The journal entry this merchant's transaction `merchant_transaction_id` made, or none
    /// if no such transaction was booked.
    pub async fn transaction(
        &self,
        merchant_transaction_id: &str,
    ) -> Result<Option<pb::JournalEntry>, Error> {
        let query = pb::TransactionQuery {
            merchant_id: self.reader_id(),
            transaction_merchant_id: self.signer.merchant_id().to_owned(),
            merchant_transaction_id: merchant_transaction_id.to_owned(),
            ..Default::default()
        };
        let answer = self
            .signed_query(query, |mut queries, query, signature| async move {
                queries
                    .get_transaction(pb::GetTransactionRequest { query, signature })
                    .await
            })
            .await;
        match answer {
            Ok(response) => Ok(response.entry),
            Err(Error::Refused(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Signs a query (stamped with the time now; each attempt signs afresh, since a query
    /// changes nothing and its stamp must be recent) and calls `call` with retries.
    async fn signed_query<Q, R, F, Fut>(&self, mut query: Q, call: F) -> Result<R, Error>
    where
        Q: Message + QueryStamp,
        F: Fn(
            QueryServiceClient<InterceptedService<Channel, Bearer>>,
            Vec<u8>,
            Option<pb::QuerySignature>,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.with_retries(|| {
            let (bytes, signature) = self.stamped(&mut query);
            call(self.queries.clone(), bytes, signature)
        })
        .await
    }

    /// Stamps a query with the time now and encodes it, with the merchant's signature over the
    /// bytes (none when the admin token reads).
    fn stamped<Q: Message + QueryStamp>(
        &self,
        query: &mut Q,
    ) -> (Vec<u8>, Option<pb::QuerySignature>) {
        query.stamp(now_unix_ms());
        let bytes = query.encode_to_vec();
        let signature = (!self.admin).then(|| pb::QuerySignature {
            merchant_id: self.signer.merchant_id().to_owned(),
            key_id: self.signer.key_id().to_owned(),
            signature: self.signer.sign_bytes(QUERY_DOMAIN, &bytes).to_vec(),
        });
        (bytes, signature)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy's attempts are spent.
    async fn with_retries<R, F, Fut>(&self, mut attempt: F) -> Result<R, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match attempt().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if !is_retryable(&status) => return Err(Error::Refused(status)),
                Err(status) => {
                    failures += 1;
                    if failures >= self.retry.attempts_max {
                        return Err(Error::RetriesExhausted {
                            attempts: failures,
                            elapsed: started.elapsed(),
                            last: status,
                        });
                    }
                    tokio::time::sleep(self.retry.backoff(failures)).await;
                }
            }
        }
    }
}

/// Queries carry the time they were made.
trait QueryStamp {
    fn stamp(&mut self, unix_ms: i64);
}

impl QueryStamp for pb::BalanceQuery {
    fn stamp(&mut self, unix_ms: i64) {
        self.issued_at_unix_ms = unix_ms;
    }
}

impl QueryStamp for pb::MemberHistoryQuery {
    fn stamp(&mut self, unix_ms: i64) {
        self.issued_at_unix_ms = unix_ms;
    }
}

impl QueryStamp for pb::EntriesSubscription {
    fn stamp(&mut self, unix_ms: i64) {
        self.issued_at_unix_ms = unix_ms;
    }
}

impl QueryStamp for pb::TransactionQuery {
    fn stamp(&mut self, unix_ms: i64) {
        self.issued_at_unix_ms = unix_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_addresses_and_admin_tokens_are_refused_when_built() {
        let signer = || Signer::from_seed("tenant-1", "key-1", &[1; 32]);
        assert!(matches!(
            Client::builder("not a uri", signer()).build(),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(
            Client::builder("http://127.0.0.1:1", signer())
                .admin_token("line\nbreak")
                .build(),
            Err(Error::InvalidAdminToken)
        ));
        assert!(
            Client::builder("http://127.0.0.1:1", signer())
                .admin_token("token-0123456789")
                .build()
                .is_ok()
        );
    }
}
