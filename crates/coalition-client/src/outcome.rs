//! What a submission's answer means, as types, and the errors of whole calls.

use coalition_wire::pb;
use std::time::Duration;

pub use pb::RejectionReason;

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The merchant's id of the transaction.
    pub merchant_transaction_id: String,
    /// The journal entry's gap-free sequence number.
    pub entry_sequence: u64,
    /// When the server accepted it, Unix milliseconds.
    pub accepted_at_unix_ms: i64,
    /// What it did.
    pub kind: pb::TransactionKind,
    /// The member whose wallet moved, after alias resolution.
    pub member_id: String,
    /// Points earned, burned, reversed, held or captured; for a void, the points released.
    pub points: i64,
    /// The member's wallet balance right after this transaction.
    pub member_points_balance: i64,
}

/// A refused transaction: nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The merchant's id of the transaction, when the server could read the body.
    pub merchant_transaction_id: String,
    /// The stable reason code (docs/rejections.md lists them all).
    pub reason: RejectionReason,
    /// The server's explanation, naming the offending values.
    pub message: String,
}

/// The answer to one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Booked by this submission.
    Accepted(Accepted),
    /// The same body was booked before: this is its original result and nothing new was
    /// applied. A retry after a lost answer (the client's own, or yours) reads so: the
    /// transaction is booked exactly once.
    Duplicate(Accepted),
    /// Refused; nothing was applied. Resending the same bytes gets the same answer, except
    /// for reasons that depend on the ledger's state (points insufficient, a credit limit).
    Rejected(Rejected),
}

impl Outcome {
    /// The booked result, whether by this submission or an earlier one.
    pub fn booked(&self) -> Option<&Accepted> {
        match self {
            Outcome::Accepted(accepted) | Outcome::Duplicate(accepted) => Some(accepted),
            Outcome::Rejected(_) => None,
        }
    }

    /// The rejection, if refused.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Outcome::Rejected(rejected) => Some(rejected),
            _ => None,
        }
    }

    pub(crate) fn from_wire(result: pb::SubmissionResult) -> Result<Self, Error> {
        let id = result.merchant_transaction_id;
        match result.outcome {
            Some(pb::submission_result::Outcome::Accepted(accepted)) => {
                let kind = pb::TransactionKind::try_from(accepted.kind).map_err(|_| {
                    Error::Protocol(format!("transaction kind {} is unknown", accepted.kind))
                })?;
                let booked = Accepted {
                    merchant_transaction_id: id,
                    entry_sequence: accepted.entry_sequence,
                    accepted_at_unix_ms: accepted.accepted_at_unix_ms,
                    kind,
                    member_id: accepted.member_id,
                    points: accepted.points,
                    member_points_balance: accepted.member_points_balance,
                };
                Ok(if accepted.duplicate {
                    Outcome::Duplicate(booked)
                } else {
                    Outcome::Accepted(booked)
                })
            }
            Some(pb::submission_result::Outcome::Rejected(rejected)) => {
                let reason = RejectionReason::try_from(rejected.reason).map_err(|_| {
                    Error::Protocol(format!(
                        "rejection reason {} is unknown to this client ({}): upgrade it",
                        rejected.reason, rejected.message
                    ))
                })?;
                Ok(Outcome::Rejected(Rejected {
                    merchant_transaction_id: id,
                    reason,
                    message: rejected.message,
                }))
            }
            None => Err(Error::Protocol(format!(
                "the result for {id:?} has neither an acceptance nor a rejection"
            ))),
        }
    }
}

/// Why a whole call failed. Refusals of single transactions are not errors: they are
/// [`Outcome::Rejected`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid URI.
    #[error("the address {address:?} is not valid: {message}")]
    InvalidAddress { address: String, message: String },
    /// The admin token cannot be sent in a header (it must be printable ASCII).
    #[error("the admin token must be printable ASCII")]
    InvalidAdminToken,
    /// The server refused the call as a whole, for a reason a retry cannot change (an
    /// oversized batch, a bad query, a missing permission).
    #[error("the server refused the call: {0}")]
    Refused(tonic::Status),
    /// The call failed on every attempt with a failure that may pass (the server
    /// unavailable, the connection lost); the last failure is given. What was sent may or
    /// may not be booked: send the same [`crate::Signed`] bytes again later to learn which.
    #[error("gave up after {attempts} attempts over {elapsed:?}: {last}")]
    RetriesExhausted {
        attempts: u32,
        elapsed: Duration,
        last: tonic::Status,
    },
    /// The server answered something this client cannot read.
    #[error("the server's answer cannot be read: {0}")]
    Protocol(String),
    /// The streaming submitter stopped (its task ended).
    #[error("the streaming submitter is closed")]
    Closed,
}

impl Error {
    /// The gRPC status of the last failure, where there was one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Refused(status) | Error::RetriesExhausted { last: status, .. } => Some(status),
            _ => None,
        }
    }
}
