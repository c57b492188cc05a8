//! Full sync and checksum resync through three separate processes (agent → relay → target):
//! the replica must be byte-identical to the source every time.

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use crate::harness::*;

/// The relay's `bytes_received` counter of `disk` (data bytes of `Writes` frames taken in
/// from agents), if its status document has one.
fn relay_bytes_received(status: &serde_json::Value, disk: &str) -> Option<u64> {
    status["disks"].as_array()?.iter().find(|entry| entry["name"] == disk)?["bytes_received"]
        .as_u64()
}

fn check_status_lists(cluster: &Cluster, disk: &str) {
    for (server, role) in [(&cluster.relay, "relay"), (&cluster.target, "target")] {
        let status = cluster.status_json(server.addr());
        assert_eq!(status["role"].as_str(), Some(role), "status --json of the {role}: {status}");
        let names = status_disk_names(&status);
        assert!(
            names.iter().any(|name| name == disk),
            "status --json of the {role} does not list disk {disk}: {status}"
        );
    }
}

#[test]
fn mixed_64mib_image_full_sync_then_resync() {
    if !require_tools("mixed_64mib_image_full_sync_then_resync", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("mixed64");
    let source = cluster.dir.join("disk0.img");
    let summary = write_mixed_image(&source, 64 * MIB, 0x5eed_0064);
    eprintln!("source image: {summary:?}");
    let agent = cluster.agent("a", &[("disk0", &source)]);

    let full = cluster.sync_once(&agent, "initial full sync of 64 MiB");
    eprintln!("full sync took {:.2?}; summary:\n{}", full.elapsed, full.stdout);
    cluster.assert_replica_identical(&source, "disk0", "after full sync");
    check_status_lists(&cluster, "disk0");
    let after_full = relay_bytes_received(&cluster.status_json(cluster.relay.addr()), "disk0");

    let regions = modify_regions(&source, 0xd1ff_0001, 12, 256 * KIB);
    let changed: u64 = regions.iter().map(|(_, len)| len).sum();
    eprintln!("modified {} regions, {changed} bytes", regions.len());
    let resync = cluster.sync_once(&agent, "checksum resync after modifying 12 regions");
    eprintln!("resync took {:.2?}; summary:\n{}", resync.elapsed, resync.stdout);
    cluster.assert_replica_identical(&source, "disk0", "after resync");

    // Traffic: only differing blocks may move. 12 regions of at most 256 KiB touch at most
    // 12 * 320 KiB with 64 KiB blocks (the default); allow up to 1 MiB blocks (the config
    // maximum) before calling it a full copy.
    let after_resync = relay_bytes_received(&cluster.status_json(cluster.relay.addr()), "disk0");
    match (after_full, after_resync) {
        (Some(full_bytes), Some(total)) => {
            let resync_bytes = total.saturating_sub(full_bytes);
            eprintln!("relay bytes_received: full sync {full_bytes}, resync {resync_bytes}");
            assert!(
                full_bytes >= summary.text_bytes + summary.random_bytes,
                "full sync moved \
                 only {full_bytes} data bytes, less than the image's non-zero data"
            );
            assert!(
                resync_bytes <= 12 * (256 * KIB + 2 * MIB) && resync_bytes < full_bytes / 4,
                "resync moved {resync_bytes} bytes for {changed} changed bytes (full sync moved \
                 {full_bytes}); a checksum resync should move only differing blocks"
            );
        }
        _ => eprintln!("relay status has no disks[].bytes_received; resync traffic not checked"),
    }
}

#[test]
fn unaligned_size_image_and_tail_resync() {
    if !require_tools("unaligned_size_image_and_tail_resync", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("unaligned");
    let source = cluster.dir.join("odd.img");
    let size = 10 * MIB + 1234;
    write_mixed_image(&source, size, 0x0dd_51ce);
    let agent = cluster.agent("a", &[("odd", &source)]);

    cluster.sync_once(&agent, "full sync of a 10 MiB + 1234 byte image");
    cluster.assert_replica_identical(&source, "odd", "after full sync");

    // Change the last partial block and one region in the middle.
    let mut rng = Rng::new(77);
    let mut tail_bytes = [0u8; 1000];
    rng.fill(&mut tail_bytes);
    write_at(&source, size - tail_bytes.len() as u64, &tail_bytes);
    write_at(&source, 5 * MIB + 17, b"changed in the middle");
    cluster.sync_once(&agent, "resync after changing the unaligned tail");
    cluster.assert_replica_identical(&source, "odd", "resync of the unaligned tail");
}

#[test]
fn two_disks_in_one_agent() {
    if !require_tools("two_disks_in_one_agent", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("twodisks");
    let first = cluster.dir.join("first.img");
    let second = cluster.dir.join("second.img");
    write_mixed_image(&first, 12 * MIB, 1);
    write_mixed_image(&second, 7 * MIB + 512, 2);
    let agent = cluster.agent("a", &[("first", &first), ("second", &second)]);
    cluster.sync_once(&agent, "full sync of two disks");
    cluster.assert_replica_identical(&first, "first", "first disk");
    cluster.assert_replica_identical(&second, "second", "second disk");

    modify_regions(&second, 3, 4, 64 * KIB);
    cluster.sync_once(&agent, "resync of two disks, one changed");
    cluster.assert_replica_identical(&first, "first", "first disk after resync");
    cluster.assert_replica_identical(&second, "second", "second disk after resync");
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn expect_tool_success(name: &str, args: Vec<OsString>, cluster: &Cluster, context: &str) {
    let logs = cluster.dir.subdir("logs");
    let finished = run_tool(name, &args, &logs, Duration::from_secs(120));
    if !finished.status.success() {
        panic!("{context}: {name} failed\n{}\n{}", finished.describe(), cluster.diagnostics());
    }
}

#[test]
fn ext4_filesystem_image_replicates_and_checks_clean() {
    let test = "ext4_filesystem_image_replicates_and_checks_clean";
    if !require_tools(test, &["cmp", "mkfs.ext4", "e2fsck", "debugfs", "qemu-img"]) {
        return;
    }
    let cluster = Cluster::start("ext4");
    let tree = cluster.dir.subdir("tree");
    let files = write_seeded_tree(&tree, 0xe474, 24 * MIB, 512 * KIB);
    let source = cluster.dir.join("fs.img");
    let mut args = os(&["-q", "-F", "-d"]);
    args.push(tree.clone().into());
    args.push(source.clone().into());
    args.push("64M".into());
    expect_tool_success("mkfs.ext4", args, &cluster, "mkfs.ext4 -d");
    eprintln!("ext4 image with {files} files");
    let replica = cluster.replica("fs0");
    let agent = cluster.agent("a", &[("fs0", &source)]);

    cluster.sync_once(&agent, "full sync of an ext4 image");
    cluster.assert_replica_identical(&source, "fs0", "ext4 after full sync");
    check_replica_filesystem(&cluster, &source, &replica, "after full sync");

    // Change the filesystem offline (no mount needed): add a file, remove another.
    let extra = cluster.dir.join("extra.bin");
    let mut data = vec![0u8; 300 * 1024];
    Rng::new(0xadd).fill(&mut data);
    fs::write(&extra, &data).expect("write extra file");
    let write_cmd = format!("write {} added.bin", extra.display());
    let mut args = os(&["-w", "-R", &write_cmd]);
    args.push(source.clone().into());
    expect_tool_success("debugfs", args, &cluster, "debugfs write");
    let root_file = fs::read_dir(&tree)
        .expect("read tree")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .min();
    if let Some(name) = root_file {
        let rm_cmd = format!("rm {name}");
        let mut args = os(&["-w", "-R", &rm_cmd]);
        args.push(source.clone().into());
        expect_tool_success("debugfs", args, &cluster, "debugfs rm");
    }
    expect_tool_success("e2fsck", fsck_args(&source), &cluster, "source fsck after debugfs");

    cluster.sync_once(&agent, "resync of the changed ext4 image");
    cluster.assert_replica_identical(&source, "fs0", "ext4 after resync");
    check_replica_filesystem(&cluster, &source, &replica, "after resync");
}

fn fsck_args(image: &std::path::Path) -> Vec<OsString> {
    let mut args = os(&["-fn"]);
    args.push(image.into());
    args
}

fn check_replica_filesystem(
    cluster: &Cluster,
    source: &std::path::Path,
    replica: &std::path::Path,
    context: &str,
) {
    expect_tool_success("e2fsck", fsck_args(replica), cluster, &format!("e2fsck -fn {context}"));
    let mut args = os(&["compare", "-f", "raw", "-F", "raw"]);
    args.push(source.into());
    args.push(replica.into());
    expect_tool_success("qemu-img", args, cluster, &format!("qemu-img compare {context}"));
}

#[test]
fn agent_gives_up_clearly_when_the_relay_stays_unreachable() {
    let dir = TestDir::new("agent-unreachable");
    let source = dir.join("disk.img");
    write_mixed_image(&source, MIB, 5);
    let relay = loopback(free_port()); // nothing listens here
    let agent = Agent {
        relay,
        disks: vec![("disk".to_string(), source)],
        state_dir: dir.join("state"),
        out_dir: dir.subdir("logs"),
        reconnect_timeout_secs: 2,
    };
    let finished = agent
        .spawn_once("agent")
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("agent did not give up after its 2 s reconnect timeout: {e}"));
    assert!(!finished.status.success(), "agent succeeded without a relay\n{}", finished.describe());
    let relay = relay.to_string();
    assert!(
        finished.stderr.contains("unreachable") && finished.stderr.contains(&relay),
        "agent's error does not say that relay {relay} was unreachable\n{}",
        finished.describe()
    );
    assert!(
        !finished.stdout.contains("replica durable at target"),
        "agent claims durability without a relay\n{}",
        finished.describe()
    );
}

#[test]
fn agent_fails_clearly_on_a_missing_source() {
    let mut cluster = Cluster::start("agent-missing-source");
    let missing = cluster.dir.join("no-such-disk.img");
    let agent = cluster.agent("a", &[("ghost", &missing)]);
    let finished = agent
        .spawn_once("agent")
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("agent with a missing source did not exit: {e}"));
    assert!(
        !finished.status.success(),
        "agent succeeded on a missing source\n{}",
        finished.describe()
    );
    assert!(
        finished.stderr.contains("no-such-disk.img"),
        "agent's error does not name the missing source\n{}",
        finished.describe()
    );
    cluster.relay.assert_running("after an agent with a missing source");
}

/// With the recovery site down, `agent --once` must end (not hang) with a message that says
/// the data is safe in the relay's cache; once the target is back, the relay delivers it.
#[test]
fn agent_reports_a_stalled_target_and_the_relay_delivers_later() {
    let mut cluster = Cluster::new("target-down");
    cluster.relay.start(); // the target is not started: nothing acknowledges at the recovery site
    let source = cluster.dir.join("disk.img");
    write_mixed_image(&source, 8 * MIB + 512, 11);
    let mut agent = cluster.agent("a", &[("disk", &source)]);
    agent.reconnect_timeout_secs = 3;
    let finished = agent
        .spawn_once("agent")
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("agent did not give up on the silent target: {e}"));
    assert!(
        !finished.status.success(),
        "agent succeeded without a target\n{}",
        finished.describe()
    );
    assert!(
        finished.stderr.contains("the target acknowledged nothing")
            && finished.stderr.contains("durable in the relay's cache"),
        "agent's error does not explain the stalled target\n{}",
        finished.describe()
    );
    assert!(!finished.stdout.contains("replica durable at target"), "{}", finished.describe());

    // The relay kept the data: starting the target delivers it without the agent.
    cluster.target.start();
    let replica = cluster.replica("disk");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::fs::read(&replica).ok() == std::fs::read(&source).ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.assert_replica_identical(&source, "disk", "relay delivered its cache to a late target");
}

/// A relay whose cache fills while the target is down pauses its agents (it never drops or
/// overwrites acknowledged data), says so in its log, and resumes when the target drains it.
#[test]
fn full_cache_pauses_agents_until_the_target_drains_it() {
    let mut cluster = Cluster::new("cache-full");
    let config = cluster.dir.join("small-cache.toml");
    fs::write(&config, "[relay]\ncache_bytes_max = \"64MiB\"\nsegment_bytes = \"4MiB\"\n")
        .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path").to_string();
    cluster.relay = Server::relay_with(
        cluster.target.addr(),
        &cluster.dir.join("relay-cache"),
        &cluster.dir.subdir("logs"),
        &["--config", &config_arg],
    );
    cluster.relay.start();
    // Random data does not compress: 160 MiB cannot fit the 64 MiB cache.
    let source = cluster.dir.join("disk.img");
    let mut data = vec![0u8; 160 * MIB as usize];
    Rng::new(77).fill(&mut data);
    fs::write(&source, &data).expect("write image");
    drop(data);
    let agent = cluster.agent("a", &[("disk", &source)]);
    let running = agent.spawn_once("agent");
    cluster
        .relay
        .wait_log_since(0, Duration::from_secs(60), |log| log.contains("cache full"))
        .unwrap_or_else(|log| panic!("relay never reported a full cache:\n{log}"));
    let cache_bytes: u64 = fs::read_dir(cluster.dir.join("relay-cache"))
        .expect("cache dir")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    assert!(cache_bytes <= 80 * MIB, "cache holds {cache_bytes} bytes, over its 64 MiB limit");
    cluster.target.start();
    let finished = running.wait(AGENT_TIMEOUT);
    cluster.expect_agent_success("sync through a full cache", finished);
    cluster.assert_replica_identical(&source, "disk", "after the cache drained");
}

/// A resync needs the target's checksums: with the target down (relay up), `--once` ends
/// with an error that says so, instead of waiting forever.
#[test]
fn resync_with_the_target_down_fails_clearly() {
    let mut cluster = Cluster::start("resync-target-down");
    let source = cluster.dir.join("disk.img");
    write_mixed_image(&source, 4 * MIB, 21);
    let mut agent = cluster.agent("a", &[("disk", &source)]);
    cluster.sync_once(&agent, "first sync");
    cluster.target.kill();
    modify_regions(&source, 22, 2, 64 * KIB);
    agent.reconnect_timeout_secs = 2;
    let finished = agent
        .spawn_once("resync")
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the resync did not give up: {e}"));
    assert!(
        !finished.status.success(),
        "resync succeeded without a target\n{}",
        finished.describe()
    );
    assert!(
        finished.stderr.contains("answered no checksum request"),
        "the error does not say why\n{}",
        finished.describe()
    );
}

/// The README's first command, on the smallest sample: every step verifies its replica.
#[test]
fn quickstart_runs_every_step_and_verifies() {
    let dir = TestDir::new("quickstart");
    let work = dir.join("qs").display().to_string();
    let finished = run_siterelay(
        &["quickstart", "--size", "64MiB", "--dir", &work],
        &dir.subdir("logs"),
        AGENT_TIMEOUT,
    );
    assert!(finished.status.success(), "{}", finished.describe());
    let verified = finished.stdout.matches("verified: replica is identical to the source").count();
    assert_eq!(verified, 3, "three verifications expected\n{}", finished.describe());
    assert!(finished.stdout.contains("replica caught up"), "{}", finished.describe());
    for line in [
        "identical to the source; a write to the export left the replica untouched",
        "test failover cleaned up",
        "[7/7] done",
    ] {
        assert!(finished.stdout.contains(line), "missing {line:?}\n{}", finished.describe());
    }
    assert!(!finished.stderr.contains("ERROR"), "{}", finished.describe());
}
