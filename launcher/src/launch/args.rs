//! The command line: clap parses it, then [`parse`] checks what clap cannot (ranges, flags that
//! need each other) with messages that name the flag, the value and what to do.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The master port when none is given and there is more than one node (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// The most ranks one node may run: more is surely a typo, and would start that many processes.
pub const MAX_NPROC_PER_NODE: usize = 4096;

const AFTER_HELP: &str = "\
Each rank gets the launcher's environment plus RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
NODE_RANK, NNODES, MASTER_ADDR, MASTER_PORT, NABLA_RESTART_COUNT, NABLA_RUN_ID, NABLA_RDZV_TOKEN
and NABLA_NUM_THREADS (unless already set). Exit status: 0 success, 1 a rank failed, 2 a usage or
setup error, 128+N when the launcher got signal N.

Examples:
  nabla-launch --nproc-per-node 4 -- ./train --epochs 3
  nabla-launch --new-token-file job.token     # then copy job.token to every node (mode 600)
  nabla-launch --nnodes 2 --node-rank 0 --master-addr node0 --rdzv-token-file job.token \\
               --nproc-per-node 8 -- ./train";

/// What clap parses; [`parse`] turns it into a checked [`Config`].
#[derive(Parser, Debug)]
#[command(
    name = "nabla-launch",
    version,
    about = "Starts the ranks of a data-parallel nabla-rs job on this node, and restarts or stops them together.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Ranks (processes) to start on this node.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes (launchers) in the job.
    #[arg(long, value_name = "M", default_value_t = 1)]
    nnodes: usize,
    /// This node's index, 0 to M-1. Node 0 serves the rendezvous store.
    #[arg(long, value_name = "R", default_value_t = 0)]
    node_rank: usize,
    /// Node 0's address: node 0's store listens on exactly this address.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    master_addr: String,
    /// The store's port [default: 29500; with --nnodes 1, a free port]
    #[arg(long, value_name = "PORT")]
    master_port: Option<u16>,
    /// How many times the whole group may be restarted after a rank fails.
    #[arg(long, value_name = "K", default_value_t = 0)]
    max_restarts: u32,
    /// Also write each rank's output to DIR/rank_R.log (appended).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// The job's secret token (mode 600); needed with --nnodes > 1.
    #[arg(long, value_name = "FILE")]
    rdzv_token_file: Option<PathBuf>,
    /// Seconds the ranks get to exit after SIGTERM before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, allow_negative_numbers = true)]
    grace_period: f64,
    /// Seconds to wait for the store and for every node at each rendezvous.
    #[arg(long, value_name = "SECS", default_value_t = 300.0, allow_negative_numbers = true)]
    rdzv_timeout: f64,
    /// Seconds without a heartbeat after which node 0 declares another node's launcher lost.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, allow_negative_numbers = true)]
    node_timeout: f64,
    /// Write a fresh token to FILE (mode 600) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "program")]
    new_token_file: Option<PathBuf>,
    /// The program each rank runs, and its arguments (after `--`).
    #[arg(value_name = "PROGRAM", trailing_var_arg = true, num_args = 1..)]
    program: Vec<OsString>,
}

/// A checked launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Ranks on this node (at least 1).
    pub nproc_per_node: usize,
    /// Nodes in the job (at least 1).
    pub nnodes: usize,
    /// This node's index, below `nnodes`.
    pub node_rank: usize,
    /// Node 0's address, as given (the ranks' MASTER_ADDR).
    pub master_addr: String,
    /// The port node 0's store binds; 0 (only with one node) picks a free one.
    pub master_port: u16,
    /// Group restarts allowed after failures.
    pub max_restarts: u32,
    /// Where each rank's output also goes, when given.
    pub log_dir: Option<PathBuf>,
    /// The token file, when given.
    pub token_file: Option<PathBuf>,
    /// How long the ranks get between SIGTERM (or the forwarded signal) and SIGKILL.
    pub grace: Duration,
    /// How long to wait for the store and for the other nodes at a rendezvous.
    pub rdzv_timeout: Duration,
    /// How long node 0 waits for a heartbeat of another node's launcher before declaring it lost.
    pub node_timeout: Duration,
    /// The program the ranks run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a job.
    Launch(Config),
    /// Write a fresh token to this file and exit.
    NewToken(PathBuf),
    /// Print `text` (help, version) to stdout and exit 0.
    Print(String),
}

/// A usage error: the message (without the `nabla-launch: ` prefix) to print before exiting 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration, UsageError> {
    let bad = |why: &str| {
        Err(UsageError(format!(
            "--{flag} {value}: {why}; give a number of seconds such as --{flag} 5"
        )))
    };
    if !value.is_finite() || value < 0.0 {
        return bad("not a duration");
    }
    if value == 0.0 && !zero_ok {
        return bad("must be more than 0");
    }
    Duration::try_from_secs_f64(value).or_else(|_| bad("too long"))
}

/// Parses and checks the command line (`args` includes the program name, as `std::env::args_os`).
pub fn parse<I, T>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let text = e.render().to_string();
            let text = text.trim_end().strip_prefix("error: ").unwrap_or(text.trim_end());
            return Err(UsageError(text.to_string()));
        }
        Err(e) => return Ok(Invocation::Print(e.render().to_string())),
    };
    if let Some(path) = cli.new_token_file {
        return Ok(Invocation::NewToken(path));
    }
    check(cli).map(Invocation::Launch)
}

fn check(cli: Cli) -> Result<Config, UsageError> {
    let usage = |m: String| Err(UsageError(m));
    if cli.nproc_per_node == 0 {
        return usage("--nproc-per-node 0: a node runs at least one rank; give --nproc-per-node 1 or more".into());
    }
    if cli.nproc_per_node > MAX_NPROC_PER_NODE {
        return usage(format!(
            "--nproc-per-node {}: more than {MAX_NPROC_PER_NODE} ranks on one node is surely a typo; give the number \
             of ranks this node should run (usually its GPU or socket count)",
            cli.nproc_per_node
        ));
    }
    if cli.nnodes == 0 {
        return usage("--nnodes 0: a job has at least one node; give --nnodes 1 or more".into());
    }
    if cli.node_rank >= cli.nnodes {
        return usage(format!(
            "--node-rank {} is not below --nnodes {}: node ranks run from 0 to {}; give each node's launcher its own \
             --node-rank in that range",
            cli.node_rank,
            cli.nnodes,
            cli.nnodes - 1
        ));
    }
    if cli.master_addr.trim().is_empty() {
        return usage(
            "--master-addr is empty: give node 0's host name or IP address (default 127.0.0.1 for one node)".into(),
        );
    }
    let master_port = match (cli.master_port, cli.nnodes) {
        (Some(0), n) if n > 1 => {
            return usage(format!(
                "--master-port 0 picks a free port, which the other nodes cannot know; with --nnodes {n} give a fixed \
                 port that every launcher uses (for example --master-port {DEFAULT_MASTER_PORT})"
            ));
        }
        (Some(p), _) => p,
        (None, 1) => 0,
        (None, _) => DEFAULT_MASTER_PORT,
    };
    if cli.nnodes > 1 && cli.rdzv_token_file.is_none() {
        return usage(format!(
            "--nnodes {} needs --rdzv-token-file FILE: every node's launcher must hold the job's secret token. Create \
             one with `nabla-launch --new-token-file FILE`, copy FILE to every node (keep it mode 600: `chmod 600 \
             FILE`) and pass --rdzv-token-file FILE to every launcher",
            cli.nnodes
        ));
    }
    let grace = seconds("grace-period", cli.grace_period, true)?;
    let rdzv_timeout = seconds("rdzv-timeout", cli.rdzv_timeout, false)?;
    let node_timeout = seconds("node-timeout", cli.node_timeout, false)?;
    let mut program = cli.program.into_iter();
    let Some(first) = program.next() else {
        return usage(
            "no program given: put the program the ranks run and its arguments after `--`, for example \
             `nabla-launch --nproc-per-node 2 -- ./train --epochs 3`"
                .into(),
        );
    };
    if first.is_empty() {
        return usage("the program is an empty string: give the program the ranks run after `--`".into());
    }
    Ok(Config {
        nproc_per_node: cli.nproc_per_node,
        nnodes: cli.nnodes,
        node_rank: cli.node_rank,
        master_addr: cli.master_addr,
        master_port,
        max_restarts: cli.max_restarts,
        log_dir: cli.log_dir,
        token_file: cli.rdzv_token_file,
        grace,
        rdzv_timeout,
        node_timeout,
        program: first,
        args: program.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(args: &[&str]) -> Config {
        let mut all = vec!["nabla-launch"];
        all.extend_from_slice(args);
        match parse(all) {
            Ok(Invocation::Launch(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        let mut all = vec!["nabla-launch"];
        all.extend_from_slice(args);
        match parse(all) {
            Err(UsageError(m)) => m,
            other => panic!("{args:?} should be a usage error: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_the_program_after_the_double_dash() {
        let c = launch(&["--", "sh", "-c", "echo hi", "--nnodes", "5"]);
        assert_eq!((c.nproc_per_node, c.nnodes, c.node_rank), (1, 1, 0));
        assert_eq!(c.master_addr, "127.0.0.1");
        assert_eq!(c.master_port, 0, "one node and no port: a free port");
        assert_eq!(c.max_restarts, 0);
        assert_eq!(c.grace, Duration::from_secs(5));
        assert_eq!(c.rdzv_timeout, Duration::from_secs(300));
        assert_eq!(c.program, "sh");
        assert_eq!(
            c.args,
            ["-c", "echo hi", "--nnodes", "5"],
            "flags after the program are its own"
        );
    }

    #[test]
    fn the_program_may_come_without_the_double_dash() {
        let c = launch(&["--nproc-per-node", "3", "python", "-u", "train.py"]);
        assert_eq!(c.nproc_per_node, 3);
        assert_eq!(c.program, "python");
        assert_eq!(c.args, ["-u", "train.py"]);
    }

    #[test]
    fn several_nodes_default_to_port_29500_and_keep_a_given_port() {
        let c = launch(&["--nnodes", "2", "--rdzv-token-file", "t", "--", "true"]);
        assert_eq!(c.master_port, DEFAULT_MASTER_PORT);
        let c = launch(&["--master-port", "1234", "--grace-period", "0.5", "--", "true"]);
        assert_eq!(c.master_port, 1234);
        assert_eq!(c.grace, Duration::from_millis(500));
    }

    #[test]
    fn usage_errors_name_the_flag_the_value_and_what_to_do() {
        let e = error(&["--nnodes", "2", "--", "true"]);
        assert!(
            e.contains("--rdzv-token-file") && e.contains("nabla-launch --new-token-file"),
            "{e}"
        );
        let e = error(&[
            "--nnodes",
            "2",
            "--node-rank",
            "2",
            "--rdzv-token-file",
            "t",
            "--",
            "true",
        ]);
        assert!(
            e.contains("--node-rank 2 is not below --nnodes 2") && e.contains("0 to 1"),
            "{e}"
        );
        let e = error(&["--nproc-per-node", "0", "--", "true"]);
        assert!(e.contains("--nproc-per-node 0"), "{e}");
        let e = error(&["--nproc-per-node", "3"]);
        assert!(e.contains("no program given") && e.contains("after `--`"), "{e}");
        let e = error(&["--grace-period", "-1", "--", "true"]);
        assert!(e.contains("--grace-period"), "{e}");
        let e = error(&["--rdzv-timeout", "0", "--", "true"]);
        assert!(e.contains("--rdzv-timeout 0") && e.contains("more than 0"), "{e}");
        let e = error(&["--grace-period", "NaN", "--", "true"]);
        assert!(e.contains("--grace-period NaN"), "{e}");
        let e = error(&[
            "--nnodes",
            "2",
            "--master-port",
            "0",
            "--rdzv-token-file",
            "t",
            "--",
            "true",
        ]);
        assert!(e.contains("--master-port 0") && e.contains("fixed"), "{e}");
        let e = error(&["--nproc-per-node", "x", "--", "true"]);
        assert!(e.contains("--nproc-per-node") && e.contains("'x'"), "{e}");
        let e = error(&["--bogus", "--", "true"]);
        assert!(e.contains("--bogus"), "{e}");
        let e = error(&["--new-token-file", "f", "--", "true"]);
        assert!(e.contains("--new-token-file"), "{e}");
    }

    #[test]
    fn new_token_file_and_help() {
        assert!(matches!(
            parse(["nabla-launch", "--new-token-file", "f"]),
            Ok(Invocation::NewToken(p)) if p == std::path::Path::new("f")
        ));
        match parse(["nabla-launch", "--help"]) {
            Ok(Invocation::Print(text)) => assert!(text.contains("--nproc-per-node") && text.contains("WORLD_SIZE")),
            other => panic!("{other:?}"),
        }
    }
}
