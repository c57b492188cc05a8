//! Recovery points at the target, read back with real NBD clients: every retained point,
//! exported by a test failover and copied out with `nbdcopy`, equals the source as it was when
//! the point was taken; writes to the export never reach the replica; materialize writes the
//! same bytes as raw and qcow2 (`qemu-img compare`); bad requests get exact errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::tap::{random_write_script, TapRig};

/// Every point for an hour, one per second: nothing is thinned or pruned during a test.
pub(crate) const KEEP_EVERY_POINT: &str = "[target]\npoint_interval_secs = 1\n\
    [target.retention]\nkeep_all_secs = 3600\nbucket_secs = 3600\nwindow_secs = 7200\n";
const POINT_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const DISK_BYTES: u64 = 16 * MIB;

/// `siterelay ARGS --connect TARGET --json`, which must succeed; its JSON.
pub(crate) fn operate(cluster: &Cluster, args: &[&str]) -> Value {
    let finished = operate_raw(cluster, args);
    assert!(finished.status.success(), "siterelay {args:?} failed\n{}", finished.describe());
    serde_json::from_str(&finished.stdout).unwrap_or_else(|error| {
        panic!("siterelay {args:?}: bad JSON ({error})\n{}", finished.describe())
    })
}

pub(crate) fn operate_raw(cluster: &Cluster, args: &[&str]) -> Finished {
    let target = cluster.target.addr().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--connect", &target, "--json"]);
    run_siterelay(&all, &cluster.dir.subdir("logs"), CLIENT_TIMEOUT)
}

pub(crate) fn disk_points(cluster: &Cluster) -> (Vec<Value>, u64) {
    let reply = operate(cluster, &["points", "list", "--disk", "d0"]);
    let disk = &reply["disks"][0];
    let points = disk["points"].as_array().cloned().unwrap_or_default();
    (points, disk["durable_seq"].as_u64().unwrap_or(0))
}

/// Waits for a newest point other than `previous` that ends the target's stream (nothing
/// durable after it) and stays the newest for a moment: the writer's last flush (qemu-io
/// flushes once more as it exits) has been replicated. Returns its id.
pub(crate) fn wait_new_point(cluster: &Cluster, previous: Option<u64>) -> u64 {
    let deadline = Instant::now() + POINT_TIMEOUT;
    let mut candidate = None;
    loop {
        let (points, durable) = disk_points(cluster);
        if let Some(newest) = points.last() {
            let id = newest["id"].as_u64().expect("point id");
            if Some(id) != previous && newest["seq"].as_u64() == Some(durable) {
                if candidate == Some(id) {
                    return id;
                }
                candidate = Some(id);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        }
        assert!(Instant::now() < deadline, "no new point within {POINT_TIMEOUT:?}: {points:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Copies an NBD export to a new file with nbdcopy.
pub(crate) fn nbdcopy_out(uri: &str, out: &Path, logs: &Path) {
    let finished = run_tool("nbdcopy", &[uri.into(), out.into()], logs, CLIENT_TIMEOUT);
    assert!(finished.status.success(), "nbdcopy {uri} failed\n{}", finished.describe());
}

pub(crate) fn start_test_failover(cluster: &Cluster, point: &str, socket: &Path) -> (u64, String) {
    let socket = socket.to_str().expect("utf-8 path");
    let args = ["failover", "test", "--disk", "d0", "--point", point, "--nbd-listen", socket];
    let job = operate(cluster, &args);
    assert_eq!(job["state"], "ready", "{job}");
    (job["id"].as_u64().expect("job id"), job["export"].as_str().expect("export").to_string())
}

pub(crate) fn cleanup(cluster: &Cluster, job: u64) {
    operate(cluster, &["failover", "cleanup", "--job", &job.to_string()]);
}

#[test]
fn every_retained_point_reads_as_the_source_was_then() {
    if !require_tools("every_retained_point", &["qemu-io", "nbdcopy", "qemu-img", "cmp"]) {
        return;
    }
    let cluster = Cluster::start_with_target_config("points-correct", KEEP_EVERY_POINT);
    let rig = TapRig::start_on(cluster, DISK_BYTES, None);
    let cluster = &rig.cluster;
    let snapshots = cluster.dir.subdir("snapshots");
    let logs = cluster.dir.subdir("logs");

    // The end of the initial sync is the first point; then one point per seeded burst, each
    // more than the point interval after the previous so none of them is provisional.
    let mut expected: Vec<(u64, PathBuf)> = Vec::new();
    let mut newest = wait_new_point(cluster, None);
    let snapshot = snapshots.join(format!("point-{newest}.img"));
    fs::copy(&rig.source, &snapshot).expect("snapshot");
    expected.push((newest, snapshot));
    for round in 0..5u64 {
        std::thread::sleep(Duration::from_millis(1100));
        let script = random_write_script(0x9017_0000 + round, DISK_BYTES, 60, 0);
        rig.qemu_io(&[], &script, &format!("burst-{round}"));
        newest = wait_new_point(cluster, Some(newest));
        let snapshot = snapshots.join(format!("point-{newest}.img"));
        fs::copy(&rig.source, &snapshot).expect("snapshot");
        expected.push((newest, snapshot));
    }
    let (points, _) = disk_points(cluster);
    let retained: Vec<u64> = points.iter().filter_map(|point| point["id"].as_u64()).collect();
    for (id, _) in &expected {
        assert!(retained.contains(id), "point {id} not retained: {retained:?}");
    }
    // The snapshots differ from each other, so reading the wrong point cannot pass.
    assert!(files_identical(&expected[0].1, &expected[5].1).is_err());

    let replica_before = cluster.dir.join("replica-before.img");
    fs::copy(cluster.replica("d0"), &replica_before).expect("copy replica");
    for (id, snapshot) in &expected {
        let socket = cluster.dir.join(&format!("export-{id}.sock"));
        let (job, uri) = start_test_failover(cluster, &id.to_string(), &socket);
        let copy = cluster.dir.join(&format!("read-{id}.img"));
        nbdcopy_out(&uri, &copy, &logs);
        if let Err(error) = files_identical(snapshot, &copy) {
            panic!("point {id} read through the test failover export: {error}");
        }
        cleanup(cluster, job);
        fs::remove_file(&copy).expect("remove copy");
    }

    // Writes to an export land in its overlay only.
    let (oldest, oldest_snapshot) = &expected[0];
    let socket = cluster.dir.join("export-write.sock");
    let (job, uri) = start_test_failover(cluster, &oldest.to_string(), &socket);
    crate::tap::qemu_io_script(
        &uri,
        &[],
        "write -q -P 0xa5 65536 1048576\nflush\n",
        &cluster.dir,
        "export-write",
    );
    let written = cluster.dir.join("export-written.img");
    nbdcopy_out(&uri, &written, &logs);
    let bytes = fs::read(&written).expect("read copy");
    assert!(bytes[65536..65536 + MIB as usize].iter().all(|&b| b == 0xa5), "write not visible");
    let original = fs::read(oldest_snapshot).expect("read snapshot");
    assert_eq!(bytes[..65536], original[..65536], "bytes before the write changed");
    assert_eq!(bytes[65536 + MIB as usize..], original[65536 + MIB as usize..]);
    let jobs_dir = cluster.dir.join("target-data").join("jobs");
    assert!(jobs_dir.join(format!("job-{job}")).join("overlay.img").exists());
    cleanup(cluster, job);
    assert!(!jobs_dir.join(format!("job-{job}")).exists(), "cleanup left the job's files");
    let jobs = operate(cluster, &["failover", "jobs"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]), "cleanup left the job listed");
    assert_files_identical(&replica_before, &cluster.replica("d0"));
    // The point itself is unchanged by the writes its export took.
    let (job, uri) = start_test_failover(cluster, &oldest.to_string(), &socket);
    let again = cluster.dir.join("export-again.img");
    nbdcopy_out(&uri, &again, &logs);
    assert_files_identical(oldest_snapshot, &again);
    cleanup(cluster, job);

    // Materialize: raw byte for byte, qcow2 by qemu-img compare.
    let (middle, middle_snapshot) = &expected[2];
    let raw = cluster.dir.join("point.raw");
    let raw_arg = raw.to_str().expect("utf-8");
    operate(
        cluster,
        &[
            "failover",
            "materialize",
            "--disk",
            "d0",
            "--point",
            &middle.to_string(),
            "--output",
            raw_arg,
            "--wait",
        ],
    );
    assert_files_identical(middle_snapshot, &raw);
    // A qcow2 output named like a raw file (its temporary raw copy must not collide with it).
    let qcow2 = cluster.dir.join("point-as-qcow2.raw");
    let qcow2_arg = qcow2.to_str().expect("utf-8");
    let args = [
        "failover",
        "materialize",
        "--disk",
        "d0",
        "--point",
        "latest",
        "--output",
        qcow2_arg,
        "--format",
        "qcow2",
        "--wait",
    ];
    operate(cluster, &args);
    let latest = &expected.last().expect("points").1;
    let compare = run_tool(
        "qemu-img",
        &[
            "compare".into(),
            "-f".into(),
            "raw".into(),
            "-F".into(),
            "qcow2".into(),
            latest.into(),
            qcow2.clone().into(),
        ],
        &logs,
        CLIENT_TIMEOUT,
    );
    assert!(compare.status.success(), "qemu-img compare failed\n{}", compare.describe());
}

#[test]
fn bad_point_and_disk_requests_are_refused_by_name() {
    let cluster = Cluster::start_with_target_config("points-bad", KEEP_EVERY_POINT);
    let source = cluster.dir.join("disk.img");
    fs::write(&source, vec![7u8; 4 * MIB as usize]).expect("write source");
    let agent = cluster.agent("a", &[("d0", &source)]);
    cluster.sync_once(&agent, "sync for points");
    let (points, _) = disk_points(&cluster);
    let first = points.first().expect("the end of the sync is a point")["id"].as_u64().unwrap();
    let last = points.last().expect("a point")["id"].as_u64().unwrap();
    let socket = cluster.dir.join("bad.sock");
    let socket = socket.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["failover", "test", "--disk", "d0", "--point", "999999", "--nbd-listen", socket],
            format!(
                "siterelay: disk d0 has no point 999999 (its points are {first}..={last}; \
                 `siterelay points list --disk d0` shows them)"
            ),
        ),
        (
            vec![
                "failover",
                "test",
                "--disk",
                "d0",
                "--point",
                "yesterday",
                "--nbd-listen",
                socket,
            ],
            "siterelay: point \"yesterday\" is neither a point id nor one of latest, latest-app, \
             latest-group"
                .into(),
        ),
        (
            vec![
                "failover",
                "test",
                "--disk",
                "d0",
                "--point",
                "latest-app",
                "--nbd-listen",
                socket,
            ],
            format!(
                "siterelay: disk d0 has no point latest-app (its points are {first}..={last}; \
                 `siterelay points list --disk d0` shows them)"
            ),
        ),
        (
            vec!["points", "list", "--disk", "nope"],
            "siterelay: this target has no disk \"nope\" (its disks: d0)".into(),
        ),
        (
            vec!["failover", "cleanup", "--job", "42"],
            "siterelay: there is no job 42 (`siterelay failover jobs` lists them)".into(),
        ),
        (
            vec!["failover", "materialize", "--disk", "d0", "--output", "/tmp", "--format", "vhd"],
            "siterelay: output format \"vhd\" is not one of raw, qcow2, vmdk, vmdk-stream".into(),
        ),
        (
            vec!["failover", "materialize", "--disk", "d0", "--output", "/tmp"],
            "siterelay: output /tmp exists; refusing to overwrite it".into(),
        ),
    ];
    for (args, message) in cases {
        let finished = operate_raw(&cluster, &args);
        assert!(!finished.status.success(), "{args:?} succeeded\n{}", finished.describe());
        assert_eq!(finished.stderr.trim(), message, "{args:?}");
    }
    // A refused request leaves no job and no pin behind.
    let jobs = operate(&cluster, &["failover", "jobs"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]));
}

/// Waits until `uri` serves the failed-over disk again (after a target restart) and copies it.
fn nbdcopy_when_served(uri: &str, out: &Path, logs: &Path) {
    let deadline = Instant::now() + POINT_TIMEOUT;
    loop {
        let finished = run_tool("nbdcopy", &[uri.into(), out.into()], logs, CLIENT_TIMEOUT);
        if finished.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{uri} not served again\n{}", finished.describe());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn refused(cluster: &Cluster, args: &[&str], message: &str) {
    let finished = operate_raw(cluster, args);
    assert!(!finished.status.success(), "{args:?} succeeded\n{}", finished.describe());
    assert_eq!(finished.stderr.trim(), message, "{args:?}");
}

#[test]
fn unplanned_failover_change_point_and_commit_survive_target_restarts() {
    if !require_tools("unplanned_failover", &["qemu-io", "nbdcopy", "cmp"]) {
        return;
    }
    let mut cluster = Cluster::start_with_target_config("failover-unplanned", KEEP_EVERY_POINT);
    let logs = cluster.dir.subdir("logs");
    let source = cluster.dir.join("disk.img");
    let mut rng = Rng::new(0xfa11_0001);
    let mut bytes = vec![0u8; 8 * MIB as usize];
    rng.fill(&mut bytes[..2 * MIB as usize]);
    fs::write(&source, &bytes).expect("write source");
    let agent = cluster.agent("a", &[("d0", &source)]);
    cluster.sync_once(&agent, "first copy");
    let first = wait_new_point(&cluster, None);
    let state_a = cluster.dir.join("state-a.img");
    fs::copy(&source, &state_a).expect("snapshot a");
    std::thread::sleep(Duration::from_millis(1100));
    rng.fill(&mut bytes[3 * MIB as usize..4 * MIB as usize]);
    fs::write(&source, &bytes).expect("rewrite source");
    cluster.sync_once(&agent, "second copy");
    let second = wait_new_point(&cluster, Some(first));
    let state_b = cluster.dir.join("state-b.img");
    fs::copy(&source, &state_b).expect("snapshot b");
    assert!(files_identical(&state_a, &state_b).is_err());

    let socket = cluster.dir.join("failover.sock");
    let socket_arg = socket.to_str().expect("utf-8");
    let record = operate(
        &cluster,
        &["failover", "unplanned", "--disk", "d0", "--point", "latest", "--nbd-listen", socket_arg],
    );
    assert_eq!(record["point"].as_u64(), Some(second), "{record}");
    assert_eq!(record["phase"], "failed-over");
    let uri = record["export"].as_str().expect("export").to_string();
    let copy = cluster.dir.join("copy.img");
    nbdcopy_out(&uri, &copy, &logs);
    assert_files_identical(&state_b, &copy);
    fs::remove_file(&copy).unwrap();
    refused(
        &cluster,
        &["failover", "unplanned", "--disk", "d0", "--nbd-listen", socket_arg],
        &format!(
            "siterelay: disk d0 is already failed over to point {second} (failed-over); use \
             `failover change-point` or `failover commit`"
        ),
    );

    // Writes to the failed-over disk survive a kill -9 of the target.
    crate::tap::qemu_io_script(
        &uri,
        &[],
        "write -q -P 0x3c 0 65536\nflush\n",
        &cluster.dir,
        "fo-write",
    );
    cluster.target.kill();
    cluster.target.restart_after(Duration::ZERO);
    nbdcopy_when_served(&uri, &copy, &logs);
    let mut expected_b = fs::read(&state_b).unwrap();
    expected_b[..65536].fill(0x3c);
    assert!(fs::read(&copy).unwrap() == expected_b, "the write did not survive the restart");
    fs::remove_file(&copy).unwrap();
    let status = cluster.status_json(cluster.target.addr());
    assert_eq!(status["disks"][0]["failover"], "failed-over", "{status}");

    // Change point: the earlier state, without the write.
    let record = operate(
        &cluster,
        &["failover", "change-point", "--disk", "d0", "--point", &first.to_string()],
    );
    assert_eq!(record["point"].as_u64(), Some(first));
    nbdcopy_out(&uri, &copy, &logs);
    assert_files_identical(&state_a, &copy);
    fs::remove_file(&copy).unwrap();

    // Commit: point plus the writes since become the replica image itself.
    crate::tap::qemu_io_script(
        &uri,
        &[],
        "write -q -P 0x5a 1048576 4096\nflush\n",
        &cluster.dir,
        "fo-write2",
    );
    let record = operate(&cluster, &["failover", "commit", "--disk", "d0"]);
    assert_eq!(record["phase"], "committed");
    let mut expected_a = fs::read(&state_a).unwrap();
    expected_a[MIB as usize..MIB as usize + 4096].fill(0x5a);
    assert!(fs::read(cluster.replica("d0")).unwrap() == expected_a, "commit wrote the wrong image");
    let (points, _) = disk_points(&cluster);
    assert!(points.is_empty(), "commit left points: {points:?}");
    cluster.target.kill();
    cluster.target.restart_after(Duration::ZERO);
    nbdcopy_when_served(&uri, &copy, &logs);
    assert_files_identical(&cluster.replica("d0"), &copy);
    refused(
        &cluster,
        &["failover", "change-point", "--disk", "d0", "--point", "latest"],
        "siterelay: disk d0 is committed: its point can no longer be changed",
    );
    refused(
        &cluster,
        &["failover", "commit", "--disk", "d0"],
        "siterelay: disk d0 is already committed",
    );
    let jobs = operate(&cluster, &["failover", "jobs"]);
    assert_eq!(jobs["failovers"][0]["phase"], "committed", "{jobs}");
}

/// Waits for a point of `kind` and returns it.
fn wait_point_of_kind(cluster: &Cluster, kind: &str) -> Value {
    let deadline = Instant::now() + POINT_TIMEOUT;
    loop {
        let (points, _) = disk_points(cluster);
        if let Some(point) = points.iter().rev().find(|point| point["kind"] == kind) {
            return point.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} point within {POINT_TIMEOUT:?}: {points:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn freeze_marker_thaw_gives_app_consistent_points_and_a_failed_freeze_still_thaws() {
    if !require_tools("app_consistent", &["qemu-io", "nbdcopy", "cmp"]) {
        return;
    }
    let cluster = Cluster::start_with_target_config("points-app", KEEP_EVERY_POINT);
    let hooks = cluster.dir.join("hooks.log");
    let config = format!(
        "[agent]\napp_consistent_interval_secs = 1\nhook_timeout_secs = 5\n\
         freeze_command = \"echo freeze >> {0}\"\nthaw_command = \"echo thaw >> {0}\"\n",
        hooks.display()
    );
    let rig = TapRig::start_on(cluster, DISK_BYTES, Some(&config));
    let cluster = &rig.cluster;
    let script = random_write_script(0xa99_0001, DISK_BYTES, 40, 0);
    rig.qemu_io(&[], &script, "before-app-point");
    let before = wait_point_of_kind(cluster, "app")["id"].as_u64().unwrap();
    // An app point taken after the writes stopped: it holds all of them.
    let deadline = Instant::now() + POINT_TIMEOUT;
    let app = loop {
        let point = wait_point_of_kind(cluster, "app");
        if point["id"].as_u64() > Some(before) {
            break point;
        }
        assert!(Instant::now() < deadline, "no second app point");
        std::thread::sleep(Duration::from_millis(200));
    };
    let socket = cluster.dir.join("app.sock");
    let (job, uri) = start_test_failover(cluster, "latest-app", &socket);
    let copy = cluster.dir.join("app-point.img");
    nbdcopy_out(&uri, &copy, &cluster.dir.subdir("logs"));
    assert_files_identical(&rig.source, &copy);
    cleanup(cluster, job);
    let log = fs::read_to_string(&hooks).expect("hooks ran");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    for pair in lines.chunks(2) {
        assert_eq!(pair[0], "freeze", "{log}");
        if pair.len() == 2 {
            assert_eq!(pair[1], "thaw", "every freeze is followed by its thaw:\n{log}");
        }
    }
    eprintln!("app-consistent point {} at sequence {}", app["id"], app["seq"]);
}

#[test]
fn failing_freeze_thaws_and_takes_a_crash_consistent_point_with_a_warning() {
    if !require_tools("failing_freeze", &["qemu-io", "nbdcopy", "cmp"]) {
        return;
    }
    let cluster = Cluster::start_with_target_config("points-app-fail", KEEP_EVERY_POINT);
    let thawed = cluster.dir.join("thawed");
    let config = format!(
        "[agent]\napp_consistent_interval_secs = 1\nhook_timeout_secs = 1\n\
         freeze_command = \"echo cannot freeze >&2; exit 4\"\nthaw_command = \"touch {}\"\n",
        thawed.display()
    );
    let rig = TapRig::start_on(cluster, DISK_BYTES, Some(&config));
    let deadline = Instant::now() + POINT_TIMEOUT;
    while !rig.agent.log().contains("recovery point is crash-consistent only") {
        assert!(Instant::now() < deadline, "no warning:\n{}", tail(&rig.agent.log(), 30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = rig.agent.log();
    let warning = log.lines().find(|line| line.contains("crash-consistent only")).unwrap();
    assert!(warning.contains("freeze hook \"echo cannot freeze >&2; exit 4\""), "{warning}");
    assert!(warning.contains("cannot freeze"), "the hook's error output is missing: {warning}");
    assert!(thawed.exists(), "thaw did not run after the failed freeze");
    // Replication goes on and the writes reach crash-consistent points.
    let (points, _) = disk_points(&rig.cluster);
    let newest = points.last().and_then(|point| point["id"].as_u64());
    rig.qemu_io(&[], "write -q -P 0x6b 0 65536\nflush\n", "after-failed-freeze");
    wait_new_point(&rig.cluster, newest);
    let socket = rig.cluster.dir.join("latest.sock");
    let (job, uri) = start_test_failover(&rig.cluster, "latest", &socket);
    let copy = rig.cluster.dir.join("latest.img");
    nbdcopy_out(&uri, &copy, &rig.cluster.dir.subdir("logs"));
    assert_files_identical(&rig.source, &copy);
    cleanup(&rig.cluster, job);
    let (points, _) = disk_points(&rig.cluster);
    assert!(points.iter().all(|point| point["kind"] != "app"), "{points:?}");
}

#[test]
fn test_failover_of_an_ext4_point_mounts_checks_clean_and_leaves_no_trace() {
    let tools = ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fusermount3"];
    if !require_tools("ext4_test_failover", &tools) {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !crate::tap::is_root() {
        eprintln!("SKIPPED ext4_test_failover: this machine lacks /dev/fuse or root");
        return;
    }
    let cluster = Cluster::start_with_target_config("points-ext4", KEEP_EVERY_POINT);
    let logs = cluster.dir.subdir("logs");
    let image = cluster.dir.join("ext4.img");
    let make_fs = |tree: &Path, seed: u64| {
        write_seeded_tree(tree, seed, 6 * MIB, MIB);
        let _ = fs::remove_file(&image);
        let mkfs = run_tool(
            "mkfs.ext4",
            &[
                "-q".into(),
                "-F".into(),
                "-d".into(),
                tree.into(),
                image.clone().into(),
                "64M".into(),
            ],
            &logs,
            CLIENT_TIMEOUT,
        );
        assert!(mkfs.status.success(), "mkfs.ext4 failed\n{}", mkfs.describe());
    };
    let tree_a = cluster.dir.join("tree-a");
    make_fs(&tree_a, 0xe4_a001);
    let agent = cluster.agent("a", &[("d0", &image)]);
    cluster.sync_once(&agent, "ext4 as of tree a");
    let point_a = wait_new_point(&cluster, None);
    std::thread::sleep(Duration::from_millis(1100));
    let tree_b = cluster.dir.join("tree-b");
    make_fs(&tree_b, 0xe4_b001);
    cluster.sync_once(&agent, "ext4 as of tree b");
    let point_b = wait_new_point(&cluster, Some(point_a));
    let replica_before = cluster.dir.join("replica-before.img");
    fs::copy(cluster.replica("d0"), &replica_before).expect("copy replica");

    let socket = cluster.dir.join("ext4.sock");
    let (job, uri) = start_test_failover(&cluster, &point_a.to_string(), &socket);
    let attached = crate::tap::NbdLoop::attach(&uri, &cluster.dir, "point-a");
    let device = attached.device.clone();
    let fs_dir = attached.fs_dir.clone();
    attached.sh(&format!("e2fsck -fn {device}"));
    attached.sh(&format!("mount {device} {}", fs_dir.display()));
    // The files as of the point: tree a, not tree b.
    attached.sh(&format!("diff -r -x lost+found {} {}", tree_a.display(), fs_dir.display()));
    attached.sh(&format!(
        "echo written during the test > {0}/test-note && rm -r {0}/d0 && sync",
        fs_dir.display()
    ));
    attached.sh(&format!("umount {}", fs_dir.display()));
    attached.sh(&format!("e2fsck -fn {device}"));
    attached.detach();
    // The writes stayed in the export: the replica and both points are untouched.
    assert_files_identical(&replica_before, &cluster.replica("d0"));
    let jobs_dir = cluster.dir.join("target-data").join("jobs");
    cleanup(&cluster, job);
    assert!(
        !jobs_dir.exists() || fs::read_dir(&jobs_dir).unwrap().next().is_none(),
        "cleanup left files in {}",
        jobs_dir.display()
    );
    let jobs = operate(&cluster, &["failover", "jobs"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]));
    for (point, tree) in [(point_a, &tree_a), (point_b, &tree_b)] {
        let (job, uri) = start_test_failover(&cluster, &point.to_string(), &socket);
        let attached = crate::tap::NbdLoop::attach(&uri, &cluster.dir, &format!("again-{point}"));
        attached.sh(&format!("e2fsck -fn {}", attached.device));
        attached.sh(&format!("mount -o ro {} {}", attached.device, attached.fs_dir.display()));
        attached.sh(&format!(
            "diff -r -x lost+found {} {}",
            tree.display(),
            attached.fs_dir.display()
        ));
        attached.detach();
        cleanup(&cluster, job);
    }
}

#[test]
fn materialize_as_vmdk_and_stream_optimized_with_an_ovf_that_qemu_img_accepts() {
    if !require_tools("materialize_vmdk", &["qemu-img"]) {
        return;
    }
    let cluster = Cluster::start_with_target_config("points-vmdk", KEEP_EVERY_POINT);
    let logs = cluster.dir.subdir("logs");
    let source = cluster.dir.join("disk.img");
    let size = 17 * MIB + 512;
    let mut bytes = vec![0u8; size as usize];
    let mut rng = Rng::new(0x7d3c_0001);
    rng.fill(&mut bytes[..3 * MIB as usize]);
    rng.fill(&mut bytes[9 * MIB as usize..9 * MIB as usize + 70_000]);
    rng.fill(&mut bytes[size as usize - 4096..]);
    fs::write(&source, &bytes).unwrap();
    let agent = cluster.agent("a", &[("d0", &source)]);
    cluster.sync_once(&agent, "vmdk source");
    for (format, name) in [("vmdk", "point.vmdk"), ("vmdk-stream", "point-stream.vmdk")] {
        let output = cluster.dir.join(name);
        let output_arg = output.to_str().unwrap();
        let args = [
            "failover",
            "materialize",
            "--disk",
            "d0",
            "--output",
            output_arg,
            "--format",
            format,
            "--wait",
        ];
        operate(&cluster, &args);
        let check =
            run_tool("qemu-img", &["check".into(), output.clone().into()], &logs, CLIENT_TIMEOUT);
        assert!(check.status.success(), "qemu-img check {name}\n{}", check.describe());
        let compare = run_tool(
            "qemu-img",
            &[
                "compare".into(),
                "-f".into(),
                "raw".into(),
                "-F".into(),
                "vmdk".into(),
                source.clone().into(),
                output.clone().into(),
            ],
            &logs,
            CLIENT_TIMEOUT,
        );
        assert!(compare.status.success(), "qemu-img compare {name}\n{}", compare.describe());
    }
    let ovf = fs::read_to_string(cluster.dir.join("point-stream.ovf"))
        .expect("an OVF next to the stream VMDK");
    assert!(ovf.contains("ovf:href=\"point-stream.vmdk\""), "{ovf}");
    assert!(ovf.contains(&format!("ovf:capacity=\"{size}\"")), "{ovf}");
    assert!(!cluster.dir.join("point.ovf").exists(), "a monolithicSparse output has no OVF");
}
