//! kill -9 of the target while it prunes its journal into the base image, and while it
//! materializes a recovery point: afterwards every point it still lists, read back with real
//! NBD clients (a test failover export copied out with `nbdcopy`), is the source as it was
//! when the point was taken, and a half-written materialization never looks complete.
//!
//! The workload is seeded qemu-io bursts through the capturing agent's write tap, each burst
//! a set of writes to disjoint ranges (large sequential 4 MiB writes and small writes, zeroes
//! and discards) ended by one flush, after which the source is copied as the snapshot of the
//! burst's point. A point the agent took inside a burst (it marks a boundary itself after
//! 200 ms of quiet) is checked as what it must be: the previous snapshot with a prefix of the
//! burst's commands applied.
//!
//! Whether a kill interrupted pruning is read from what the dead target left on disk: its
//! points log (`disks/d0/points.log`) no longer holds the oldest point(s) while its
//! `meta.json` still has the base image (`applied_seq`) before the oldest remaining point.
//! Retention rewrites the points log durably before the base moves, and the base's sequence
//! is recorded after each pruning step, so that gap exists exactly while pruning is under way.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::crash::allocated_bytes;
use crate::harness::*;
use crate::points::{
    cleanup, disk_points, nbdcopy_out, operate, operate_raw, wait_new_point, KEEP_EVERY_POINT,
};
use crate::tap::TapRig;

/// Points one second apart, all kept for 4 s, then one per second, none after 12 s (but the
/// newest): while the test watches, the oldest point expires every few seconds (the bursts'
/// pace), and each expiry prunes a burst (100 to 300 MiB) of journal into the base.
const PRUNING_RETENTION: &str = "[target]\npoint_interval_secs = 1\n\
    [target.retention]\nkeep_all_secs = 4\nbucket_secs = 1\nwindow_secs = 12\n";
const DISK_BYTES: u64 = 384 * MIB;
const TOOLS: &[&str] = &["qemu-io", "nbdcopy", "cmp", "cp"];
const LARGE_WRITE_BYTES: u64 = 4 * MIB;
/// Small writes go to distinct slots of this size at the start of the disk.
const SLOT_BYTES: u64 = 64 * KIB;
const SMALL_AREA_BYTES: u64 = 32 * MIB;
/// Longest wait for the target to start pruning before a kill happens anyway.
const PRUNE_WAIT_MAX: Duration = Duration::from_secs(20);
/// More than the point interval: see `Workload::burst`.
const POINT_SPACING: Duration = Duration::from_millis(1100);
const MATERIALIZE_WAIT_MAX: Duration = Duration::from_secs(60);

/// One qemu-io command of a burst and the disk range it changes.
#[derive(Debug, Clone)]
struct Command {
    line: String,
    offset: u64,
    len: u64,
}

/// A burst of writes and the newest point after it, with the source's copy at that point.
#[derive(Debug)]
struct Burst {
    commands: Vec<Command>,
    newest_point: u64,
    snapshot: PathBuf,
}

/// Seeded bursts through the tap, and what each point must read as.
struct Workload {
    rig: TapRig,
    rng: Rng,
    /// Where the next large write goes (wrapping within the disk, past the small writes).
    large_cursor: u64,
    /// `bursts[0]` is the end of the initial sync (no commands).
    bursts: Vec<Burst>,
    /// When the newest point was recorded.
    recorded_at: Instant,
    exports: u32,
}

impl Workload {
    /// A capturing agent over a `disk_bytes` source on a cluster with `target_config`, and
    /// the initial sync's point recorded.
    fn start(label: &str, target_config: &str, disk_bytes: u64, seed: u64) -> Workload {
        let cluster = Cluster::start_with_target_config(label, target_config);
        let rig = TapRig::start_on(cluster, disk_bytes, None);
        let mut workload = Workload {
            rig,
            rng: Rng::new(seed),
            large_cursor: SMALL_AREA_BYTES,
            bursts: Vec::new(),
            recorded_at: Instant::now(),
            exports: 0,
        };
        workload.record(Vec::new());
        workload
    }

    fn cluster(&self) -> &Cluster {
        &self.rig.cluster
    }

    fn disk_bytes(&self) -> u64 {
        fs::metadata(&self.rig.source).expect("stat source").len()
    }

    fn newest_point(&self) -> u64 {
        self.bursts.last().expect("the sync's point").newest_point
    }

    /// `large` sequential 4 MiB writes and `small` writes, zeroes and discards of 4 to 64 KiB,
    /// all to disjoint ranges, in a seeded order.
    fn commands(&mut self, large: u32, small: u32) -> Vec<Command> {
        let disk_bytes = self.disk_bytes();
        assert!(u64::from(large) * LARGE_WRITE_BYTES <= disk_bytes - SMALL_AREA_BYTES);
        let rng = &mut self.rng;
        let mut commands = Vec::new();
        for _ in 0..large {
            if self.large_cursor + LARGE_WRITE_BYTES > disk_bytes {
                self.large_cursor = SMALL_AREA_BYTES;
            }
            let offset = self.large_cursor;
            self.large_cursor += LARGE_WRITE_BYTES;
            let pattern = rng.range(1, 256);
            let line = format!("write -q -P 0x{pattern:02x} {offset} {LARGE_WRITE_BYTES}\n");
            commands.push(Command { line, offset, len: LARGE_WRITE_BYTES });
        }
        let mut slots: Vec<u64> = (0..SMALL_AREA_BYTES / SLOT_BYTES).collect();
        for _ in 0..small {
            let slot = slots.swap_remove(rng.below(slots.len() as u64) as usize);
            let blocks = rng.range(1, 17);
            let offset = slot * SLOT_BYTES + rng.below(17 - blocks) * 4 * KIB;
            let len = blocks * 4 * KIB;
            let line = match rng.below(8) {
                0 => format!("write -q -z {offset} {len}\n"),
                1 => format!("discard -q {offset} {len}\n"),
                _ => format!("write -q -P 0x{:02x} {offset} {len}\n", rng.range(1, 256)),
            };
            commands.push(Command { line, offset, len });
        }
        for at in (1..commands.len()).rev() {
            commands.swap(at, rng.below(at as u64 + 1) as usize);
        }
        commands
    }

    /// Runs one burst (writeback cache: no flush but the last) and records its point.
    fn burst(&mut self, large: u32, small: u32) {
        // A point less than the point interval after the one before it is provisional: a
        // marker of this burst would replace it.
        std::thread::sleep(POINT_SPACING.saturating_sub(self.recorded_at.elapsed()));
        let commands = self.commands(large, small);
        let mut script: String = commands.iter().map(|command| command.line.as_str()).collect();
        script.push_str("flush\n");
        let label = format!("burst-{}", self.bursts.len());
        self.rig.qemu_io(&["-t", "writeback"], &script, &label);
        self.record(commands);
    }

    /// Waits for the point that ends the stream and keeps a copy of the source as it.
    fn record(&mut self, commands: Vec<Command>) {
        let previous = self.bursts.last().map(|burst| burst.newest_point);
        let newest_point = wait_new_point(self.cluster(), previous);
        let snapshot =
            self.cluster().dir.subdir("snapshots").join(format!("point-{newest_point}.img"));
        sparse_copy(&self.rig.source, &snapshot, &self.cluster().dir);
        self.bursts.push(Burst { commands, newest_point, snapshot });
        self.recorded_at = Instant::now();
    }

    /// Removes the snapshots no listed point needs (the snapshot before a point's burst is
    /// needed too, for a point taken inside the burst).
    fn forget_unneeded_snapshots(&mut self) {
        let (points, _) = disk_points(self.cluster());
        let Some(oldest) = points.first().and_then(|point| point["id"].as_u64()) else { return };
        let first_needed = self.bursts.iter().position(|burst| burst.newest_point >= oldest);
        for burst in &self.bursts[..first_needed.unwrap_or(0).saturating_sub(1)] {
            let _ = fs::remove_file(&burst.snapshot);
        }
    }

    /// Reads every point the target lists through a test failover export and checks it.
    /// Returns how many were read.
    fn verify_listed_points(&mut self, context: &str) -> usize {
        let (points, _) = disk_points(self.cluster());
        let ids: Vec<u64> = points.iter().filter_map(|point| point["id"].as_u64()).collect();
        assert_eq!(
            ids.last(),
            Some(&self.newest_point()),
            "{context}: the newest point must remain: {ids:?}"
        );
        // Start every export first: each pins its point, so retention cannot drop it while
        // the others are read. A point dropped between the listing and its export is gone.
        let mut exports = Vec::new();
        for id in &ids {
            self.exports += 1;
            let socket = self.cluster().dir.join(&format!("export-{}.sock", self.exports));
            let socket = socket.to_str().expect("utf-8 path").to_string();
            let point = id.to_string();
            let args =
                ["failover", "test", "--disk", "d0", "--point", &point, "--nbd-listen", &socket];
            let started = operate_raw(self.cluster(), &args);
            if started.status.success() {
                let job: serde_json::Value = serde_json::from_str(&started.stdout).expect("JSON");
                assert_eq!(job["state"], "ready", "{context}: {job}");
                let uri = job["export"].as_str().expect("export").to_string();
                exports.push((*id, job["id"].as_u64().expect("job id"), uri));
                continue;
            }
            assert!(
                started.stderr.contains(&format!("has no point {id} ")),
                "{context}: test failover of point {id} failed\n{}",
                started.describe()
            );
            let (now, _) = disk_points(self.cluster());
            assert!(
                now.iter().all(|point| point["id"].as_u64() != Some(*id)),
                "{context}: point {id} is listed but cannot be exported"
            );
        }
        let logs = self.cluster().dir.subdir("logs");
        for (id, job, uri) in &exports {
            let copy = self.cluster().dir.join(&format!("read-{id}.img"));
            nbdcopy_out(uri, &copy, &logs);
            if let Err(error) = self.check_point(*id, &copy) {
                panic!(
                    "{context}: point {id} read through a test failover export is wrong: \
                     {error}\n{}",
                    self.cluster().diagnostics()
                );
            }
            cleanup(self.cluster(), *job);
            fs::remove_file(&copy).expect("remove copy");
        }
        assert!(!exports.is_empty(), "{context}: no point could be read");
        exports.len()
    }

    /// Checks a point's bytes: the snapshot of its burst if it is the burst's newest point,
    /// else (a point the agent took inside the burst) the previous snapshot with the burst's
    /// first k commands applied, for some k.
    fn check_point(&self, id: u64, copy: &Path) -> Result<(), String> {
        let Some(at) = self.bursts.iter().position(|burst| id <= burst.newest_point) else {
            return Err(format!("no burst explains point {id} (newer than every write)"));
        };
        let burst = &self.bursts[at];
        // Nothing wrote to the source during the initial sync.
        let Some(before) = at.checked_sub(1).map(|previous| &self.bursts[previous]) else {
            return files_identical(&burst.snapshot, copy);
        };
        if id == burst.newest_point {
            return files_identical(&burst.snapshot, copy);
        }
        let [point, new, old] = [copy, &burst.snapshot, &before.snapshot].map(|path| {
            File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        });
        let range_equal = |a: &File, b: &File, command: &Command| {
            let mut left = vec![0u8; command.len as usize];
            let mut right = vec![0u8; command.len as usize];
            a.read_exact_at(&mut left, command.offset).expect("read range");
            b.read_exact_at(&mut right, command.offset).expect("read range");
            left == right
        };
        let applied =
            burst.commands.iter().take_while(|command| range_equal(&point, &new, command)).count();
        if let Some(command) =
            burst.commands[applied..].iter().find(|command| !range_equal(&point, &old, command))
        {
            return Err(format!(
                "point {id} (taken during burst {at}) has the first {applied} of {} commands \
                 applied, but also a later one or neither version of: {}",
                burst.commands.len(),
                command.line.trim()
            ));
        }
        let expected = self.cluster().dir.join(&format!("expected-{id}.img"));
        sparse_copy(&before.snapshot, &expected, &self.cluster().dir);
        let out = fs::OpenOptions::new().write(true).open(&expected).expect("open expected");
        for command in &burst.commands[..applied] {
            let mut bytes = vec![0u8; command.len as usize];
            new.read_exact_at(&mut bytes, command.offset).expect("read snapshot");
            out.write_all_at(&bytes, command.offset).expect("write expected");
        }
        let result = files_identical(&expected, copy);
        eprintln!(
            "point {id}: taken during burst {at}, after {applied} of {} commands: {}",
            burst.commands.len(),
            if result.is_ok() { "as expected" } else { "WRONG" }
        );
        fs::remove_file(&expected).expect("remove expected");
        result
    }
}

/// `cp --sparse=always`: a snapshot keeps the source's holes (a plain copy would write them).
fn sparse_copy(from: &Path, to: &Path, dir: &TestDir) {
    let args = ["--sparse=always".into(), from.into(), to.into()];
    let finished = run_tool("cp", &args, &dir.subdir("logs"), Duration::from_secs(120));
    assert!(finished.status.success(), "cp failed\n{}", finished.describe());
}

/// `failover materialize` of `point` of d0 into `output`, without waiting.
fn materialize_args<'a>(point: &'a str, output: &'a Path) -> [&'a str; 8] {
    let output = output.to_str().expect("utf-8 path");
    ["failover", "materialize", "--disk", "d0", "--point", point, "--output", output]
}

/// Where materialize writes `output` until it is complete.
fn failover_partial(output: &Path) -> PathBuf {
    let mut name = output.file_name().expect("file name").to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// The base image's sequence as the target last recorded it (`meta.json`).
fn stored_base_seq(cluster: &Cluster) -> u64 {
    let path = disk_dir(cluster).join("meta.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let meta: serde_json::Value = serde_json::from_str(&text).expect("meta.json is JSON");
    meta["applied_seq"].as_u64().expect("applied_seq")
}

/// The oldest point in the target's points log, as (id, seq). The log is journal records
/// ("SRJ1", kind, length, CRC, then the 40-byte point: id, seq, ...); kind 1 adds a point,
/// kind 2 replaces the newest one. A torn final record ends it.
fn stored_oldest_point(cluster: &Cluster) -> Option<(u64, u64)> {
    const RECORD_BYTES: usize = 16 + 40;
    let bytes = fs::read(disk_dir(cluster).join("points.log")).unwrap_or_default();
    let mut points = Vec::new();
    for record in bytes.chunks_exact(RECORD_BYTES) {
        let u64_at = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8"));
        if &record[..4] != b"SRJ1" || record[8..12] != 40u32.to_le_bytes() {
            break;
        }
        match record[4] {
            1 => points.push((u64_at(16), u64_at(24))),
            2 => {
                points.pop();
                points.push((u64_at(16), u64_at(24)));
            }
            _ => break,
        }
    }
    points.first().copied()
}

fn disk_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir.join("target-data").join("disks").join("d0")
}

/// Pruning is under way: retention dropped the oldest point(s) durably and the base image
/// has not reached the oldest remaining one yet. Returns (base sequence, oldest point).
fn pruning_gap(cluster: &Cluster) -> Option<(u64, (u64, u64))> {
    let base = stored_base_seq(cluster);
    let oldest = stored_oldest_point(cluster)?;
    (base < oldest.1).then_some((base, oldest))
}

/// Polls `condition` every millisecond until it holds or `max` passes; whether it held.
fn poll_until(max: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Lines of the target log that mean recovery lost or refused something.
fn assert_target_log_clean(cluster: &Cluster) {
    let log = cluster.target.log();
    for bad in ["cannot be read any more", "cannot be opened", "pruning failed", "panicked"] {
        assert!(!log.contains(bad), "target log has {bad:?}\n{}", tail(&log, 80));
    }
}

#[test]
fn target_kill9_during_pruning_keeps_every_point_readable() {
    if !require_tools("target_kill9_during_pruning", TOOLS) {
        return;
    }
    let seed = 0x9e1e_5eed_0001;
    let started = Instant::now();
    let mut workload = Workload::start("prune-kill9", PRUNING_RETENTION, DISK_BYTES, seed);
    // A first burst larger than one pruning step, then bursts of about 100 MiB: a few hundred
    // MiB of journal over several points, which retention then expires one after the other.
    workload.burst(72, 40);
    workload.burst(24, 40);
    workload.burst(24, 40);
    eprintln!("{:.1?}: warm-up written", started.elapsed());

    // Each round writes a burst, waits for pruning to be under way (a gap between the stored
    // base and the oldest stored point), kills a seeded 0..300 ms later and restarts after a
    // seeded 0..300 ms down; a kill that landed mid-prune is followed half the time by
    // another one into the pruning the restarted target resumes.
    let mut rng = Rng::new(seed ^ 0x6b11);
    let (mut kills, mut mid_prune) = (0u32, 0u32);
    for round in 0..4 {
        workload.burst(24, 40);
        workload.forget_unneeded_snapshots();
        let waited = Instant::now();
        let pruning = poll_until(PRUNE_WAIT_MAX, || pruning_gap(workload.cluster()).is_some());
        eprintln!(
            "{:.1?}: round {round}: pruning {} after {:.1?}",
            started.elapsed(),
            if pruning { "seen" } else { "NOT seen" },
            waited.elapsed()
        );
        loop {
            let landed = kill_and_restart(&mut workload.rig.cluster, &mut rng, started);
            kills += 1;
            mid_prune += u32::from(landed);
            if !(landed && rng.chance(1, 2)) {
                break;
            }
        }
    }
    eprintln!("target_kill9_during_pruning: {mid_prune} of {kills} kills landed mid-prune");
    assert!(mid_prune > 0, "no kill landed while pruning was in progress");

    // Replication goes on after the crashes: one more burst and its point.
    workload.burst(8, 40);
    let read = workload.verify_listed_points("after kill -9 during pruning");
    assert_target_log_clean(workload.cluster());
    eprintln!(
        "{:.1?}: {read} points read and correct; {} retention drops logged",
        started.elapsed(),
        workload.cluster().target.log().matches("retention dropped").count()
    );
}

/// kill -9 of the target after a seeded 0..300 ms, down for a seeded 0..300 ms, restarted;
/// whether the kill interrupted pruning (what the dead target left on disk says).
fn kill_and_restart(cluster: &mut Cluster, rng: &mut Rng, started: Instant) -> bool {
    let jitter = Duration::from_millis(rng.below(300));
    let down = Duration::from_millis(rng.below(300));
    std::thread::sleep(jitter);
    cluster.target.kill();
    let gap = pruning_gap(cluster);
    let allocated = allocated_bytes(&cluster.replica("d0")) / MIB;
    std::thread::sleep(down);
    let restart = Instant::now();
    cluster.target.start();
    eprintln!(
        "{:.1?}: killed {jitter:?} later: {}; down {down:?}, up again in {:.1?}",
        started.elapsed(),
        match gap {
            Some((base, (id, seq))) => format!(
                "mid-prune (base at sequence {base}, oldest point {id} at {seq}, base image \
                 {allocated} MiB allocated)"
            ),
            None => "not pruning".to_string(),
        },
        restart.elapsed()
    );
    gap.is_some()
}

#[test]
fn target_kill9_during_materialize_then_points_still_correct() {
    if !require_tools("target_kill9_during_materialize", TOOLS) {
        return;
    }
    let seed = 0x3a7e_5eed_0001;
    let started = Instant::now();
    let mut workload = Workload::start("materialize-kill9", KEEP_EVERY_POINT, 1024 * MIB, seed);
    workload.burst(64, 40);
    let point = workload.newest_point();
    let snapshot = workload.bursts.last().expect("burst").snapshot.clone();
    workload.burst(8, 40);
    let cluster = workload.cluster();
    let data_bytes = allocated_bytes(&snapshot);

    // A test failover with a write in its overlay is running too: its files must go as well.
    let socket = cluster.dir.join("export-kept.sock");
    let socket_arg = socket.to_str().expect("utf-8");
    let args =
        ["failover", "test", "--disk", "d0", "--point", "latest", "--nbd-listen", socket_arg];
    let job = operate(cluster, &args);
    let uri = job["export"].as_str().expect("export");
    crate::tap::qemu_io_script(
        uri,
        &[],
        "write -q -P 0x77 0 1048576\nflush\n",
        &cluster.dir,
        "overlay-write",
    );
    let jobs_dir = cluster.dir.join("target-data").join("jobs");
    assert!(jobs_dir.join(format!("job-{}", job["id"])).join("overlay.img").exists());

    // Each round materializes the point into a new file and kills the target once the
    // `.partial` file holds a seeded 10..80 % of the point's data.
    let mut rng = Rng::new(seed ^ 0x6b11);
    let point_arg = point.to_string();
    let output = |round: u32| workload.cluster().dir.join(&format!("point-{round}.raw"));
    let outputs: Vec<PathBuf> = (0..2).map(output).collect();
    let mut mid_copy = 0;
    for (round, output) in outputs.iter().enumerate() {
        let partial = failover_partial(output);
        let job = operate(workload.cluster(), &materialize_args(&point_arg, output));
        assert_eq!(job["state"], "running", "{job}");
        let permille = rng.range(100, 800);
        let threshold = data_bytes * permille / 1000;
        let reached = poll_until(MATERIALIZE_WAIT_MAX, || {
            allocated_bytes(&partial) >= threshold || output.exists()
        });
        assert!(reached, "materialize wrote nothing within {MATERIALIZE_WAIT_MAX:?}");
        let cluster = &mut workload.rig.cluster;
        cluster.target.kill();
        let copied = allocated_bytes(&partial);
        let landed = partial.exists() && !output.exists();
        eprintln!(
            "{:.1?}: round {round}: killed at {permille}‰ of {} MiB: {} (.partial {} MiB)",
            started.elapsed(),
            data_bytes / MIB,
            if landed { "mid-copy" } else { "after the copy" },
            copied / MIB
        );
        mid_copy += u32::from(landed);
        cluster.target.start();
        assert!(
            !output.exists(),
            "a materialization cut short by kill -9 left {} as if complete",
            output.display()
        );
        let leftover = fs::read_dir(&jobs_dir).map(|entries| entries.count()).unwrap_or(0);
        assert_eq!(leftover, 0, "{} holds files of jobs of the killed target", jobs_dir.display());
        let jobs = operate(cluster, &["failover", "jobs"]);
        assert_eq!(jobs["jobs"], serde_json::json!([]), "jobs outlived the target: {jobs}");
        // The restarted target removes the unfinished output it had recorded.
        assert!(!partial.exists(), "{} outlived the killed materialization", partial.display());
    }
    assert!(mid_copy > 0, "no kill landed while the materialization was copying");

    // The same point again, into the first round's output.
    let mut args = materialize_args(&point_arg, &outputs[0]).to_vec();
    args.push("--wait");
    let done = operate(workload.cluster(), &args);
    assert_eq!(done["state"], "done", "{done}");
    assert_files_identical(&snapshot, &outputs[0]);
    assert!(
        !failover_partial(&outputs[0]).exists(),
        "a finished materialization left its .partial"
    );
    assert!(!outputs[1].exists(), "{} appeared after its job ended", outputs[1].display());
    let read = workload.verify_listed_points("after kill -9 during materialize");
    assert_target_log_clean(workload.cluster());
    eprintln!(
        "{:.1?}: materialized point {point} and read {read} points correctly",
        started.elapsed()
    );
}
