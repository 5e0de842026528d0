//! Two launchers on loopback: one world across them, a failure on one node stops the other,
//! and a launcher that disappears is noticed.

use std::path::Path;
use std::time::Duration;

use crate::common::{Run, all_gone, free_port, scratch, start_in, token_file, values};

fn node(dir: &Path, rank: usize, nproc: usize, port: u16, token: &Path, script: &str, extra: &[&str]) -> Run {
    let (rank, nproc, port) = (rank.to_string(), nproc.to_string(), port.to_string());
    let mut args = vec![
        "--nnodes",
        "2",
        "--node-rank",
        &rank,
        "--nproc-per-node",
        &nproc,
        "--master-port",
        &port,
        "--rdzv-token-file",
        token.to_str().unwrap(),
        "--rdzv-timeout",
        "30",
        "--grace-period",
        "1",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    start_in(dir, &args, &[])
}

#[test]
fn two_nodes_make_one_world_and_a_failure_on_node_1_stops_node_0() {
    let dir = scratch("nodes");
    let token = token_file(&dir);
    let port = free_port();

    // Different rank counts per node: node 0 runs rank 0, node 1 ranks 1 to 3.
    let script =
        r#"echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE NODE_RANK=$NODE_RANK LOCAL_RANK=$LOCAL_RANK PORT=$MASTER_PORT""#;
    let n1 = node(&dir, 1, 3, port, &token, script, &[]);
    let n0 = node(&dir, 0, 1, port, &token, script, &[]);
    let (e0, e1) = (n0.finish(Duration::from_secs(40)), n1.finish(Duration::from_secs(40)));
    assert_eq!((e0.code(), e1.code()), (Some(0), Some(0)), "{e0:?}\n{e1:?}");
    assert_eq!(values(&e0.out, "RANK"), [0]);
    let mut ranks = values(&e1.out, "RANK");
    ranks.sort();
    assert_eq!(ranks, [1, 2, 3]);
    assert_eq!(values(&format!("{}{}", e0.out, e1.out), "WORLD_SIZE"), [4; 4]);
    assert_eq!(values(&e1.out, "NODE_RANK"), [1; 3]);
    assert_eq!(values(&e1.out, "PORT"), [port as i32; 3]);
    for line in e1.out.lines() {
        let rank = values(line, "RANK")[0];
        assert!(line.starts_with(&format!("[rank {rank}] ")), "{line}");
    }

    // Rank 3 (on node 1) exits 5 once every other rank is up; node 0's ranks sleep.
    let script = r#"if [ "$RANK" = 3 ]; then while [ ! -e up_0 ] || [ ! -e up_1 ] || [ ! -e up_2 ]; do sleep 0.02; done; exit 5; fi
                    echo "pid=$$"; touch up_$RANK; exec sleep 60"#;
    let n0 = node(&dir, 0, 2, port, &token, script, &[]);
    let n1 = node(&dir, 1, 2, port, &token, script, &[]);
    let (e0, e1) = (n0.finish(Duration::from_secs(40)), n1.finish(Duration::from_secs(40)));
    assert_eq!((e0.code(), e1.code()), (Some(1), Some(1)), "{e0:?}\n{e1:?}");
    assert!(e0.took < Duration::from_secs(10), "node 0 took {:?}", e0.took);
    let wanted = "rank 3 (local rank 1 on node 1, host ";
    assert!(
        e0.err.contains(&format!("stopping the ranks on node 0: {wanted}")),
        "{}",
        e0.err
    );
    let last = e0.err.lines().last().unwrap();
    assert!(last.contains(wanted) && last.contains("exited with status 5"), "{last}");
    assert!(e1.err.contains(&format!("nabla-launch: {wanted}")), "{}", e1.err);
    let pids = [values(&e0.out, "pid"), values(&e1.out, "pid")].concat();
    assert_eq!(pids.len(), 3);
    assert!(all_gone(&pids, Duration::from_secs(2)), "ranks {pids:?} still run");
}

#[test]
fn a_node_whose_launcher_dies_is_declared_lost_and_its_ranks_die_with_it() {
    let dir = scratch("lostnode");
    let token = token_file(&dir);
    let port = free_port();
    let script = r#"echo "pid=$$"; exec sleep 60"#;
    let n0 = node(&dir, 0, 1, port, &token, script, &["--node-timeout", "2"]);
    let n1 = node(&dir, 1, 1, port, &token, script, &[]);
    n0.wait_for_lines("pid=", 1, Duration::from_secs(30));
    n1.wait_for_lines("pid=", 1, Duration::from_secs(30));
    let node1_rank = values(&n1.stdout(), "pid");
    n1.signal(libc::SIGKILL);
    // Linux kills the ranks of a launcher that dies.
    assert!(
        all_gone(&node1_rank, Duration::from_secs(5)),
        "node 1's rank outlived its launcher"
    );
    let e0 = n0.finish(Duration::from_secs(30));
    assert_eq!(e0.code(), Some(1), "{e0:?}");
    assert!(
        e0.err.contains("node 1's launcher stopped answering the store"),
        "{}",
        e0.err
    );
    assert!(all_gone(&values(&e0.out, "pid"), Duration::from_secs(2)));
    drop(n1);
}

#[test]
fn node_1_stops_its_ranks_when_node_0s_store_goes_away() {
    let dir = scratch("loststore");
    let token = token_file(&dir);
    let port = free_port();
    let script = r#"echo "pid=$$"; exec sleep 60"#;
    let n0 = node(&dir, 0, 1, port, &token, script, &[]);
    let n1 = node(&dir, 1, 2, port, &token, script, &[]);
    n0.wait_for_lines("pid=", 1, Duration::from_secs(30));
    n1.wait_for_lines("pid=", 2, Duration::from_secs(30));
    n0.signal(libc::SIGKILL);
    let e1 = n1.finish(Duration::from_secs(15));
    assert_eq!(e1.code(), Some(1), "{e1:?}");
    assert!(
        e1.err
            .contains(&format!("node 0's store at 127.0.0.1:{port} went away")),
        "{}",
        e1.err
    );
    assert!(all_gone(&values(&e1.out, "pid"), Duration::from_secs(2)));
    drop(n0);
}

#[test]
fn a_restart_runs_every_node_again_even_one_whose_ranks_had_finished() {
    let dir = scratch("noderestart");
    let token = token_file(&dir);
    let port = free_port();
    // Node 0's rank ends at once; rank 1 (node 1) fails on attempt 0, after node 0's rank ended.
    let script = r#"echo "attempt=$NABLA_RESTART_COUNT"
                    if [ "$RANK" = 0 ]; then touch "finished_$NABLA_RESTART_COUNT"; exit 0; fi
                    while [ ! -e "finished_$NABLA_RESTART_COUNT" ]; do sleep 0.02; done
                    sleep 0.3; [ "$NABLA_RESTART_COUNT" != 0 ]"#;
    let n0 = node(&dir, 0, 1, port, &token, script, &["--max-restarts", "1"]);
    let n1 = node(&dir, 1, 1, port, &token, script, &["--max-restarts", "1"]);
    let (e0, e1) = (n0.finish(Duration::from_secs(40)), n1.finish(Duration::from_secs(40)));
    assert_eq!((e0.code(), e1.code()), (Some(0), Some(0)), "{e0:?}\n{e1:?}");
    assert_eq!(values(&e0.out, "attempt"), [0, 1], "{e0:?}");
    assert_eq!(values(&e1.out, "attempt"), [0, 1], "{e1:?}");
    assert!(
        e0.err
            .contains("the ranks on node 0 had finished, but: rank 1 (local rank 0 on node 1"),
        "{}",
        e0.err
    );
    for e in [&e0, &e1] {
        assert!(e.err.contains("restarting the group (restart 1 of 1)"), "{}", e.err);
    }
}

#[test]
fn nodes_started_with_different_flags_stop_with_a_message() {
    let dir = scratch("mismatch");
    let token = token_file(&dir);
    let port = free_port();
    let n0 = node(&dir, 0, 1, port, &token, "true", &[]);
    let n1 = node(&dir, 1, 1, port, &token, "true", &["--max-restarts", "3"]);
    let (e0, e1) = (n0.finish(Duration::from_secs(40)), n1.finish(Duration::from_secs(40)));
    assert_eq!(e1.code(), Some(2), "{e1:?}");
    assert!(
        e1.err
            .contains("node 1 was started with nnodes=2 max_restarts=3 but node 0 with nnodes=2 max_restarts=0"),
        "{}",
        e1.err
    );
    assert_eq!(e0.code(), Some(1), "{e0:?}");
    assert!(
        e0.err.contains("the job was stopped: node 1 was started with"),
        "{}",
        e0.err
    );
}
