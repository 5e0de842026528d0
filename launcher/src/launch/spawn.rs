//! Starting a node's ranks, each the leader of its own process group (so that a signal to the
//! group reaches whatever the rank started), and learning how each one ended.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::launch::output::{LogFile, Sink, Stream, forward};
use crate::launch::signals::signal_name;

/// How long, after a rank exits, its last lines may take to reach the launcher before the exit is
/// reported (its pipes stay open longer when it left children behind).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(300);

/// How a rank ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RankExit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Waiting for it failed (should not happen).
    Unknown(String),
}

impl RankExit {
    fn from_status(status: ExitStatus) -> RankExit {
        match (status.code(), status.signal()) {
            (Some(code), _) => RankExit::Code(code),
            (None, Some(sig)) => RankExit::Signal(sig),
            (None, None) => RankExit::Unknown(format!("{status}")),
        }
    }

    /// Exited with status 0.
    pub fn success(&self) -> bool {
        *self == RankExit::Code(0)
    }

    /// `exited with status 3`, `was killed by signal SIGKILL (9)`.
    pub fn describe(&self) -> String {
        match self {
            RankExit::Code(c) => format!("exited with status {c}"),
            RankExit::Signal(s) => format!("was killed by signal {} ({s})", signal_name(*s)),
            RankExit::Unknown(why) => format!("ended in a way the launcher cannot tell ({why})"),
        }
    }
}

/// A started rank.
#[derive(Debug)]
pub struct Rank {
    /// Its index on this node.
    pub local: usize,
    /// Its index in the job.
    pub global: usize,
    /// Its process id, which is also its process group's id.
    pub pid: i32,
    /// How it ended, once it has.
    pub exit: Option<RankExit>,
    /// Waits for it, then for the end of its output; `None` once that ended.
    task: Option<JoinHandle<()>>,
}

/// The ranks of a node in one round.
#[derive(Debug)]
pub struct Ranks {
    /// The ranks started, in local rank order.
    pub ranks: Vec<Rank>,
    tx: mpsc::UnboundedSender<(usize, RankExit)>,
    rx: mpsc::UnboundedReceiver<(usize, RankExit)>,
}

impl Default for Ranks {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Ranks {
            ranks: Vec::new(),
            tx,
            rx,
        }
    }
}

/// What a rank runs.
#[derive(Clone, Debug)]
pub struct Program<'a> {
    /// The program.
    pub program: &'a OsStr,
    /// Its arguments.
    pub args: &'a [OsString],
}

/// On Linux, asks the kernel to SIGKILL the rank if the launcher dies (even by SIGKILL, which it
/// cannot forward). The launcher spawns from its main thread, whose end is the process's end.
#[cfg(target_os = "linux")]
fn die_with_launcher(cmd: &mut Command) {
    let launcher = std::process::id() as libc::pid_t;
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls with no memory arguments,
        // fit to run between fork and exec; nothing here allocates.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before the prctl took effect: do not run orphaned.
            if libc::getppid() != launcher {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_launcher(_cmd: &mut Command) {}

impl Ranks {
    /// Starts a rank: `program` with the launcher's environment plus `env`, stdin from
    /// /dev/null, its output forwarded to `sink` (and `log`). The error names the program.
    pub fn spawn(
        &mut self,
        program: &Program<'_>,
        local: usize,
        global: usize,
        env: &[(&'static str, String)],
        sink: &Sink,
        log: Option<LogFile>,
    ) -> Result<(), String> {
        let mut cmd = Command::new(program.program);
        cmd.args(program.args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        die_with_launcher(&mut cmd);
        let shown = program.program.to_string_lossy();
        let mut child = cmd.spawn().map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => "; check the program's name and PATH",
                std::io::ErrorKind::PermissionDenied => "; is it executable (`chmod +x`)?",
                _ => "",
            };
            format!("cannot start `{shown}` (for rank {global}, local rank {local}): {e}{hint}")
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(forward(s, global, Stream::Stdout, log.clone(), sink.clone())));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(forward(s, global, Stream::Stderr, log, sink.clone())));
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => RankExit::from_status(status),
                Err(e) => RankExit::Unknown(e.to_string()),
            };
            let output = async {
                for t in [out, err].into_iter().flatten() {
                    let _ = t.await;
                }
            };
            tokio::pin!(output);
            let flushed = tokio::time::timeout(OUTPUT_AFTER_EXIT, &mut output).await.is_ok();
            let _ = tx.send((local, exit));
            if !flushed {
                output.await;
            }
        });
        self.ranks.push(Rank {
            local,
            global,
            pid,
            exit: None,
            task: Some(task),
        });
        Ok(())
    }

    /// The next rank to end, with how (cancel-safe). Never returns when none is left running.
    pub async fn next_exit(&mut self) -> (usize, RankExit) {
        if self.running() == 0 {
            return std::future::pending().await;
        }
        match self.rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await, // self holds a sender: cannot happen
        }
    }

    /// Records that local rank `local` ended.
    pub fn record(&mut self, local: usize, exit: RankExit) {
        if let Some(r) = self.ranks.iter_mut().find(|r| r.local == local) {
            r.exit = Some(exit);
            remove_mailboxes(r.pid);
        }
    }

    /// Ranks still running.
    pub fn running(&self) -> usize {
        self.ranks.iter().filter(|r| r.exit.is_none()).count()
    }

    /// Whether every rank ended with status 0.
    pub fn all_succeeded(&self) -> bool {
        self.ranks
            .iter()
            .all(|r| r.exit.as_ref().is_some_and(RankExit::success))
    }

    /// Sends `sig` to every rank's process group (also of ranks that ended, for what they left
    /// behind).
    pub fn signal_all(&self, sig: i32) {
        for r in &self.ranks {
            crate::launch::signals::signal_group(r.pid, sig);
        }
    }

    /// Waits, until `deadline`, for the ranks' output to reach the writer.
    pub async fn drain_output(&mut self, deadline: Instant) {
        for r in &mut self.ranks {
            let Some(task) = r.task.as_mut() else { continue };
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                return;
            }
            r.task = None;
        }
    }
}

/// Removes the shared-memory mailboxes (see [`crate::peer::MAILBOX_DIR`]) that the rank with
/// process id `pid` left behind: a rank unlinks its own once its ring is built, so only a rank
/// killed while it built one leaves any.
fn remove_mailboxes(pid: i32) {
    let prefix = format!("{}{pid}-", crate::peer::MAILBOX_PREFIX);
    let Ok(entries) = std::fs::read_dir(crate::peer::MAILBOX_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        assert_eq!(RankExit::Code(3).describe(), "exited with status 3");
        assert_eq!(RankExit::Signal(9).describe(), "was killed by signal SIGKILL (9)");
        assert!(RankExit::Code(0).success() && !RankExit::Signal(15).success());
    }
}
