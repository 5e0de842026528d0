//! The whole job on one node: the token, the store, then rounds (a rendezvous and a supervised
//! run of the ranks) until one succeeds, a failure has no restart left, or a signal ends it.

use std::time::Duration;

use crate::launch::args::Config;
use crate::launch::env::{NodeEnv, THREADS_VAR, threads_per_rank};
use crate::launch::output::Sink;
use crate::launch::rendezvous::{Store, Trouble};
use crate::launch::signals::{Signals, signal_name};
use crate::launch::supervise::{Ending, Round};
use crate::store::Token;

/// Exit status: every rank exited 0.
pub const EXIT_OK: i32 = 0;
/// Exit status: a rank failed (with no restart left), or the store went away.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: a usage or setup error.
pub const EXIT_USAGE: i32 = 2;

/// How long node 0 keeps the store up, beyond the grace period, for the other nodes to leave.
const LINGER: Duration = Duration::from_secs(10);

/// This machine's host name (`unknown-host` if it has none).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if r != 0 || end == 0 {
        return "unknown-host".into();
    }
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn load_token(config: &Config) -> Result<Token, String> {
    match &config.token_file {
        Some(path) => Token::from_file(path).map_err(|e| e.to_string()),
        None => Token::generate().map_err(|e| e.to_string()),
    }
}

/// Runs the job on this node; returns the launcher's exit status.
pub async fn run(config: Config, sink: Sink) -> i32 {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            sink.note(format!("nabla-launch: cannot listen for SIGINT and SIGTERM: {e}"))
                .await;
            return EXIT_USAGE;
        }
    };
    let token = match load_token(&config) {
        Ok(t) => t,
        Err(why) => {
            sink.note(said(&why)).await;
            return EXIT_USAGE;
        }
    };
    if let Some(dir) = &config.log_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        sink.note(format!(
            "nabla-launch: --log-dir {}: cannot create it: {e}",
            dir.display()
        ))
        .await;
        return EXIT_USAGE;
    }
    let mut store = match Store::open(&config, &token, &mut signals, &sink).await {
        Ok(s) => s,
        Err(Trouble::Signal(sig)) => return 128 + sig,
        Err(t) => {
            sink.note(said(&trouble_text(&t))).await;
            return EXIT_USAGE;
        }
    };
    let host = hostname();
    let threads = match std::env::var_os(THREADS_VAR) {
        Some(_) => None,
        None => Some(threads_per_rank(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            config.nproc_per_node,
        )),
    };
    let linger = config.grace + LINGER;
    let mut lost_nodes = Vec::new();
    let mut k = 0u32;
    loop {
        let world = match store
            .rendezvous(k, config.nproc_per_node, config.rdzv_timeout, &mut signals)
            .await
        {
            Ok(w) => w,
            Err(t) => {
                let code = match &t {
                    Trouble::Signal(sig) => {
                        let notice = format!("node {}'s launcher got {}", config.node_rank, signal_name(*sig));
                        let _ = store.post_failure(k, &notice, true).await;
                        128 + sig
                    }
                    Trouble::Lost(why) => {
                        sink.note(said(why)).await;
                        return EXIT_FAILED;
                    }
                    Trouble::Aborted(_) => EXIT_FAILED,
                    Trouble::Timeout(why) | Trouble::Setup(why) => {
                        let _ = store.post_failure(k, why, true).await;
                        if k == 0 { EXIT_USAGE } else { EXIT_FAILED }
                    }
                };
                if !matches!(t, Trouble::Signal(_)) {
                    sink.note(said(&trouble_text(&t))).await;
                }
                store.leave(k, &lost_nodes, linger, &mut signals).await;
                return code;
            }
        };
        if k == 0 {
            let last = world.base_rank + config.nproc_per_node - 1;
            let ranks = if last == world.base_rank {
                format!("rank {last}")
            } else {
                format!("ranks {} to {last}", world.base_rank)
            };
            sink.note(format!(
                "nabla-launch: node {} of {} runs {ranks} of {} (store at {})",
                config.node_rank,
                config.nnodes,
                world.size,
                store.addr()
            ))
            .await;
        }
        let env = NodeEnv {
            config: &config,
            world: &world,
            port: store.port(),
            round: k,
            token: token.expose(),
            threads,
        };
        let ending = Round {
            config: &config,
            store: &mut store,
            sink: &sink,
            signals: &mut signals,
            host: &host,
            env,
            lost_nodes: &mut lost_nodes,
        }
        .run()
        .await;
        let code = match ending {
            Ending::Success => EXIT_OK,
            Ending::Failed { notice, restartable } => {
                if restartable && k < config.max_restarts {
                    k += 1;
                    sink.note(format!(
                        "nabla-launch: restarting the group (restart {k} of {})",
                        config.max_restarts
                    ))
                    .await;
                    continue;
                }
                let why = if restartable {
                    format!(" (no restart left: --max-restarts {})", config.max_restarts)
                } else {
                    String::new()
                };
                sink.note(format!("nabla-launch: the job failed: {notice}{why}")).await;
                EXIT_FAILED
            }
            Ending::Signal(sig) => 128 + sig,
            Ending::Lost(why) => {
                sink.note(format!(
                    "nabla-launch: {why}; the ranks on node {} are stopped",
                    config.node_rank
                ))
                .await;
                return EXIT_FAILED;
            }
            Ending::Setup(_) => EXIT_USAGE,
        };
        store.leave(k, &lost_nodes, linger, &mut signals).await;
        return code;
    }
}

/// `nabla-launch: ` and the message, unless it starts with the program's name already (the
/// store's errors do).
fn said(text: &str) -> String {
    if text.starts_with("nabla-launch") {
        text.to_string()
    } else {
        format!("nabla-launch: {text}")
    }
}

fn trouble_text(t: &Trouble) -> String {
    match t {
        Trouble::Signal(sig) => format!("got {}", signal_name(*sig)),
        Trouble::Aborted(why) => format!("the job was stopped: {why}"),
        Trouble::Timeout(why) | Trouble::Lost(why) | Trouble::Setup(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_a_name() {
        let h = super::hostname();
        assert!(!h.is_empty() && !h.contains('\0'), "{h:?}");
    }
}
