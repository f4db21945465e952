//! The engine: it owns the writing path and the merchant registry.
//!
//! Submissions are authenticated and checked in parallel by the callers (the gRPC handlers),
//! using the shared registry. Checked submissions go to one writer task, which applies them in
//! arrival order to the in-memory ledger, gathers everything that arrived meanwhile into one
//! batch, and commits the batch in one database transaction before any result in it is
//! acknowledged (group commit). A failed commit acknowledges nothing and the writer rebuilds
//! its state from the database, so memory never runs ahead of what is durable.

mod clock;
mod engine;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    AdminError, COMMITTED_FEED_BATCHES, CUTOFF_OFFSET_DEFAULT, CUTOFF_TIME_DEFAULT, Engine,
    EngineConfig, EngineError, EnrollSummary, Envelope, NewMerchant, PeriodStatus, SettlementView,
    SubmitOutcome,
};
pub use writer::CommittedEntries;
