//! Business rejections are data: one stable, numbered list of reasons, ordered by the
//! precedence in which they are checked, with one exception: idempotency (a duplicate or
//! `TransactionIdConflict`) is decided before the time checks (`OccurredAtInFuture`,
//! `OccurredAtBeyondOfflineWindow`), so that a retry of a booked transaction always gets its
//! original result. The numbers and names are part of the public API
//! (the gRPC enum uses the same numbers); a reason is never renumbered or reused.

use std::fmt;

/// Why a submission was refused. Nothing is applied for a refused submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RejectionReason {
    /// The signature is not 64 bytes, the envelope lacks a merchant or key id, or a stream
    /// request carries no envelope.
    SignatureMalformed = 1,
    /// No merchant with this id is registered.
    MerchantUnknown = 2,
    /// The merchant is suspended and may not submit.
    MerchantSuspended = 3,
    /// The merchant has no key with this key id.
    KeyUnknown = 4,
    /// The key was revoked.
    KeyRevoked = 5,
    /// The key's validity starts later.
    KeyNotYetValid = 6,
    /// The key's validity has ended.
    KeyExpired = 7,
    /// The signature does not verify (strictly) over the domain prefix and the body bytes.
    SignatureInvalid = 8,
    /// The body bytes are not a transaction body.
    BodyMalformed = 9,
    /// The body names another merchant than the envelope.
    BodyMerchantMismatch = 10,
    /// The merchant transaction id is empty, too long or has characters outside the alphabet.
    TransactionIdInvalid = 11,
    /// The body does not name its kind.
    KindUnspecified = 12,
    /// The member id is empty, too long or malformed.
    MemberIdInvalid = 13,
    /// Points are zero, negative or above the per-transaction limit.
    PointsInvalid = 14,
    /// The store or terminal id is malformed, or a spend amount is negative.
    DetailsInvalid = 15,
    /// `occurred_at` is further in the future than the clock skew allowed.
    OccurredAtInFuture = 16,
    /// `occurred_at` is older than the offline window.
    OccurredAtBeyondOfflineWindow = 17,
    /// The merchant already used this transaction id for a different body.
    TransactionIdConflict = 18,
    /// The member id (after aliases) is not enrolled.
    MemberUnknown = 19,
    /// A burn asks for more points than the member has available.
    PointsInsufficient = 20,
    /// The merchant has no terms in force, so the transaction's money leg has no price.
    TermsMissing = 21,
    /// The transaction a reversal, capture or void names is not in the journal.
    ReferenceUnknown = 22,
    /// The named transaction is of a kind this one cannot act on (a capture of an earn, a
    /// reversal of a hold), or belongs to another member.
    ReferenceNotApplicable = 23,
    /// Another merchant's transaction may be reversed only where the reversing merchant's terms
    /// allow it.
    ReversalNotPermitted = 24,
    /// A reversal asks for more points than remain un-reversed of the original.
    ReversalExceedsRemaining = 25,
    /// The hold was already captured, voided or expired.
    HoldNotOpen = 26,
    /// A capture asks for more points than the hold holds.
    CaptureExceedsHold = 27,
    /// An earn sent with a spend amount and no points at a merchant whose terms set no base
    /// earn rate.
    EarnRuleMissing = 28,
    /// The spend earns no whole point under the rules in force.
    SpendEarnsNoPoints = 29,
    /// The earn would take a post-paid merchant's net position with the operator below its
    /// credit limit.
    CreditLimitExceeded = 30,
    /// The earn costs a prepaid merchant more than the funded balance it has left.
    PrepaidBalanceInsufficient = 31,
    /// An exchange at a merchant whose terms name no legacy unit and rate.
    ExchangeRateMissing = 32,
    /// The exchange converts to no whole point (or no whole legacy unit).
    ExchangeTooSmall = 33,
    /// An earn by spend or an exchange would award more points than the per-transaction limit.
    ComputedPointsAboveLimit = 34,
}

impl RejectionReason {
    /// Every reason, in precedence order.
    pub const ALL: [RejectionReason; 34] = [
        Self::SignatureMalformed,
        Self::MerchantUnknown,
        Self::MerchantSuspended,
        Self::KeyUnknown,
        Self::KeyRevoked,
        Self::KeyNotYetValid,
        Self::KeyExpired,
        Self::SignatureInvalid,
        Self::BodyMalformed,
        Self::BodyMerchantMismatch,
        Self::TransactionIdInvalid,
        Self::KindUnspecified,
        Self::MemberIdInvalid,
        Self::PointsInvalid,
        Self::DetailsInvalid,
        Self::OccurredAtInFuture,
        Self::OccurredAtBeyondOfflineWindow,
        Self::TransactionIdConflict,
        Self::MemberUnknown,
        Self::PointsInsufficient,
        Self::TermsMissing,
        Self::ReferenceUnknown,
        Self::ReferenceNotApplicable,
        Self::ReversalNotPermitted,
        Self::ReversalExceedsRemaining,
        Self::HoldNotOpen,
        Self::CaptureExceedsHold,
        Self::EarnRuleMissing,
        Self::SpendEarnsNoPoints,
        Self::CreditLimitExceeded,
        Self::PrepaidBalanceInsufficient,
        Self::ExchangeRateMissing,
        Self::ExchangeTooSmall,
        Self::ComputedPointsAboveLimit,
    ];

    /// The stable numeric code, equal to the gRPC enum value.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|reason| reason.code() == code)
    }

    /// The stable snake_case name used in logs, metrics and exports.
    pub fn name(self) -> &'static str {
        match self {
            Self::SignatureMalformed => "signature_malformed",
            Self::MerchantUnknown => "merchant_unknown",
            Self::MerchantSuspended => "merchant_suspended",
            Self::KeyUnknown => "key_unknown",
            Self::KeyRevoked => "key_revoked",
            Self::KeyNotYetValid => "key_not_yet_valid",
            Self::KeyExpired => "key_expired",
            Self::SignatureInvalid => "signature_invalid",
            Self::BodyMalformed => "body_malformed",
            Self::BodyMerchantMismatch => "body_merchant_mismatch",
            Self::TransactionIdInvalid => "transaction_id_invalid",
            Self::KindUnspecified => "kind_unspecified",
            Self::MemberIdInvalid => "member_id_invalid",
            Self::PointsInvalid => "points_invalid",
            Self::DetailsInvalid => "details_invalid",
            Self::OccurredAtInFuture => "occurred_at_in_future",
            Self::OccurredAtBeyondOfflineWindow => "occurred_at_beyond_offline_window",
            Self::TransactionIdConflict => "transaction_id_conflict",
            Self::MemberUnknown => "member_unknown",
            Self::PointsInsufficient => "points_insufficient",
            Self::TermsMissing => "terms_missing",
            Self::ReferenceUnknown => "reference_unknown",
            Self::ReferenceNotApplicable => "reference_not_applicable",
            Self::ReversalNotPermitted => "reversal_not_permitted",
            Self::ReversalExceedsRemaining => "reversal_exceeds_remaining",
            Self::HoldNotOpen => "hold_not_open",
            Self::CaptureExceedsHold => "capture_exceeds_hold",
            Self::EarnRuleMissing => "earn_rule_missing",
            Self::SpendEarnsNoPoints => "spend_earns_no_points",
            Self::CreditLimitExceeded => "credit_limit_exceeded",
            Self::PrepaidBalanceInsufficient => "prepaid_balance_insufficient",
            Self::ExchangeRateMissing => "exchange_rate_missing",
            Self::ExchangeTooSmall => "exchange_too_small",
            Self::ComputedPointsAboveLimit => "computed_points_above_limit",
        }
    }
}

impl fmt::Display for RejectionReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A refusal: the stable reason and a message for the person reading it, naming the values
/// that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectionReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectionReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.reason, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_unique_and_round_trip() {
        for (index, reason) in RejectionReason::ALL.iter().enumerate() {
            assert_eq!(usize::from(reason.code()), index + 1);
            assert_eq!(RejectionReason::from_code(reason.code()), Some(*reason));
        }
        assert_eq!(RejectionReason::from_code(0), None);
        assert_eq!(
            RejectionReason::from_code(RejectionReason::ALL.len() as u8 + 1),
            None
        );
    }
}
