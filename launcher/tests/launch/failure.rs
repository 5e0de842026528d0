//! A failing rank brings the others down fast; restarts run the group again.

use std::time::Duration;

use crate::common::{all_gone, run_in, scratch, values};

/// Rank 1 waits until the others are up (each touched `up_RANK`), then does `$FAIL`; the others
/// print their pid and sleep 60 s.
fn one_fails(how: &str) -> String {
    format!(
        r#"if [ "$RANK" = 1 ]; then
             while [ ! -e up_0 ] || [ ! -e up_2 ]; do sleep 0.02; done
             {how}
           fi
           echo "pid=$$"; touch up_$RANK; exec sleep 60"#
    )
}

fn assert_failed_fast(name: &str, how: &str, expect: &str) {
    let dir = scratch(name);
    let script = one_fails(how);
    let ended = run_in(
        &dir,
        &["--nproc-per-node", "3", "--", "sh", "-c", &script],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(1), "{ended:?}");
    assert!(ended.took < Duration::from_secs(10), "took {:?}", ended.took);
    assert!(
        ended
            .err
            .contains("nabla-launch: rank 1 (local rank 1 on node 0, host ")
            && ended.err.contains(expect),
        "{}",
        ended.err
    );
    let last = ended.err.lines().last().unwrap();
    assert!(
        last.contains("the job failed: rank 1") && last.contains(expect),
        "{last}"
    );
    let pids = values(&ended.out, "pid");
    assert_eq!(pids.len(), 2, "{}", ended.out);
    assert!(all_gone(&pids, Duration::from_secs(2)), "ranks {pids:?} still run");
}

#[test]
fn a_rank_that_exits_3_stops_the_sleeping_ranks() {
    // Default grace period: the sleeping ranks obey SIGTERM, so this is fast anyway.
    assert_failed_fast("exit3", "exit 3", "exited with status 3");
}

#[test]
fn a_rank_killed_by_sigkill_stops_the_others() {
    assert_failed_fast("kill9", "kill -9 $$", "was killed by signal SIGKILL (9)");
}

#[test]
fn ranks_that_ignore_sigterm_get_sigkill_after_the_grace_period() {
    let dir = scratch("grace");
    let script = r#"if [ "$RANK" = 1 ]; then while [ ! -e up ]; do sleep 0.02; done; exit 2; fi
                    trap '' TERM; echo "pid=$$"; touch up; while :; do sleep 0.05; done"#;
    let ended = run_in(
        &dir,
        &["--nproc-per-node", "2", "--grace-period", "1", "--", "sh", "-c", script],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(1), "{ended:?}");
    assert!(
        ended.err.contains("still running 1.0 s after SIGTERM; sending SIGKILL"),
        "{}",
        ended.err
    );
    assert!(
        ended.took >= Duration::from_secs(1) && ended.took < Duration::from_secs(8),
        "took {:?}",
        ended.took
    );
    assert!(all_gone(&values(&ended.out, "pid"), Duration::from_secs(2)));
}

#[test]
fn a_restart_runs_the_group_again_with_the_next_restart_count() {
    let dir = scratch("restart");
    let script = r#"echo "attempt=$NABLA_RESTART_COUNT run=$NABLA_RUN_ID"
                    if [ "$RANK" = 1 ] && [ "$NABLA_RESTART_COUNT" = 0 ]; then exit 1; fi"#;
    let ended = run_in(
        &dir,
        &[
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
            script,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    assert!(
        ended
            .err
            .contains("nabla-launch: restarting the group (restart 1 of 1)"),
        "{}",
        ended.err
    );
    assert!(ended.out.contains("[rank 1] attempt=0 run=0"), "{}", ended.out);
    assert!(ended.out.contains("[rank 0] attempt=1 run=1"), "{}", ended.out);
    assert!(ended.out.contains("[rank 1] attempt=1 run=1"), "{}", ended.out);
    assert!(!ended.out.contains("attempt=2"), "{}", ended.out);
}

#[test]
fn when_no_restart_is_left_the_launcher_exits_1_naming_the_rank() {
    let dir = scratch("norestart");
    // Rank 0 fails each time, once rank 1 has printed.
    let script = r#"echo "attempt=$NABLA_RESTART_COUNT"
                    if [ "$RANK" = 0 ]; then while [ ! -e up_$NABLA_RESTART_COUNT ]; do sleep 0.02; done; exit 1; fi
                    touch up_$NABLA_RESTART_COUNT"#;
    let ended = run_in(
        &dir,
        &[
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "2",
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
            script,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(1), "{ended:?}");
    let mut attempts = values(&ended.out, "attempt");
    attempts.sort();
    assert_eq!(attempts, [0, 0, 1, 1, 2, 2], "{}", ended.out);
    let last = ended.err.lines().last().unwrap();
    assert!(
        last.contains("the job failed: rank 0 (local rank 0 on node 0") && last.contains("--max-restarts 2"),
        "{last}"
    );
}

#[test]
fn a_program_that_cannot_start_is_a_setup_error_naming_it() {
    let dir = scratch("noprog");
    let ended = run_in(
        &dir,
        &["--nproc-per-node", "2", "--", "./no-such-program"],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(2), "{ended:?}");
    assert!(ended.err.contains("cannot start `./no-such-program`"), "{}", ended.err);
}
