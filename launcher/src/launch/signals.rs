//! Signals: the SIGINT and SIGTERM the launcher gets (to forward to the ranks), signalling a
//! rank's process group, and signal names for messages.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// The SIGINT and SIGTERM this process receives, in order. Once installed, they no longer end
/// the launcher by themselves: the launcher forwards them and exits 128+N.
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::UnboundedReceiver<i32>,
}

impl Signals {
    /// Starts listening (on the current tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = int.recv() => libc::SIGINT,
                    Some(()) = term.recv() => libc::SIGTERM,
                    else => return,
                };
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
        Ok(Signals { rx })
    }

    /// A signal received and not yet taken, if any (does not wait).
    pub fn pending(&mut self) -> Option<i32> {
        self.rx.try_recv().ok()
    }

    /// The next signal (cancel-safe, for `select!`); never returns if listening stopped.
    pub async fn recv(&mut self) -> i32 {
        match self.rx.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// Sends `sig` to the process group `pgid` (a rank started as its group's leader). A group that
/// no longer exists is not an error.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return; // never 0 (our own group) or 1 (every process we may signal)
    }
    // SAFETY: killpg has no memory-safety preconditions; a wrong pgid only fails with ESRCH/EPERM.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// The conventional name of signal `sig` (`SIGKILL`), or `signal N` for one without a name here.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(99), "signal 99");
    }
}
