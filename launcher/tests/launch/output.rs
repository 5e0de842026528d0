//! The ranks' lines: prefixed, whole, and copied to the log files.

use std::time::Duration;

use crate::common::{run_in, scratch};

#[test]
fn lines_of_many_ranks_never_mix_and_partial_lines_are_flushed() {
    let dir = scratch("lines");
    // Each rank writes 300 long lines to stdout as fast as it can, a bad UTF-8 byte and a last
    // line without a newline to stderr.
    let script = r#"i=0; while [ $i -lt 300 ]; do
                      echo "line $i of rank $RANK xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx end"
                      i=$((i+1)); done
                    printf 'bad \377 byte\nno newline' >&2"#;
    let ended = run_in(
        &dir,
        &["--nproc-per-node", "4", "--", "sh", "-c", script],
        Duration::from_secs(60),
    );
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    let lines: Vec<&str> = ended.out.lines().collect();
    assert_eq!(lines.len(), 4 * 300);
    for line in &lines {
        let (prefix, body) = line.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
        let rank = prefix.strip_prefix("[rank ").unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            body.starts_with("line ") && body.ends_with(&format!("of rank {rank} {} end", "x".repeat(78))),
            "a mixed line: {line:?}"
        );
    }
    for rank in 0..4 {
        let mine: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("[rank {rank}] ")))
            .collect();
        assert_eq!(mine.len(), 300);
        assert!(mine[299].contains("line 299 of"), "in order");
        assert!(
            ended.err.contains(&format!("[rank {rank}] bad \u{fffd} byte\n")),
            "{}",
            ended.err
        );
        assert!(
            ended.err.contains(&format!("[rank {rank}] no newline\n")),
            "{}",
            ended.err
        );
    }
}

#[test]
fn log_dir_gets_each_ranks_lines_with_a_header_per_attempt() {
    let dir = scratch("logs");
    let logs = dir.join("logs/nested");
    let script = r#"echo "out of $RANK at $NABLA_RESTART_COUNT"; echo "err of $RANK" >&2
                    if [ "$RANK" = 0 ] && [ "$NABLA_RESTART_COUNT" = 0 ]; then exit 1; fi"#;
    let ended = run_in(
        &dir,
        &[
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--grace-period",
            "1",
            "--log-dir",
            logs.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    assert!(
        ended.out.contains("[rank 1] out of 1 at 1"),
        "the terminal still gets the lines"
    );
    for rank in 0..2 {
        let log = std::fs::read_to_string(logs.join(format!("rank_{rank}.log"))).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.first(), Some(&"== nabla-launch attempt 0 =="), "{log}");
        let second = lines
            .iter()
            .position(|l| *l == "== nabla-launch attempt 1 ==")
            .expect(&log);
        let last = &lines[second + 1..];
        assert_eq!(last.len(), 2, "{log}");
        assert!(last.contains(&format!("out of {rank} at 1").as_str()), "{log}");
        assert!(last.contains(&format!("err of {rank}").as_str()), "{log}");
        assert!(!log.contains("[rank"), "log lines are unprefixed: {log}");
    }
    let first = std::fs::read_to_string(logs.join("rank_0.log")).unwrap();
    assert!(first.contains("out of 0 at 0\n"), "{first}");
}
