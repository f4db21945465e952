//! The clearing core of Coalition: identifiers, amounts, accounts, journal entries, the hash
//! chain, signature checks and the ledger state machine that turns a verified submission into
//! one balanced journal entry.
//!
//! This crate is pure: it never reads a clock, draws a random number, touches a database or
//! the network. Time and identifiers come in as arguments, so the same inputs always give the
//! same journal, and the engine, the tests and a simulator can all drive it alike.

pub mod account;
pub mod chain;
pub mod earn_rules;
pub mod ids;
pub mod journal;
pub mod ledger;
pub mod limits;
mod lots;
pub mod merkle;
pub mod policy;
pub mod reconciliation;
pub mod registry;
pub mod rejection;
pub mod settlement;
pub mod signing;
pub mod submission;
pub mod terms;

pub use account::{AccountId, AccountKey, Asset, CurrencyCode, UnitCode};
pub use chain::ChainHead;
pub use earn_rules::{Campaign, EarnRules};
pub use ids::{KeyId, MemberId, MerchantId, MerchantTransactionId};
pub use journal::{Entry, EntryKind, LotConsumption, LotId, LotRecord, MerchantOrigin, Posting};
pub use ledger::working_set::{
    InMemory, MemberState, Needs, OpenHold, ReferenceState, Reversible, StateRows, WorkingSet,
};
pub use ledger::{
    AliasRecord, ApplyError, Changes, FinalisedPeriod, Ledger, MemberError, MemberRecord, Outcome,
    Receipt, ReceiptKey, body_hash,
};
pub use limits::Limits;
pub use lots::Lot;
pub use policy::{ExpiryBoundary, LedgerPolicy};
pub use registry::{Merchant, MerchantCategory, MerchantKey, MerchantStatus, Registry};
pub use rejection::{Rejection, RejectionReason};
pub use submission::{RawSubmission, SignedEnvelope, Submission, TransactionKind};
pub use terms::{MerchantTerms, Prices, TermsError};
