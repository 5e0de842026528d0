//! Usage and setup errors: exit 2 with a message that says what to do.

use std::time::Duration;

use crate::common::{run_in, scratch};

fn usage_error(args: &[&str], parts: &[&str]) {
    let dir = scratch("usage");
    let ended = run_in(&dir, args, Duration::from_secs(10));
    assert_eq!(ended.code(), Some(2), "{args:?}: {ended:?}");
    assert!(ended.err.starts_with("nabla-launch: "), "{}", ended.err);
    for p in parts {
        assert!(ended.err.contains(p), "{args:?}: no {p:?} in {}", ended.err);
    }
    assert!(ended.out.is_empty(), "{}", ended.out);
}

#[test]
fn several_nodes_without_a_token_file() {
    usage_error(
        &["--nnodes", "2", "--", "true"],
        &[
            "--nnodes 2 needs --rdzv-token-file",
            "nabla-launch --new-token-file FILE",
            "mode 600",
        ],
    );
}

#[test]
fn a_node_rank_not_below_nnodes() {
    usage_error(
        &[
            "--nnodes",
            "2",
            "--node-rank",
            "2",
            "--rdzv-token-file",
            "t",
            "--",
            "true",
        ],
        &["--node-rank 2 is not below --nnodes 2", "from 0 to 1"],
    );
}

#[test]
fn no_program() {
    usage_error(&["--nproc-per-node", "2"], &["no program given", "after `--`"]);
    usage_error(&["--nproc-per-node", "2", "--"], &["no program given"]);
}

#[test]
fn zero_ranks_and_unknown_flags() {
    usage_error(
        &["--nproc-per-node", "0", "--", "true"],
        &["--nproc-per-node 0", "1 or more"],
    );
    usage_error(&["--nprocs", "2", "--", "true"], &["--nprocs"]);
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let dir = scratch("mode");
    let path = dir.join("open.token");
    std::fs::write(&path, "a".repeat(64)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ended = run_in(
        &dir,
        &["--rdzv-token-file", path.to_str().unwrap(), "--", "true"],
        Duration::from_secs(10),
    );
    assert_eq!(ended.code(), Some(2), "{ended:?}");
    assert!(ended.err.contains("chmod 600"), "{}", ended.err);
}

#[test]
fn new_token_file_writes_a_private_token_and_never_replaces_one() {
    let dir = scratch("newtoken");
    let path = dir.join("job.token");
    let ended = run_in(
        &dir,
        &["--new-token-file", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(ended.code(), Some(0), "{ended:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(token.trim().len(), 64);
    assert!(!ended.err.contains(token.trim()), "the token is not printed");
    let again = run_in(
        &dir,
        &["--new-token-file", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(again.code(), Some(2), "{again:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
}
