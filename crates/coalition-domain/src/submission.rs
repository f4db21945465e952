//! A merchant's transaction as the core sees it, after the signature was verified and the
//! wire format decoded. `Submission::check` is the only way to build one.

use crate::ids::{MemberId, MerchantId, MerchantTransactionId, check_identifier};
use crate::limits::Limits;
use crate::rejection::{Rejection, RejectionReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    Earn,
    Burn,
    /// Takes back (of an earn) or gives back (of a burn or capture) points of an earlier
    /// transaction, named by `refers_to`.
    Reversal,
    /// Reserves points for a later capture.
    Hold,
    /// Redeems part or all of the hold named by `refers_to` and releases the rest.
    Capture,
    /// Releases the whole hold named by `refers_to`; its points must be 0.
    Void,
    /// Converts `legacy_units` of the merchant's own unit into alliance points at the rate in
    /// force; points must be 0.
    ExchangeIn,
    /// Converts `points` into the merchant's own legacy units; legacy units must be 0.
    ExchangeOut,
}

impl TransactionKind {
    /// Whether the kind names an earlier transaction it acts on.
    pub fn refers(self) -> bool {
        matches!(
            self,
            TransactionKind::Reversal | TransactionKind::Capture | TransactionKind::Void
        )
    }
}

/// The decoded body as it arrived: nothing in it has been checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSubmission {
    pub merchant_id: String,
    pub merchant_transaction_id: String,
    pub kind: Option<TransactionKind>,
    pub member_id: String,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub occurred_at_ms: i64,
    pub store_id: String,
    pub terminal_id: String,
    /// The merchant of the transaction referred to; empty means the submitting merchant.
    pub refers_to_merchant_id: String,
    /// The merchant transaction id referred to by a reversal, capture or void.
    pub refers_to_transaction_id: String,
    /// Legacy units an exchange-in converts.
    pub legacy_units: i64,
}

/// A checked submission, ready for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub merchant_id: MerchantId,
    pub merchant_transaction_id: MerchantTransactionId,
    pub kind: TransactionKind,
    pub member_id: MemberId,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub occurred_at_ms: i64,
    pub store_id: String,
    pub terminal_id: String,
    /// The transaction a reversal, capture or void acts on.
    pub refers_to: Option<(MerchantId, MerchantTransactionId)>,
    /// Legacy units an exchange-in converts; 0 otherwise.
    pub legacy_units: i64,
    /// SHA-256 of the signed body bytes.
    pub body_hash: [u8; 32],
    /// The refusal that applies only if this is a new transaction (`occurred_at` outside the
    /// offline window or too far ahead). A retry of a booked transaction is answered with
    /// its original result however old it is, so the writer decides this after the
    /// idempotency lookup, never before.
    pub refused_if_new: Option<Rejection>,
    /// The partner's signed envelope, kept with the entry so that an auditor can check the
    /// partner's signature from the books (none for submissions made without one, as by
    /// tests that drive the ledger directly).
    pub envelope: Option<std::sync::Arc<SignedEnvelope>>,
}

/// What a partner signed: the body's exact bytes, the key that signed them and the
/// signature over `"coalition.v1.submission\0" || body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub key_id: String,
    pub body: Vec<u8>,
    pub signature: [u8; 64],
}

impl Submission {
    /// Checks a decoded body against the envelope's merchant, the limits and the server's
    /// clock, in the precedence order of the rejection codes.
    pub fn check(
        raw: RawSubmission,
        envelope_merchant_id: &str,
        body_hash: [u8; 32],
        now_ms: i64,
        limits: &Limits,
    ) -> Result<Submission, Rejection> {
        if raw.merchant_id != envelope_merchant_id {
            return Err(Rejection::new(
                RejectionReason::BodyMerchantMismatch,
                format!(
                    "the body names merchant {:?} but the envelope is from {envelope_merchant_id:?}",
                    raw.merchant_id
                ),
            ));
        }
        let merchant_id = MerchantId::new(raw.merchant_id).map_err(|error| {
            Rejection::new(
                RejectionReason::BodyMerchantMismatch,
                format!("merchant id {error}"),
            )
        })?;
        let merchant_transaction_id = MerchantTransactionId::new(raw.merchant_transaction_id)
            .map_err(|error| {
                Rejection::new(
                    RejectionReason::TransactionIdInvalid,
                    format!("merchant transaction id {error}"),
                )
            })?;
        let kind = raw.kind.ok_or_else(|| {
            Rejection::new(
                RejectionReason::KindUnspecified,
                "the body must name its kind: earn, burn, reversal, hold, capture, void, exchange in or exchange out",
            )
        })?;
        let member_id = MemberId::new(raw.member_id).map_err(|error| {
            Rejection::new(
                RejectionReason::MemberIdInvalid,
                format!("member id {error}"),
            )
        })?;
        if kind == TransactionKind::ExchangeIn {
            if raw.points != 0
                || raw.legacy_units <= 0
                || raw.legacy_units > limits.points_per_transaction_max
            {
                return Err(Rejection::new(
                    RejectionReason::PointsInvalid,
                    format!(
                        "an exchange-in converts 1 to {} legacy units into points the server computes, so its points must be 0; got {} legacy units and {} points",
                        limits.points_per_transaction_max, raw.legacy_units, raw.points
                    ),
                ));
            }
        } else if raw.legacy_units != 0 {
            return Err(Rejection::new(
                RejectionReason::PointsInvalid,
                format!(
                    "only an exchange-in names legacy units, got {}",
                    raw.legacy_units
                ),
            ));
        } else if kind == TransactionKind::Void {
            if raw.points != 0 {
                return Err(Rejection::new(
                    RejectionReason::PointsInvalid,
                    format!(
                        "a void releases the whole hold, so its points must be 0, got {}",
                        raw.points
                    ),
                ));
            }
        } else if kind == TransactionKind::Earn
            && raw.points == 0
            && raw.spend_minor.is_some_and(|spend| spend > 0)
        {
            // An earn by spend: the points follow from the earn rules.
        } else if raw.points <= 0 || raw.points > limits.points_per_transaction_max {
            return Err(Rejection::new(
                RejectionReason::PointsInvalid,
                format!(
                    "points must be from 1 to {}, got {}",
                    limits.points_per_transaction_max, raw.points
                ),
            ));
        }
        for (field, value) in [
            ("store id", &raw.store_id),
            ("terminal id", &raw.terminal_id),
        ] {
            check_identifier(value).map_err(|error| {
                Rejection::new(RejectionReason::DetailsInvalid, format!("{field} {error}"))
            })?;
        }
        if let Some(spend_minor) = raw.spend_minor
            && spend_minor < 0
        {
            return Err(Rejection::new(
                RejectionReason::DetailsInvalid,
                format!("the spend amount cannot be negative, got {spend_minor}"),
            ));
        }
        let refers_to = if kind.refers() {
            let referred_merchant = if raw.refers_to_merchant_id.is_empty() {
                merchant_id.clone()
            } else {
                MerchantId::new(raw.refers_to_merchant_id).map_err(|error| {
                    Rejection::new(
                        RejectionReason::DetailsInvalid,
                        format!("the referred merchant id {error}"),
                    )
                })?
            };
            let referred_transaction = MerchantTransactionId::new(raw.refers_to_transaction_id)
                .map_err(|error| {
                    Rejection::new(
                        RejectionReason::DetailsInvalid,
                        format!("a reversal, capture or void must name the transaction it acts on: the referred transaction id {error}"),
                    )
                })?;
            Some((referred_merchant, referred_transaction))
        } else {
            if !raw.refers_to_merchant_id.is_empty() || !raw.refers_to_transaction_id.is_empty() {
                return Err(Rejection::new(
                    RejectionReason::DetailsInvalid,
                    "only a reversal, capture or void may refer to another transaction",
                ));
            }
            None
        };
        // The time checks refuse only a new transaction: a retry of one already booked gets
        // its original result however late it comes, so `Ledger::apply` decides them after
        // the idempotency lookup.
        let refused_if_new = check_occurred_at(raw.occurred_at_ms, now_ms, limits).err();
        Ok(Submission {
            merchant_id,
            merchant_transaction_id,
            kind,
            member_id,
            points: raw.points,
            spend_minor: raw.spend_minor,
            occurred_at_ms: raw.occurred_at_ms,
            store_id: raw.store_id,
            terminal_id: raw.terminal_id,
            refers_to,
            legacy_units: raw.legacy_units,
            body_hash,
            refused_if_new,
            envelope: None,
        })
    }
}

/// Whether a transaction that happened at `occurred_at_ms` may still be booked at `now_ms`:
/// not further ahead than the clock skew allows, not older than the offline window.
pub fn check_occurred_at(
    occurred_at_ms: i64,
    now_ms: i64,
    limits: &Limits,
) -> Result<(), Rejection> {
    if occurred_at_ms > now_ms.saturating_add(limits.future_skew_max_ms) {
        return Err(Rejection::new(
            RejectionReason::OccurredAtInFuture,
            format!(
                "occurred_at is {} ms ahead of the server clock; at most {} ms is allowed",
                occurred_at_ms - now_ms,
                limits.future_skew_max_ms
            ),
        ));
    }
    if occurred_at_ms < now_ms.saturating_sub(limits.offline_window_ms) {
        return Err(Rejection::new(
            RejectionReason::OccurredAtBeyondOfflineWindow,
            format!(
                "occurred_at is {} ms in the past; the offline window is {} ms",
                now_ms - occurred_at_ms,
                limits.offline_window_ms
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000_000;

    fn raw() -> RawSubmission {
        RawSubmission {
            merchant_id: "tenant".into(),
            merchant_transaction_id: "t-1".into(),
            kind: Some(TransactionKind::Earn),
            member_id: "m-1".into(),
            points: 100,
            spend_minor: Some(18_000),
            occurred_at_ms: NOW,
            store_id: "store-1".into(),
            terminal_id: "pos-1".into(),
            refers_to_merchant_id: String::new(),
            refers_to_transaction_id: String::new(),
            legacy_units: 0,
        }
    }

    fn check(change: impl FnOnce(&mut RawSubmission), expected: Option<RejectionReason>) {
        let mut body = raw();
        change(&mut body);
        let result = Submission::check(body, "tenant", [0; 32], NOW, &Limits::default());
        // A time refusal is carried to the writer, to be decided after idempotency.
        let reason = match result {
            Ok(submission) => submission.refused_if_new.map(|rejection| rejection.reason),
            Err(rejection) => Some(rejection.reason),
        };
        assert_eq!(reason, expected);
    }

    #[test]
    fn body_checks_at_their_boundaries() {
        let limits = Limits::default();
        check(|_| {}, None);
        check(
            |b| b.merchant_id = "other".into(),
            Some(RejectionReason::BodyMerchantMismatch),
        );
        check(
            |b| b.merchant_transaction_id = String::new(),
            Some(RejectionReason::TransactionIdInvalid),
        );
        check(|b| b.kind = None, Some(RejectionReason::KindUnspecified));
        check(
            |b| b.member_id = "a b".into(),
            Some(RejectionReason::MemberIdInvalid),
        );
        check(
            |b| {
                b.points = 0;
                b.spend_minor = None;
            },
            Some(RejectionReason::PointsInvalid),
        );
        // An earn by spend names a spend and no points.
        check(|b| b.points = 0, None);
        check(
            |b| {
                b.points = 0;
                b.kind = Some(TransactionKind::Burn);
            },
            Some(RejectionReason::PointsInvalid),
        );
        check(|b| b.points = -5, Some(RejectionReason::PointsInvalid));
        check(|b| b.points = limits.points_per_transaction_max, None);
        check(
            |b| b.points = limits.points_per_transaction_max + 1,
            Some(RejectionReason::PointsInvalid),
        );
        check(
            |b| b.store_id = String::new(),
            Some(RejectionReason::DetailsInvalid),
        );
        check(
            |b| b.spend_minor = Some(-1),
            Some(RejectionReason::DetailsInvalid),
        );
        check(
            |b| b.refers_to_transaction_id = "t-0".into(),
            Some(RejectionReason::DetailsInvalid),
        );
        check(
            |b| b.kind = Some(TransactionKind::Reversal),
            Some(RejectionReason::DetailsInvalid),
        );
        check(
            |b| {
                b.kind = Some(TransactionKind::Reversal);
                b.refers_to_transaction_id = "t-0".into();
            },
            None,
        );
        check(
            |b| {
                b.kind = Some(TransactionKind::Capture);
                b.refers_to_merchant_id = "bad merchant".into();
                b.refers_to_transaction_id = "t-0".into();
            },
            Some(RejectionReason::DetailsInvalid),
        );
        check(
            |b| {
                b.kind = Some(TransactionKind::Void);
                b.refers_to_transaction_id = "t-0".into();
            },
            Some(RejectionReason::PointsInvalid),
        );
        check(
            |b| {
                b.kind = Some(TransactionKind::Void);
                b.points = 0;
                b.refers_to_transaction_id = "t-0".into();
            },
            None,
        );
        check(|b| b.occurred_at_ms = NOW + limits.future_skew_max_ms, None);
        check(
            |b| b.occurred_at_ms = NOW + limits.future_skew_max_ms + 1,
            Some(RejectionReason::OccurredAtInFuture),
        );
        check(|b| b.occurred_at_ms = NOW - limits.offline_window_ms, None);
        check(
            |b| b.occurred_at_ms = NOW - limits.offline_window_ms - 1,
            Some(RejectionReason::OccurredAtBeyondOfflineWindow),
        );
    }
}
