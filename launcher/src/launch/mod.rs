//! The `nabla-launch` binary's logic: a torchrun-like launcher that starts a node's ranks, wires
//! them to the job's rendezvous [`store`](crate::store), and stops or restarts the whole group,
//! on every node, when one rank fails.
//!
//! How the launchers cooperate through the store (node 0 serves it; every launcher, node 0's
//! included, is a client), for round `k` (0, then one more per restart):
//!
//! 1. Rendezvous: each node sets `launch/{k}/node/{node}` to its rank count and waits for every
//!    node's; the world size is their sum, a node's first rank the sum of the lower nodes'.
//! 2. Each node starts its ranks, each the leader of its own process group.
//! 3. A rank that exits non-zero or dies of a signal: its launcher posts the notice
//!    (`rank R (local rank L on node N, host H) exited with status S`) to `launch/{k}/failed` by
//!    compare-and-set from absent, so the first failure wins, and stops its ranks (SIGTERM to each
//!    group, SIGKILL after `--grace-period`). The other launchers look at that key every 150 ms
//!    and stop theirs the same way.
//! 4. A node whose ranks all exited 0 sets `launch/{k}/done/{node}` and waits for every node's
//!    (or a failure notice). The other nodes add to a heartbeat key every second; node 0 declares
//!    a node whose heartbeat stood still for `--node-timeout` lost.
//! 5. After a failure, with restarts left and the job not marked `launch/abort` (set by a
//!    launcher that got SIGINT/SIGTERM, could not start its program, or found a node lost), every
//!    node goes to round `k + 1`. Otherwise each launcher sets `launch/{k}/left/{node}` and exits;
//!    node 0 keeps the store up until the others have left (or `--grace-period` + 10 s passed).
//!
//! [`main`] is the whole program; the pieces are public for tests and for embedding.

pub mod args;
pub mod env;
pub mod job;
pub mod keys;
pub mod output;
pub mod rendezvous;
pub mod signals;
pub mod spawn;
pub mod supervise;

use std::ffi::OsString;
use std::time::Duration;

use crate::launch::args::{Invocation, parse};
use crate::launch::job::{EXIT_OK, EXIT_USAGE};
use crate::launch::output::Output;
use crate::store::Token;

/// Runs `nabla-launch` with the process's arguments; returns its exit status.
pub fn main() -> i32 {
    run_cli(std::env::args_os())
}

/// Runs `nabla-launch` with `args` (the program's name first); returns its exit status. Uses a
/// current-thread tokio runtime of its own on the calling thread, which must outlive the ranks
/// (on Linux they are killed when it ends).
pub fn run_cli(args: impl IntoIterator<Item = OsString>) -> i32 {
    let config = match parse(args) {
        Ok(Invocation::Launch(config)) => config,
        Ok(Invocation::Print(text)) => {
            print!("{text}");
            return EXIT_OK;
        }
        Ok(Invocation::NewToken(path)) => return new_token(&path),
        Err(e) => {
            eprintln!("nabla-launch: {e}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nabla-launch: cannot start the async runtime: {e}");
            return EXIT_USAGE;
        }
    };
    let output = Output::start();
    let code = runtime.block_on(job::run(config, output.sink()));
    // Ends the tasks that still read pipes of processes the ranks left behind.
    runtime.shutdown_timeout(Duration::from_secs(1));
    output.finish();
    code
}

/// `--new-token-file FILE`: writes a fresh token (mode 600).
fn new_token(path: &std::path::Path) -> i32 {
    match Token::generate().and_then(|t| t.write_file(path)) {
        Ok(()) => {
            eprintln!(
                "nabla-launch: wrote a new token to {} (mode 600); copy it to every node, keep it mode 600, and pass \
                 --rdzv-token-file {} to every launcher",
                path.display(),
                path.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_USAGE
        }
    }
}
