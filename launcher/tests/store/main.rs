//! The rendezvous store over loopback: every operation, concurrency, hostile traffic,
//! authentication, and where the server listens. One test binary (one link of tokio).

mod auth;
mod bind;
mod blocking;
mod common;
mod hostile;
mod ops;
