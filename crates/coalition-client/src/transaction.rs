//! Transactions to submit: one builder per kind, and the signed envelope that a retry resends.

use coalition_wire::pb;
use ed25519_dalek::{Signer as _, SigningKey};
use prost::Message;

pub use pb::TransactionKind;

/// Prefix of every signed transaction body: the signature covers this followed by exactly the
/// body bytes sent.
pub const SUBMISSION_DOMAIN: &[u8] = b"coalition.v1.submission\0";

/// Prefix of every signed query: the signature covers this followed by exactly the query bytes.
pub const QUERY_DOMAIN: &[u8] = b"coalition.v1.query\0";

/// A merchant's signing identity: its id, the id of the registered key, and the key.
#[derive(Clone)]
pub struct Signer {
    merchant_id: String,
    key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("merchant_id", &self.merchant_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `key` is the ed25519 signing key whose public half is registered for the merchant
    /// under `key_id`.
    pub fn new(merchant_id: impl Into<String>, key_id: impl Into<String>, key: SigningKey) -> Self {
        Self {
            merchant_id: merchant_id.into(),
            key_id: key_id.into(),
            key,
        }
    }

    /// From the 32-byte seed of the signing key.
    pub fn from_seed(
        merchant_id: impl Into<String>,
        key_id: impl Into<String>,
        seed: &[u8; 32],
    ) -> Self {
        Self::new(merchant_id, key_id, SigningKey::from_bytes(seed))
    }

    /// The merchant this signer signs for.
    pub fn merchant_id(&self) -> &str {
        &self.merchant_id
    }

    /// The registered id of the key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key to register for this signer (32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The 64-byte signature over `domain || bytes`.
    pub fn sign_bytes(&self, domain: &[u8], bytes: &[u8]) -> [u8; 64] {
        let mut message = Vec::with_capacity(domain.len() + bytes.len());
        message.extend_from_slice(domain);
        message.extend_from_slice(bytes);
        self.key.sign(&message).to_bytes()
    }

    /// Encodes the transaction for this merchant and signs exactly the encoded bytes. The
    /// transaction's time is now unless it names one, and its store and terminal are the
    /// given defaults unless it names its own.
    pub fn sign(&self, transaction: &Transaction, defaults: &Location) -> Signed {
        let mut body = transaction.body.clone();
        body.merchant_id = self.merchant_id.clone();
        if body.store_id.is_empty() {
            body.store_id = defaults.store_id.clone();
        }
        if body.terminal_id.is_empty() {
            body.terminal_id = defaults.terminal_id.clone();
        }
        if transaction.occurred_at_unix_ms.is_none() {
            body.occurred_at_unix_ms = now_unix_ms();
        }
        let bytes = body.encode_to_vec();
        let signature = self.sign_bytes(SUBMISSION_DOMAIN, &bytes).to_vec();
        Signed {
            merchant_transaction_id: body.merchant_transaction_id,
            envelope: pb::Envelope {
                merchant_id: self.merchant_id.clone(),
                key_id: self.key_id.clone(),
                body: bytes,
                signature,
            },
        }
    }
}

/// The store and terminal a client's transactions happen at unless they name their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub store_id: String,
    pub terminal_id: String,
}

/// A signed transaction: the exact bytes that are sent, and resent on a retry. Keep it (its
/// `envelope` encodes with prost) to resend after a restart of your own process: a resend of
/// the same bytes is answered with the original result and never books twice, while a
/// transaction built again gets a new time, hence a new body, and is refused as
/// `TRANSACTION_ID_CONFLICT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    /// The merchant's id of the transaction (its idempotency key).
    pub merchant_transaction_id: String,
    /// What goes on the wire.
    pub envelope: pb::Envelope,
}

/// A transaction to submit, built by kind: [`Transaction::earn`], [`Transaction::burn`] and
/// the others, then refined with [`Transaction::store`], [`Transaction::terminal`],
/// [`Transaction::spend_minor`] and [`Transaction::occurred_at`].
///
/// `id` is the merchant's own transaction id, the idempotency key: 1–128 characters of
/// `A-Z a-z 0-9 - _ . : /`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    body: pb::TransactionBody,
    occurred_at_unix_ms: Option<i64>,
}

impl Transaction {
    fn new(kind: TransactionKind, id: impl Into<String>, member_id: impl Into<String>) -> Self {
        Self {
            body: pb::TransactionBody {
                merchant_transaction_id: id.into(),
                kind: kind as i32,
                member_id: member_id.into(),
                ..Default::default()
            },
            occurred_at_unix_ms: None,
        }
    }

    fn points(mut self, points: i64) -> Self {
        self.body.points = points;
        self
    }

    fn refers_to(mut self, id: impl Into<String>) -> Self {
        self.body.refers_to_transaction_id = id.into();
        self
    }

    /// The merchant awards `points` to the member.
    pub fn earn(id: impl Into<String>, member_id: impl Into<String>, points: i64) -> Self {
        Self::new(TransactionKind::Earn, id, member_id).points(points)
    }

    /// The merchant awards what a purchase of `spend_minor` (minor units of the settlement
    /// currency) earns under its base rate and the alliance's earn rules, rounded down.
    pub fn earn_by_spend(
        id: impl Into<String>,
        member_id: impl Into<String>,
        spend_minor: i64,
    ) -> Self {
        Self::new(TransactionKind::Earn, id, member_id).spend_minor(spend_minor)
    }

    /// The member redeems `points` at the merchant.
    pub fn burn(id: impl Into<String>, member_id: impl Into<String>, points: i64) -> Self {
        Self::new(TransactionKind::Burn, id, member_id).points(points)
    }

    /// Reserves `points` of the member's for a later [`Transaction::capture`] or
    /// [`Transaction::void`].
    pub fn hold(id: impl Into<String>, member_id: impl Into<String>, points: i64) -> Self {
        Self::new(TransactionKind::Hold, id, member_id).points(points)
    }

    /// Redeems `points` (at most what it holds) of the hold `hold_id`, releasing the rest.
    pub fn capture(
        id: impl Into<String>,
        hold_id: impl Into<String>,
        member_id: impl Into<String>,
        points: i64,
    ) -> Self {
        Self::new(TransactionKind::Capture, id, member_id)
            .points(points)
            .refers_to(hold_id)
    }

    /// Releases the whole hold `hold_id`.
    pub fn void(
        id: impl Into<String>,
        hold_id: impl Into<String>,
        member_id: impl Into<String>,
    ) -> Self {
        Self::new(TransactionKind::Void, id, member_id).refers_to(hold_id)
    }

    /// Undoes `points` of the earlier earn, burn or capture `original_id` of the same member;
    /// see [`Transaction::of_merchant`] for another merchant's transaction.
    pub fn reverse(
        id: impl Into<String>,
        original_id: impl Into<String>,
        member_id: impl Into<String>,
        points: i64,
    ) -> Self {
        Self::new(TransactionKind::Reversal, id, member_id)
            .points(points)
            .refers_to(original_id)
    }

    /// Converts `legacy_units` of the merchant's own legacy unit into alliance points.
    pub fn exchange_in(
        id: impl Into<String>,
        member_id: impl Into<String>,
        legacy_units: i64,
    ) -> Self {
        let mut transaction = Self::new(TransactionKind::ExchangeIn, id, member_id);
        transaction.body.legacy_units = legacy_units;
        transaction
    }

    /// Converts `points` into the merchant's legacy units.
    pub fn exchange_out(id: impl Into<String>, member_id: impl Into<String>, points: i64) -> Self {
        Self::new(TransactionKind::ExchangeOut, id, member_id).points(points)
    }

    /// For a reversal of another merchant's transaction (bought at one merchant, returned at
    /// this one, where this one's terms allow it): the merchant whose transaction it is.
    pub fn of_merchant(mut self, merchant_id: impl Into<String>) -> Self {
        self.body.refers_to_merchant_id = merchant_id.into();
        self
    }

    /// The store it happened at, instead of the client's default.
    pub fn store(mut self, store_id: impl Into<String>) -> Self {
        self.body.store_id = store_id.into();
        self
    }

    /// The terminal it happened at, instead of the client's default.
    pub fn terminal(mut self, terminal_id: impl Into<String>) -> Self {
        self.body.terminal_id = terminal_id.into();
        self
    }

    /// The purchase amount in minor units of the settlement currency.
    pub fn spend_minor(mut self, spend_minor: i64) -> Self {
        self.body.spend_minor = Some(spend_minor);
        self
    }

    /// When it happened at the terminal (Unix milliseconds), instead of the time it is signed.
    pub fn occurred_at(mut self, unix_ms: i64) -> Self {
        self.occurred_at_unix_ms = Some(unix_ms);
        self.body.occurred_at_unix_ms = unix_ms;
        self
    }

    /// The merchant's transaction id.
    pub fn id(&self) -> &str {
        &self.body.merchant_transaction_id
    }

    /// The body as it will be signed, before the merchant, location and time are filled in.
    pub fn body(&self) -> &pb::TransactionBody {
        &self.body
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
