//! nabla-launch: nabla-rs's torchrun-like launcher, and the rendezvous store it serves.
//!
//! - [`launch`]: the `nabla-launch` binary's logic. On each node it starts the ranks of a
//!   data-parallel job, prefixes their output, and stops (or restarts) the whole group on every
//!   node when one rank fails.
//! - [`store`]: the rendezvous store, a TCP key-value store in the manner of PyTorch's TCPStore,
//!   served by node 0's launcher, that nodes and ranks use to find each other, to meet at
//!   barriers, to post failure notices and to share NCCL's unique id. Unlike TCPStore it lets in
//!   only connections that prove they hold the job's secret token.
//! - [`peer`]: the token handshake that opens every connection between two ranks (the TCP ring
//!   of `nabla-dist`).
//!
//! # The `nabla-launch` command
//!
//! ```text
//! nabla-launch --nproc-per-node N [--nnodes M --node-rank R --master-addr HOST --master-port P]
//!              [--max-restarts K] [--log-dir DIR] [--rdzv-token-file FILE] [--grace-period SECS]
//!              [--rdzv-timeout SECS] [--node-timeout SECS] -- PROGRAM ARGS...
//! nabla-launch --new-token-file FILE
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--nproc-per-node N` | 1 | ranks (processes) started on this node; nodes may differ |
//! | `--nnodes M` | 1 | nodes (launchers) in the job |
//! | `--node-rank R` | 0 | this node's index, `0..M`; node 0 serves the store |
//! | `--master-addr HOST` | 127.0.0.1 | node 0's address; its store listens on exactly this address |
//! | `--master-port P` | 29500 | the store's port; with `--nnodes 1` and no port, a free port |
//! | `--max-restarts K` | 0 | group restarts allowed after a rank fails |
//! | `--log-dir DIR` | none | also append each rank's output, unprefixed, to `DIR/rank_R.log` |
//! | `--rdzv-token-file FILE` | generated | the job's secret (mode 600); required with `--nnodes` > 1 |
//! | `--grace-period SECS` | 5 | time between SIGTERM and SIGKILL when stopping ranks |
//! | `--rdzv-timeout SECS` | 300 | time to reach the store and for every node to arrive |
//! | `--node-timeout SECS` | 30 | node 0 declares a node lost after this long without a heartbeat |
//! | `--new-token-file FILE` | | write a fresh token (mode 600) and exit |
//!
//! For several nodes, make a token once (`nabla-launch --new-token-file job.token`), copy it to
//! every node (keep it mode 600), and start one launcher per node with the same `--nnodes`,
//! `--master-addr`, `--master-port`, `--max-restarts` and `--rdzv-token-file`.
//!
//! Each rank's stdout and stderr lines reach the launcher's stdout and stderr as
//! `[rank R] line`. Each rank gets the launcher's environment plus:
//!
//! | variable | value |
//! |---|---|
//! | `RANK` | the rank's index in the job |
//! | `LOCAL_RANK` | its index on this node |
//! | `WORLD_SIZE` | ranks in the job (the sum over the nodes) |
//! | `LOCAL_WORLD_SIZE` | ranks on this node (`--nproc-per-node`) |
//! | `NODE_RANK`, `NNODES` | `--node-rank`, `--nnodes` |
//! | `MASTER_ADDR`, `MASTER_PORT` | the store's address as given, and the port it really listens on |
//! | `NABLA_RESTART_COUNT`, `NABLA_RUN_ID` | the round: 0, then one more per restart |
//! | `NABLA_RDZV_TOKEN` | the job's token (only ever in the environment, never on a command line) |
//! | `NABLA_NUM_THREADS` | the machine's parallelism / N (at least 1), unless already set |
//!
//! `CUDA_VISIBLE_DEVICES` is left alone. When a rank exits non-zero or is killed by a signal,
//! every rank on every node is stopped (SIGTERM to each rank's process group, SIGKILL after the
//! grace period) and, with restarts left, the group starts again. SIGINT and SIGTERM to a
//! launcher are passed to its ranks and stop the job on every node, without a restart. Exit
//! status: 0 success, 1 a rank failed (or node 0's store went away), 2 a usage or setup error,
//! 128+N after signal N.

pub mod launch;
pub mod peer;
pub mod store;
