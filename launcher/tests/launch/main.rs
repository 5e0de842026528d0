//! The `nabla-launch` binary end to end, with `sh -c` programs as ranks: the ranks' environment
//! and output, failures and restarts, signals, two launchers on loopback, usage errors. One test
//! binary.

mod common;
mod env;
mod failure;
mod nodes;
mod output;
mod signals;
mod usage;
