//! The store keys the launchers share. Everything about round `k` (the `k`-th start of the group,
//! 0 first) lives under `launch/{k}/`, so a restart starts from fresh keys.

/// What node 0's launcher was started with (`nnodes=M max_restarts=K`); every launcher checks it
/// against its own flags.
pub const CONFIG: &str = "launch/config";

/// Set (to the reason) when the job must end without a restart: a launcher got a signal, a
/// program could not be started, a node was lost. Set before `failed`, so whoever sees a round's
/// failure notice also sees this.
pub const ABORT: &str = "launch/abort";

/// Claimed (compare-and-set from absent) by the launcher running as node `node`, so that two
/// launchers given the same `--node-rank` are caught.
pub fn claim(node: usize) -> String {
    format!("launch/claim/{node}")
}

/// Node `node`'s rank count in round `k` (decimal): its arrival at the round's rendezvous.
pub fn node(k: u32, node: usize) -> String {
    format!("launch/{k}/node/{node}")
}

/// The round's failure notice: the first failure wins (compare-and-set from absent).
pub fn failed(k: u32) -> String {
    format!("launch/{k}/failed")
}

/// Set when every rank of node `node` exited 0 in round `k`.
pub fn done(k: u32, node: usize) -> String {
    format!("launch/{k}/done/{node}")
}

/// Node `node`'s heartbeat counter in round `k` (an `add` every second).
pub fn beat(k: u32, node: usize) -> String {
    format!("launch/{k}/beat/{node}")
}

/// Set by node `node`'s launcher as it leaves the job after round `k`; node 0 keeps the store up
/// until every other node has left (or a time limit passed).
pub fn left(k: u32, node: usize) -> String {
    format!("launch/{k}/left/{node}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_keys_are_under_the_round() {
        assert_eq!(super::node(3, 1), "launch/3/node/1");
        assert_eq!(super::failed(0), "launch/0/failed");
        assert_eq!(super::done(2, 7), "launch/2/done/7");
        assert_eq!(super::left(0, 1), "launch/0/left/1");
    }
}
