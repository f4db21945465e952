//! The `coalition` binary's library: configuration, starting and stopping a server, the
//! command line, the mall-day workload shared by the demo and the benchmark, and the demo.

pub mod cli;
pub mod config;
pub mod demo;
pub mod runtime;
pub mod workload;
