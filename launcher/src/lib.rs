//! nabla-launch: the pieces of nabla-rs's torchrun-like launcher.
//!
//! Today this crate holds the rendezvous [`store`]: a TCP key-value store in the manner of
//! PyTorch's TCPStore, served by node 0's launcher, that nodes and ranks use to find each other,
//! to meet at barriers, to post failure notices and to share NCCL's unique id. Unlike TCPStore it
//! lets in only connections that prove they hold the job's secret token.
//!
//! The launcher binary and the TCP communicator come later (issue 10).

pub mod store;
