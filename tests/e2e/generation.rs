//! Generations (design.md invariant 5): a source whose history differs from the replica's is
//! refused with a clear error at connect, and only the explicit `agent --take-over` replaces
//! the replica's history, by a checksum resync that moves only differing blocks.

use crate::harness::*;

fn run(agent: &Agent, extra: &[&str], label: &str) -> Finished {
    let mut args = agent.args();
    args.extend(extra.iter().map(std::ffi::OsString::from));
    Running::spawn(&args, &agent.out_dir, label)
        .wait(AGENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("{label}: {error}"))
}

#[test]
fn generation_mismatch_is_refused_until_take_over() {
    if !require_tools("generation_take_over", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("generation");
    let source = cluster.dir.join("g.img");
    write_mixed_image(&source, 32 * MIB, 0x6e4_0001);
    let first = cluster.agent("first", &[("g0", &source)]);
    cluster.sync_once(&first, "first agent's full sync");
    cluster.assert_replica_identical(&source, "g0", "after the first sync");

    // The agent's state is lost (reinstalled machine): a new generation appears.
    let changed = modify_regions(&source, 0x6e4_0002, 6, 64 * KIB);
    let second = cluster.agent("second", &[("g0", &source)]);
    let refused = run(&second, &[], "refused");
    assert!(!refused.status.success(), "a second history must be refused\n{}", refused.describe());
    for expected in ["refusing to mix histories", "--take-over"] {
        assert!(refused.stderr.contains(expected), "missing {expected:?}\n{}", refused.describe());
    }
    assert!(
        files_identical(&source, &cluster.replica("g0")).is_err(),
        "the refused agent must not have written to the replica"
    );

    // The operator decides this source is the one to keep.
    let taken = run(&second, &["--take-over"], "take-over");
    assert!(
        taken.status.success(),
        "take-over failed\n{}\n{}",
        taken.describe(),
        cluster.diagnostics()
    );
    assert!(taken.stdout.contains("checksum resync"), "{}", taken.describe());
    cluster.assert_replica_identical(&source, "g0", "after the take-over");
    let data_bytes: u64 = taken
        .stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .find(|words| words[1] == "data" && words[2] == "bytes")
        .and_then(|words| words[0].parse().ok())
        .unwrap_or_else(|| panic!("no data byte count in\n{}", taken.stdout));
    let changed_bytes: u64 = changed.iter().map(|(_, len)| len).sum();
    assert!(
        data_bytes <= changed_bytes + 12 * 64 * KIB,
        "take-over sent {data_bytes} data bytes for {changed_bytes} changed bytes: not a resync"
    );

    // Now the first agent is the stale one, and it is refused in turn.
    let stale = run(&first, &[], "stale");
    assert!(!stale.status.success(), "a stale agent must be refused\n{}", stale.describe());
    assert!(stale.stderr.contains("refusing to mix histories"), "{}", stale.describe());
    cluster.assert_replica_identical(&source, "g0", "after the stale agent was refused");

    // The relay and the target keep the new generation across restarts.
    cluster_restart_keeps_generation(cluster, &second, &source);
}

fn cluster_restart_keeps_generation(mut cluster: Cluster, agent: &Agent, source: &std::path::Path) {
    cluster.relay.restart_after(std::time::Duration::from_millis(100));
    cluster.target.restart_after(std::time::Duration::from_millis(100));
    modify_regions(source, 0x6e4_0003, 3, 32 * KIB);
    cluster.sync_once(agent, "resync after restarts with the taken-over generation");
    cluster.assert_replica_identical(source, "g0", "after restarts");
}
