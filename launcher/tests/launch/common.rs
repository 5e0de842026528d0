//! Helpers: run the `nabla-launch` binary with its output collected as it comes, scratch
//! directories, free ports, and process checks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nabla-launch");

/// A fresh, empty directory for one test, removed with everything in it when dropped (so a
/// test run leaves nothing behind in the temporary directory, whether it passes or panics).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a [`Scratch`] directory named after the test.
pub fn scratch(name: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nabla-launch-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A launcher being run.
pub struct Run {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

/// A launcher that ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    pub out: String,
    pub err: String,
    pub took: Duration,
}

impl Ended {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rd = BufReader::new(stream);
        let mut line = Vec::new();
        while rd.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    })
}

/// Starts `nabla-launch args...` in `dir` with `env` added (and NABLA_NUM_THREADS removed unless
/// `env` sets it).
pub fn start_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("NABLA_NUM_THREADS")
        .env_remove("RUST_BACKTRACE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run nabla-launch");
    let (out, err) = (Arc::default(), Arc::default());
    let readers = vec![
        collect(child.stdout.take().unwrap(), Arc::clone(&out)),
        collect(child.stderr.take().unwrap(), Arc::clone(&err)),
    ];
    Run {
        child,
        out,
        err,
        readers,
        started: Instant::now(),
    }
}

/// Runs `nabla-launch args...` in `dir` to its end (at most `limit`).
pub fn run_in(dir: &Path, args: &[&str], limit: Duration) -> Ended {
    start_in(dir, args, &[]).finish(limit)
}

impl Run {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits up to `limit` until stdout has `count` lines containing `part`.
    pub fn wait_for_lines(&self, part: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.stdout();
            if out.lines().filter(|l| l.contains(part)).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} lines with {part:?} within {limit:?}\nstdout:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the launcher.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the launcher to end (killing it and failing after `limit`).
    pub fn finish(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "nabla-launch did not end within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ended {
            status,
            out: self.stdout(),
            err: self.stderr(),
            took,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` still runs (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z') && state != Some('X')
        }
    }
}

/// Waits up to `limit` for every process in `pids` to be gone; true when they are.
pub fn all_gone(pids: &[i32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The numbers after `key=` in the lines of `text` that contain it.
pub fn values(text: &str, key: &str) -> Vec<i32> {
    let pat = format!("{key}=");
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&pat)? + pat.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

/// Writes a token file with `nabla-launch --new-token-file` in `dir`.
pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("job.token");
    let ended = run_in(
        dir,
        &["--new-token-file", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    path
}
