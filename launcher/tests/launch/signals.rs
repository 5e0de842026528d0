//! SIGTERM and SIGINT to the launcher reach the ranks, and set its exit status.

use std::time::Duration;

use crate::common::{scratch, start_in};

/// Each rank traps `$1`, writes a marker file when it gets it, and says it is ready.
const TRAPPING: &str = r#"trap "echo got > got_$RANK; exit 0" $1
                          echo ready; while :; do sleep 0.05; done"#;

fn forwarded(sig: i32, name: &str, code: i32) {
    let dir = scratch(name);
    let run = start_in(
        &dir,
        &[
            "--nproc-per-node",
            "2",
            "--grace-period",
            "5",
            "--",
            "sh",
            "-c",
            TRAPPING,
            "sh",
            name.trim_start_matches("SIG"),
        ],
        &[],
    );
    run.wait_for_lines("ready", 2, Duration::from_secs(20));
    run.signal(sig);
    let ended = run.finish(Duration::from_secs(20));
    assert_eq!(ended.code(), Some(code), "{ended:?}");
    assert!(
        ended.took < Duration::from_secs(5) + Duration::from_secs(4),
        "{:?}",
        ended.took
    );
    for rank in 0..2 {
        assert!(
            dir.join(format!("got_{rank}")).exists(),
            "rank {rank} did not get {name}: {ended:?}"
        );
    }
    assert!(
        ended.err.contains(&format!("got {name}; passing it to the ranks")),
        "{}",
        ended.err
    );
}

#[test]
fn sigterm_reaches_the_ranks_and_the_launcher_exits_143() {
    forwarded(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn sigint_reaches_the_ranks_and_the_launcher_exits_130() {
    forwarded(libc::SIGINT, "SIGINT", 130);
}
