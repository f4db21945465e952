//! The wire: the only crate that sees protobuf types. It implements the gRPC services over the
//! engine, converts between the wire and the domain by hand, and offers the client-side helpers
//! a partner (and the demo, benchmark and tests) uses to sign and send transactions.

/// The generated protobuf and gRPC code of `proto/coalition/v1` (from `coalition-wire`).
pub use coalition_wire::pb;

mod admin;
pub mod client;
mod convert;
mod query;
mod server;
mod submission;
mod subscription;

pub use admin::Prover;
pub use server::{Incoming, ServerConfig, serve, serve_starting};
pub use submission::check_envelopes;
pub use subscription::{merchant_view, merchants_concerned, whole_view};
