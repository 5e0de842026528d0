//! What the ranks get: their environment, and the token only there.

use std::time::Duration;

use crate::common::{scratch, start_in, values};

/// Each rank prints its variables, then waits for the test to look at its command line.
const PRINT_ENV: &str = r#"echo "pid=$$ RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE NODE_RANK=$NODE_RANK NNODES=$NNODES MASTER_PORT=$MASTER_PORT RESTART=$NABLA_RESTART_COUNT RUN_ID=$NABLA_RUN_ID THREADS=$NABLA_NUM_THREADS TOKEN=$NABLA_RDZV_TOKEN ADDR=$MASTER_ADDR"
i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done"#;

#[test]
fn three_ranks_get_their_environment_and_the_token_stays_off_command_lines() {
    let dir = scratch("env");
    let run = start_in(
        &dir,
        &[
            "--nproc-per-node",
            "3",
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
            PRINT_ENV,
        ],
        &[],
    );
    run.wait_for_lines("RANK=", 3, Duration::from_secs(20));
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");

    // Every line carries its rank's prefix, and each rank's own RANK.
    for line in &lines {
        let rank = values(line, " RANK")[0];
        assert!(line.starts_with(&format!("[rank {rank}] pid=")), "{line}");
    }
    let mut ranks = values(&out, " RANK");
    ranks.sort();
    assert_eq!(ranks, [0, 1, 2]);
    let mut locals = values(&out, "LOCAL_RANK");
    locals.sort();
    assert_eq!(locals, [0, 1, 2]);
    assert_eq!(values(&out, " WORLD_SIZE"), [3, 3, 3]);
    assert_eq!(values(&out, "LOCAL_WORLD_SIZE"), [3, 3, 3]);
    assert_eq!(values(&out, "NODE_RANK"), [0, 0, 0]);
    assert_eq!(values(&out, "NNODES"), [1, 1, 1]);
    assert_eq!(values(&out, "RESTART"), [0, 0, 0]);
    assert_eq!(values(&out, "RUN_ID"), [0, 0, 0]);
    assert!(lines.iter().all(|l| l.ends_with("ADDR=127.0.0.1")), "{out}");
    let threads = (std::thread::available_parallelism().unwrap().get() / 3).max(1) as i32;
    assert_eq!(values(&out, "THREADS"), [threads; 3]);

    // MASTER_PORT is the port the store really listens on (not 0): a TCP connect succeeds.
    let port = values(&out, "MASTER_PORT")[0];
    assert!(
        port > 0 && values(&out, "MASTER_PORT").iter().all(|&p| p == port),
        "{out}"
    );
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("nothing listens on MASTER_PORT");

    // The same 64-hex-character token for all, in no rank's (nor the launcher's) command line.
    let tokens: Vec<&str> = lines
        .iter()
        .map(|l| l.split("TOKEN=").nth(1).unwrap().split(' ').next().unwrap())
        .collect();
    assert!(
        tokens[0].len() == 64 && tokens[0].chars().all(|c| c.is_ascii_hexdigit()),
        "{out}"
    );
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    let mut pids = values(&out, "pid");
    pids.push(run.pid());
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.is_empty() && !cmdline.contains(tokens[0]),
            "pid {pid}: {cmdline}"
        );
    }

    std::fs::write(dir.join("go"), "").unwrap();
    let ended = run.finish(Duration::from_secs(20));
    assert_eq!(ended.code(), Some(0), "{ended:?}");
}

#[test]
fn nabla_num_threads_passes_through_when_set() {
    let dir = scratch("threads");
    let ended = start_in(
        &dir,
        &[
            "--nproc-per-node",
            "2",
            "--",
            "sh",
            "-c",
            "echo THREADS=$NABLA_NUM_THREADS",
        ],
        &[("NABLA_NUM_THREADS", "7")],
    )
    .finish(Duration::from_secs(20));
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    assert_eq!(values(&ended.out, "THREADS"), [7, 7]);
}
