//! The environment variables each rank gets on top of the launcher's own.

use crate::launch::args::Config;
use crate::launch::rendezvous::World;

/// The variable through which the ranks get the job's token (never a command-line argument,
/// which every user of the machine can read in `ps`).
pub const TOKEN_VAR: &str = "NABLA_RDZV_TOKEN";
/// The variable that sizes each rank's thread pool.
pub const THREADS_VAR: &str = "NABLA_NUM_THREADS";

/// Threads per rank when the launcher's environment does not set [`THREADS_VAR`]: the machine's
/// parallelism shared among the node's ranks, at least 1.
pub fn threads_per_rank(available: usize, nproc: usize) -> usize {
    (available / nproc.max(1)).max(1)
}

/// What is the same for every rank of a node and round.
#[derive(Clone, Debug)]
pub struct NodeEnv<'a> {
    /// The launch.
    pub config: &'a Config,
    /// The round's world.
    pub world: &'a World,
    /// The port the store really listens on.
    pub port: u16,
    /// The round (restart count).
    pub round: u32,
    /// The token's text.
    pub token: &'a str,
    /// `Some(n)`: set [`THREADS_VAR`] to n; `None`: the launcher's own value passes through.
    pub threads: Option<usize>,
}

impl NodeEnv<'_> {
    /// The variables of local rank `local`.
    pub fn for_rank(&self, local: usize) -> Vec<(&'static str, String)> {
        let c = self.config;
        let mut vars = vec![
            ("RANK", (self.world.base_rank + local).to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("WORLD_SIZE", self.world.size.to_string()),
            ("LOCAL_WORLD_SIZE", c.nproc_per_node.to_string()),
            ("NODE_RANK", c.node_rank.to_string()),
            ("NNODES", c.nnodes.to_string()),
            ("MASTER_ADDR", c.master_addr.clone()),
            ("MASTER_PORT", self.port.to_string()),
            ("NABLA_RESTART_COUNT", self.round.to_string()),
            ("NABLA_RUN_ID", self.round.to_string()),
            (TOKEN_VAR, self.token.to_string()),
        ];
        if let Some(n) = self.threads {
            vars.push((THREADS_VAR, n.to_string()));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::args::{Invocation, parse};

    #[test]
    fn threads_are_shared_and_at_least_one() {
        assert_eq!(threads_per_rank(16, 4), 4);
        assert_eq!(threads_per_rank(16, 3), 5);
        assert_eq!(threads_per_rank(2, 8), 1);
    }

    #[test]
    fn the_variables_of_a_rank_on_the_second_node() {
        let Ok(Invocation::Launch(config)) = parse([
            "nabla-launch",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "node0",
            "--rdzv-token-file",
            "t",
            "--",
            "true",
        ]) else {
            panic!()
        };
        let world = World {
            size: 5,
            base_rank: 3,
            counts: vec![3, 2],
        };
        let env = NodeEnv {
            config: &config,
            world: &world,
            port: 29500,
            round: 1,
            token: "secret",
            threads: None,
        };
        let vars = env.for_rank(1);
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RANK"), Some("4"));
        assert_eq!(get("LOCAL_RANK"), Some("1"));
        assert_eq!(get("WORLD_SIZE"), Some("5"));
        assert_eq!(get("LOCAL_WORLD_SIZE"), Some("2"));
        assert_eq!(get("NODE_RANK"), Some("1"));
        assert_eq!(get("MASTER_ADDR"), Some("node0"));
        assert_eq!(get("MASTER_PORT"), Some("29500"));
        assert_eq!(get("NABLA_RESTART_COUNT"), Some("1"));
        assert_eq!(get(TOKEN_VAR), Some("secret"));
        assert_eq!(get(THREADS_VAR), None, "passes through from the launcher");
    }
}
