//! One round on one node: start the ranks, watch them, the store and the launcher's signals, and
//! end the round together with the other nodes.
//!
//! - A local rank that fails: its notice goes to `launch/{k}/failed` (first failure wins) and
//!   the local ranks are stopped.
//! - Every [`POLL`] the launcher looks at `launch/{k}/failed`; when another node posted it, the
//!   local ranks are stopped.
//! - Every second the other nodes `add` to their heartbeat key; node 0 declares a node whose
//!   heartbeat stood still for `--node-timeout` lost.
//! - When every local rank exited 0, `launch/{k}/done/{node}` is set and the round ends once every
//!   node's is (or a failure notice appears).

use std::fs::OpenOptions;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::launch::args::Config;
use crate::launch::env::NodeEnv;
use crate::launch::keys;
use crate::launch::output::{LogFile, Sink};
use crate::launch::rendezvous::{POLL, Store};
use crate::launch::signals::{Signals, signal_name};
use crate::launch::spawn::{Program, RankExit, Ranks};
use crate::store::StoreError;

/// How often non-zero nodes beat and node 0 looks at the beats.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long ranks get to die after SIGKILL before the launcher stops waiting for them.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);
/// How long after a rank's failure the launcher still collects other ranks' failures for the
/// notice before it stops the ranks.
const SETTLE: Duration = Duration::from_millis(100);
/// How long the ranks' last lines may take to reach the writer at the end of a round.
const DRAIN_OUTPUT: Duration = Duration::from_secs(1);

/// How a round ended on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every rank on every node exited 0.
    Success,
    /// The round failed: the winning failure notice, and whether a restart may follow.
    Failed {
        /// The notice (`rank 3 (local rank 1 on node 1, host h) exited with status 5`).
        notice: String,
        /// False when a launcher got a signal, a program could not start or a node was lost.
        restartable: bool,
    },
    /// This launcher got the signal; the ranks were stopped.
    Signal(i32),
    /// Node 0's store went away (the message says so); the ranks were stopped.
    Lost(String),
    /// The ranks could not be started (the message was printed); exit 2.
    Setup(String),
}

/// What the store said while watching.
enum Seen {
    /// A failure notice for the round.
    Failure(String),
    /// Node 0 found this node's heartbeat standing still.
    NodeLost(usize),
}

/// Node 0's view of the other nodes' heartbeats.
struct Beats {
    /// Per node: the last counter seen and when it last changed.
    seen: Vec<(Option<Vec<u8>>, Instant)>,
}

impl Beats {
    fn new(nnodes: usize) -> Beats {
        Beats {
            seen: vec![(None, Instant::now()); nnodes],
        }
    }

    fn update(&mut self, node: usize, value: Option<Vec<u8>>, now: Instant) {
        let entry = &mut self.seen[node];
        if entry.0 != value {
            *entry = (value, now);
        }
    }

    /// A node other than 0 whose heartbeat stood still for longer than `limit`.
    fn stale(&self, now: Instant, limit: Duration) -> Option<usize> {
        (1..self.seen.len()).find(|&n| now.duration_since(self.seen[n].1) > limit)
    }
}

/// One round on this node.
pub struct Round<'a> {
    /// The launch.
    pub config: &'a Config,
    /// The store.
    pub store: &'a mut Store,
    /// Where output goes.
    pub sink: &'a Sink,
    /// The launcher's signals.
    pub signals: &'a mut Signals,
    /// This machine's name, for failure notices.
    pub host: &'a str,
    /// What is the same for every local rank.
    pub env: NodeEnv<'a>,
    /// Nodes node 0 found lost (added to here).
    pub lost_nodes: &'a mut Vec<usize>,
}

impl Round<'_> {
    fn k(&self) -> u32 {
        self.env.round
    }

    fn me(&self) -> usize {
        self.config.node_rank
    }

    /// Runs the round to its end.
    pub async fn run(mut self) -> Ending {
        let mut ranks = Ranks::default();
        let logs = match self.open_logs().await {
            Ok(l) => l,
            Err(why) => return self.cannot_start(why, &mut ranks).await,
        };
        let program = Program {
            program: &self.config.program,
            args: &self.config.args,
        };
        for local in 0..self.config.nproc_per_node {
            let vars = self.env.for_rank(local);
            let global = self.env.world.base_rank + local;
            let log = logs.get(local).cloned();
            if let Err(why) = ranks.spawn(&program, local, global, &vars, self.sink, log) {
                return self.cannot_start(why, &mut ranks).await;
            }
        }
        self.supervise(&mut ranks).await
    }

    /// Opens (appends to) each local rank's log file and writes the attempt header.
    async fn open_logs(&self) -> Result<Vec<LogFile>, String> {
        let Some(dir) = &self.config.log_dir else {
            return Ok(Vec::new());
        };
        let mut files = Vec::new();
        for local in 0..self.config.nproc_per_node {
            let path = dir.join(format!("rank_{}.log", self.env.world.base_rank + local));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open the log file {}: {e}; check --log-dir", path.display()))?;
            let file: LogFile = Arc::new(file);
            self.sink
                .log_only(&file, format!("== nabla-launch attempt {} ==", self.k()))
                .await;
            files.push(file);
        }
        Ok(files)
    }

    /// A rank could not be started: stop the others, tell the other nodes, exit 2.
    async fn cannot_start(&mut self, why: String, ranks: &mut Ranks) -> Ending {
        self.sink.note(format!("nabla-launch: {why}")).await;
        let notice = format!("node {} could not start its ranks: {why}", self.me());
        let k = self.k();
        let _ = self.store.post_failure(k, &notice, true).await;
        self.stop(ranks, libc::SIGTERM).await;
        Ending::Setup(why)
    }

    /// Watches the running ranks until the round ends.
    async fn supervise(&mut self, ranks: &mut Ranks) -> Ending {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beats = Beats::new(self.config.nnodes);
        let mut next_beat = Instant::now() + BEAT_EVERY;
        loop {
            tokio::select! {
                sig = self.signals.recv() => return self.on_signal(sig, ranks).await,
                (local, exit) = ranks.next_exit() => {
                    ranks.record(local, exit.clone());
                    if !exit.success() {
                        return self.on_rank_failure(local, exit, ranks).await;
                    }
                    if ranks.running() == 0 {
                        break;
                    }
                }
                _ = tick.tick() => match self.watch(&mut beats, &mut next_beat).await {
                    Ok(None) => {}
                    Ok(Some(seen)) => return self.on_seen(seen, ranks).await,
                    Err(e) => return self.on_lost(e, ranks).await,
                },
            }
        }
        ranks.drain_output(Instant::now() + DRAIN_OUTPUT).await;
        self.finish(&mut beats, &mut next_beat).await
    }

    /// One look at the store: the failure notice, and the heartbeats when one is due.
    async fn watch(&mut self, beats: &mut Beats, next_beat: &mut Instant) -> Result<Option<Seen>, StoreError> {
        let k = self.k();
        if let Some(v) = self.store.client().try_get(&keys::failed(k)).await? {
            return Ok(Some(Seen::Failure(String::from_utf8_lossy(&v).into_owned())));
        }
        let now = Instant::now();
        if now < *next_beat {
            return Ok(None);
        }
        *next_beat = now + BEAT_EVERY;
        let me = self.me();
        if me != 0 {
            self.store.client().add(&keys::beat(k, me), 1).await?;
            return Ok(None);
        }
        for n in 1..self.config.nnodes {
            let v = self.store.client().try_get(&keys::beat(k, n)).await?;
            beats.update(n, v, Instant::now());
        }
        Ok(beats
            .stale(Instant::now(), self.config.node_timeout)
            .map(Seen::NodeLost))
    }

    /// Whether a restart may follow a failure (the job was not marked aborted).
    async fn restartable(&mut self) -> Result<bool, StoreError> {
        Ok(!self.store.aborted().await?)
    }

    async fn on_rank_failure(&mut self, local: usize, exit: RankExit, ranks: &mut Ranks) -> Ending {
        let global = self.env.world.base_rank + local;
        let mut notice = format!(
            "rank {global} (local rank {local} on node {}, host {}) {}",
            self.me(),
            self.host,
            exit.describe()
        );
        // Ranks whose collectives failed because this one went away exit a moment later, and
        // two exits can reach the launcher in either order: name every rank that failed
        // within a short window, first seen first, so the root cause is always in the notice.
        let settle_until = Instant::now() + SETTLE;
        let mut also = Vec::new();
        while ranks.running() > 0 {
            tokio::select! {
                (other, e) = ranks.next_exit() => {
                    ranks.record(other, e.clone());
                    if !e.success() {
                        also.push(format!("rank {} {}", self.env.world.base_rank + other, e.describe()));
                    }
                }
                _ = tokio::time::sleep_until(settle_until) => break,
            }
        }
        if !also.is_empty() {
            notice.push_str(&format!(
                "; within {} ms, also {} (often a consequence: their collectives fail when a peer goes away)",
                SETTLE.as_millis(),
                also.join(", ")
            ));
        }
        self.sink.note(format!("nabla-launch: {notice}")).await;
        let k = self.k();
        let posted = self.store.post_failure(k, &notice, false).await;
        if let Some(sig) = self.stop(ranks, libc::SIGTERM).await {
            return self.signalled_while_stopping(sig).await;
        }
        let winner = match posted {
            Ok(w) => w,
            Err(e) => return Ending::Lost(self.store.lost(&e)),
        };
        match self.restartable().await {
            Ok(restartable) => Ending::Failed {
                notice: winner,
                restartable,
            },
            Err(e) => Ending::Lost(self.store.lost(&e)),
        }
    }

    async fn on_seen(&mut self, seen: Seen, ranks: &mut Ranks) -> Ending {
        let notice = match seen {
            Seen::Failure(notice) => {
                let line = if ranks.running() > 0 {
                    format!("nabla-launch: stopping the ranks on node {}: {notice}", self.me())
                } else {
                    format!(
                        "nabla-launch: the ranks on node {} had finished, but: {notice}",
                        self.me()
                    )
                };
                self.sink.note(line).await;
                notice
            }
            Seen::NodeLost(n) => {
                let notice = format!(
                    "node {n}'s launcher stopped answering the store (no heartbeat for {:.1} s); its ranks are \
                     presumed gone",
                    self.config.node_timeout.as_secs_f64()
                );
                self.sink.note(format!("nabla-launch: {notice}")).await;
                self.lost_nodes.push(n);
                let k = self.k();
                match self.store.post_failure(k, &notice, true).await {
                    Ok(w) => w,
                    Err(e) => {
                        self.stop(ranks, libc::SIGTERM).await;
                        return Ending::Lost(self.store.lost(&e));
                    }
                }
            }
        };
        if let Some(sig) = self.stop(ranks, libc::SIGTERM).await {
            return self.signalled_while_stopping(sig).await;
        }
        match self.restartable().await {
            Ok(restartable) => Ending::Failed { notice, restartable },
            Err(e) => Ending::Lost(self.store.lost(&e)),
        }
    }

    /// The store went away: stop the ranks (the job's loop says why once they are gone).
    async fn on_lost(&mut self, e: StoreError, ranks: &mut Ranks) -> Ending {
        let why = self.store.lost(&e);
        self.stop(ranks, libc::SIGTERM).await;
        Ending::Lost(why)
    }

    /// Posts that this launcher got `sig`, so that every node stops without a restart.
    async fn post_signal(&mut self, sig: i32) {
        let notice = format!("node {}'s launcher got {}", self.me(), signal_name(sig));
        let k = self.k();
        let _ = self.store.post_failure(k, &notice, true).await;
    }

    async fn on_signal(&mut self, sig: i32, ranks: &mut Ranks) -> Ending {
        self.sink
            .note(format!(
                "nabla-launch: got {}; passing it to the ranks on node {} (SIGKILL after {:.1} s)",
                signal_name(sig),
                self.me(),
                self.config.grace.as_secs_f64()
            ))
            .await;
        self.post_signal(sig).await;
        self.stop(ranks, sig).await;
        Ending::Signal(sig)
    }

    /// A signal came while the ranks were being stopped for a failure: no restart.
    async fn signalled_while_stopping(&mut self, sig: i32) -> Ending {
        self.post_signal(sig).await;
        Ending::Signal(sig)
    }

    /// Stops every local rank: `sig` to each rank's process group, SIGKILL once they are gone or
    /// after the grace period (at once on a signal to the launcher, which is returned).
    async fn stop(&mut self, ranks: &mut Ranks, sig: i32) -> Option<i32> {
        let mut got = None;
        ranks.signal_all(sig);
        let deadline = Instant::now() + self.config.grace;
        while ranks.running() > 0 {
            tokio::select! {
                (local, exit) = ranks.next_exit() => ranks.record(local, exit),
                _ = tokio::time::sleep_until(deadline) => {
                    self.sink
                        .note(format!(
                            "nabla-launch: {} rank(s) on node {} still running {:.1} s after {}; sending SIGKILL",
                            ranks.running(),
                            self.me(),
                            self.config.grace.as_secs_f64(),
                            signal_name(sig)
                        ))
                        .await;
                    break;
                }
                s = self.signals.recv() => {
                    self.sink
                        .note(format!("nabla-launch: got {} while stopping the ranks; sending SIGKILL now", signal_name(s)))
                        .await;
                    got = Some(s);
                    break;
                }
            }
        }
        // Also to the groups of ranks that already ended, for whatever they left running.
        ranks.signal_all(libc::SIGKILL);
        let deadline = Instant::now() + AFTER_SIGKILL;
        while ranks.running() > 0 {
            tokio::select! {
                (local, exit) = ranks.next_exit() => ranks.record(local, exit),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        ranks.drain_output(Instant::now() + DRAIN_OUTPUT).await;
        got
    }

    /// Every local rank exited 0: say so, then wait until every node's ranks did (or the round
    /// failed elsewhere).
    async fn finish(&mut self, beats: &mut Beats, next_beat: &mut Instant) -> Ending {
        let (k, me) = (self.k(), self.me());
        if let Err(e) = self.store.client().set(&keys::done(k, me), b"1").await {
            return Ending::Lost(self.store.lost(&e));
        }
        let names: Vec<String> = (0..self.config.nnodes).map(|n| keys::done(k, n)).collect();
        loop {
            if let Some(sig) = self.signals.pending() {
                self.sink
                    .note(format!(
                        "nabla-launch: got {}; the ranks on node {} had already finished",
                        signal_name(sig),
                        self.me()
                    ))
                    .await;
                self.post_signal(sig).await;
                return Ending::Signal(sig);
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            match self.store.client().wait_within(&refs, POLL).await {
                Ok(()) => return Ending::Success,
                Err(StoreError::Timeout(_)) => {}
                Err(e) => return Ending::Lost(self.store.lost(&e)),
            }
            match self.watch(beats, next_beat).await {
                Ok(None) => {}
                Ok(Some(seen)) => {
                    let mut none = Ranks::default();
                    return self.on_seen(seen, &mut none).await;
                }
                Err(e) => return Ending::Lost(self.store.lost(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_that_stands_still_is_stale() {
        let mut beats = Beats::new(3);
        let t0 = Instant::now();
        beats.update(1, Some(b"1".to_vec()), t0);
        beats.update(2, Some(b"1".to_vec()), t0);
        let t1 = t0 + Duration::from_secs(5);
        beats.update(1, Some(b"6".to_vec()), t1);
        beats.update(2, Some(b"1".to_vec()), t1);
        assert_eq!(beats.stale(t1, Duration::from_secs(10)), None);
        assert_eq!(beats.stale(t1, Duration::from_secs(3)), Some(2));
    }
}
