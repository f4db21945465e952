//! The `coalition` binary's library: configuration, starting and stopping a server, the
//! command line, the operator's signing keys, the mall-day workload shared by the demo and
//! the benchmark, and the demo.

pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod demo_settlement;
pub mod export;
pub mod memory;
pub mod operator_key;
pub mod proof;
pub mod reconcile;
pub mod relay;
pub mod runtime;
pub mod settlement;
pub mod verify;
pub mod workload;
