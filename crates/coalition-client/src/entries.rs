//! Committed entries: the subscription that follows them live and resumes where it stopped,
//! and the entry hash a partner recomputes to check what it received.

use coalition_wire::pb;
use sha2::{Digest, Sha256};
use tonic::Streaming;

use crate::client::Client;
use crate::outcome::Error;
use crate::retry::is_retryable;

/// One entry received from a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEntry {
    /// The entry; for a merchant, without the postings of other merchants' accounts.
    pub entry: pb::JournalEntry,
    /// How many postings were left out; when 0, [`entry_hash`] of the entry equals its hash.
    pub postings_withheld: u32,
}

impl ReceivedEntry {
    /// Whether the entry's hash is what its fields and previous hash give. An entry with
    /// postings withheld cannot be checked so (its hash covers them) and reads `None`.
    pub fn hash_checks(&self) -> Option<bool> {
        (self.postings_withheld == 0).then(|| entry_hash(&self.entry)[..] == self.entry.hash[..])
    }
}

/// A subscription to committed entries ([`Client::subscribe`]): entries come in sequence
/// order; after a failure that may pass (the server restarting, the connection lost) it
/// subscribes again after the last sequence it returned, so nothing is lost or repeated.
pub struct EntrySubscription {
    client: Client,
    last_sequence: u64,
    stream: Option<Streaming<pb::SubscribeEntriesResponse>>,
    /// Entries of the last message not returned yet.
    received: std::collections::VecDeque<pb::SubscribedEntry>,
}

impl std::fmt::Debug for EntrySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrySubscription")
            .field("last_sequence", &self.last_sequence)
            .finish_non_exhaustive()
    }
}

impl EntrySubscription {
    pub(crate) fn new(client: Client, after_sequence: u64) -> Self {
        Self {
            client,
            last_sequence: after_sequence,
            stream: None,
            received: std::collections::VecDeque::new(),
        }
    }

    /// The sequence of the last entry returned (or the one subscribed after): keep it to
    /// resume with [`Client::subscribe`] after a restart of your own process.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// The next entry, waiting for it to be committed. Fails only when the retry policy's
    /// attempts run out in a row, or for a failure no retry can mend.
    pub async fn next(&mut self) -> Result<ReceivedEntry, Error> {
        let mut failures = 0_u32;
        let started = std::time::Instant::now();
        loop {
            if let Some(subscribed) = self.received.pop_front() {
                let entry = subscribed.entry.ok_or_else(|| {
                    Error::Protocol("a subscription message carries no entry".to_owned())
                })?;
                if entry.sequence <= self.last_sequence {
                    return Err(Error::Protocol(format!(
                        "entry {} came after entry {}",
                        entry.sequence, self.last_sequence
                    )));
                }
                self.last_sequence = entry.sequence;
                return Ok(ReceivedEntry {
                    entry,
                    postings_withheld: subscribed.postings_withheld,
                });
            }
            let failure = match self.stream.as_mut() {
                None => match self.client.open_subscription(self.last_sequence).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        continue;
                    }
                    Err(status) => status,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(response)) => {
                        self.received.extend(response.entries);
                        continue;
                    }
                    Ok(None) => tonic::Status::unavailable("the server ended the subscription"),
                    Err(status) => status,
                },
            };
            self.stream = None;
            if !is_retryable(&failure) {
                return Err(Error::Refused(failure));
            }
            failures += 1;
            let retry = self.client.retry_policy();
            if failures >= retry.attempts_max {
                return Err(Error::RetriesExhausted {
                    attempts: failures,
                    elapsed: started.elapsed(),
                    last: failure,
                });
            }
            tokio::time::sleep(retry.backoff(failures)).await;
        }
    }
}

/// The hash of a journal entry, computed from its fields and its previous hash exactly as
/// the server chains entries (docs/entry-hash.md): compare it with `entry.hash`, and each
/// entry's `previous_hash` with the hash of the entry before it.
pub fn entry_hash(entry: &pb::JournalEntry) -> [u8; 32] {
    fn text(hasher: &mut Sha256, text: &str) {
        hasher.update((text.len() as u32).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    fn optional<const N: usize>(hasher: &mut Sha256, value: Option<[u8; N]>) {
        match value {
            Some(bytes) => {
                hasher.update([1]);
                hasher.update(bytes);
            }
            None => hasher.update([0]),
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(b"coalition.v1.entry\0");
    hasher.update(&entry.previous_hash);
    hasher.update(entry.sequence.to_be_bytes());
    text(&mut hasher, entry_kind_code(entry.entry_kind()));
    hasher.update(entry.accepted_at_unix_ms.to_be_bytes());
    if entry.merchant_id.is_empty() {
        hasher.update([0]);
    } else {
        hasher.update([1]);
        text(&mut hasher, &entry.merchant_id);
        text(&mut hasher, &entry.merchant_transaction_id);
        text(&mut hasher, &entry.store_id);
        text(&mut hasher, &entry.terminal_id);
        hasher.update(entry.occurred_at_unix_ms.to_be_bytes());
        hasher.update(&entry.body_hash);
    }
    text(&mut hasher, &entry.member_id);
    hasher.update(entry.points.to_be_bytes());
    optional(&mut hasher, entry.spend_minor.map(i64::to_be_bytes));
    hasher.update(entry.member_points_balance.to_be_bytes());
    text(&mut hasher, &entry.memo);
    optional(&mut hasher, entry.terms_version.map(u32::to_be_bytes));
    optional(&mut hasher, entry.refers_to_sequence.map(u64::to_be_bytes));
    optional(&mut hasher, entry.expires_at_unix_ms.map(i64::to_be_bytes));
    optional(&mut hasher, entry.earn_rule_version.map(u32::to_be_bytes));
    hasher.update((entry.postings.len() as u32).to_be_bytes());
    for posting in &entry.postings {
        text(
            &mut hasher,
            &format!(
                "{}:{}",
                account_kind_code(posting.account_kind()),
                posting.owner_id
            ),
        );
        text(&mut hasher, &posting.asset);
        hasher.update(posting.amount.to_be_bytes());
    }
    hasher.finalize().into()
}

/// The snake_case name of an entry kind, as the hash encodes it.
pub fn entry_kind_code(kind: pb::EntryKind) -> &'static str {
    use pb::EntryKind::*;
    match kind {
        Unspecified => "",
        Earn => "earn",
        Burn => "burn",
        MemberMerge => "member_merge",
        EarnReversal => "earn_reversal",
        BurnReversal => "burn_reversal",
        Hold => "hold",
        Capture => "capture",
        Void => "void",
        HoldExpiry => "hold_expiry",
        Funding => "funding",
        ExchangeIn => "exchange_in",
        ExchangeOut => "exchange_out",
        Expiry => "expiry",
        Settlement => "settlement",
        Payout => "payout",
    }
}

/// The snake_case name of an account kind, as the hash encodes it (`kind:owner`).
pub fn account_kind_code(kind: pb::AccountKind) -> &'static str {
    use pb::AccountKind::*;
    match kind {
        Unspecified => "",
        MemberWallet => "member_wallet",
        MemberHeld => "member_held",
        MerchantIssued => "merchant_issued",
        MerchantRedeemed => "merchant_redeemed",
        MerchantSettlement => "merchant_settlement",
        MerchantFees => "merchant_fees",
        MerchantPayable => "merchant_payable",
        MerchantBreakage => "merchant_breakage",
        OperatorFloat => "operator_float",
        OperatorRounding => "operator_rounding",
        OperatorFees => "operator_fees",
        OperatorCash => "operator_cash",
        OperatorTrading => "operator_trading",
    }
}
