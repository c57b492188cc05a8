//! Continuous capture through the NBD write tap, driven by real NBD clients (qemu-io, nbdcopy,
//! nbdfuse + loop + ext4), with the relay and the agent failing underneath. Every test ends
//! with the replica byte-identical to the source (`cmp`), and the source identical to what the
//! same client operations produce on a plain local file where that is defined.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

/// From agent start to `protected` (initial sync of a small disk, debug build, busy CI box).
const PROTECT_TIMEOUT: Duration = Duration::from_secs(90);
/// From the end of a workload to a byte-identical replica.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct TapRig {
    pub(crate) cluster: Cluster,
    pub(crate) agent: Server,
    pub(crate) source: PathBuf,
}

impl TapRig {
    /// Target, relay and a capturing agent over a `size` byte source (zeros, then a seeded
    /// pattern in its first MiB so the initial sync moves data), protected.
    fn start(label: &str, size: u64, agent_config: Option<&str>) -> TapRig {
        Self::start_on(Cluster::start(label), size, agent_config)
    }

    /// Like `start`, on a cluster the caller set up.
    pub(crate) fn start_on(cluster: Cluster, size: u64, agent_config: Option<&str>) -> TapRig {
        let source = cluster.dir.join("source.img");
        let file = File::create(&source).expect("create source");
        file.set_len(size).expect("size source");
        let mut head = vec![0u8; MIB as usize];
        Rng::new(0x7a9_0001).fill(&mut head);
        write_at(&source, 0, &head);
        let mut extra: Vec<String> = Vec::new();
        if let Some(text) = agent_config {
            let path = cluster.dir.join("agent.toml");
            fs::write(&path, text).expect("write agent config");
            extra.push("--config".into());
            extra.push(path.display().to_string());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut agent = Server::agent_tap(
            cluster.relay.addr(),
            &[("d0", &source)],
            &cluster.dir.join("agent-state"),
            &cluster.dir.subdir("logs"),
            &extra,
        );
        agent.start();
        let rig = TapRig { cluster, agent, source };
        rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
        rig
    }

    pub(crate) fn uri(&self) -> String {
        format!("nbd://{}", self.agent.addr())
    }

    fn converge(&self, context: &str) {
        self.cluster.wait_replica_identical(&self.source, "d0", CONVERGE_TIMEOUT, context);
    }

    pub(crate) fn qemu_io(&self, extra: &[&str], script: &str, label: &str) -> Finished {
        qemu_io_script(&self.uri(), extra, script, &self.cluster.dir, label)
    }

    fn agent_log_tail(&self) -> String {
        tail(&self.agent.log(), 60)
    }

    /// SIGTERM to the agent; it must exit 0.
    fn stop_agent_cleanly(&mut self) {
        let status = self.agent.terminate(STOP_TIMEOUT).unwrap_or_else(|error| panic!("{error}"));
        assert!(status.success(), "agent stop: {status}\n{}", self.agent_log_tail());
    }

    /// Starts the (stopped) agent again and returns its log up to `disk d0: protected`.
    fn restart_agent_until_protected(&mut self, context: &str) -> String {
        let offset = self.agent.log_len();
        self.agent.start();
        self.agent
            .wait_log_since(offset, PROTECT_TIMEOUT, |text| text.contains("disk d0: protected"))
            .unwrap_or_else(|text| panic!("{context}: not protected:\n{}", tail(&text, 40)))
    }
}

/// Starts qemu-io on a command script (stdin) against `target` (an NBD URI or a file).
fn spawn_qemu_io(
    target: &str,
    extra: &[&str],
    script: &str,
    dir: &TestDir,
    label: &str,
) -> Running {
    let script_path = dir.join(&format!("{label}.qio"));
    fs::write(&script_path, script).expect("write qemu-io script");
    let mut args: Vec<OsString> = vec!["-f".into(), "raw".into()];
    args.extend(extra.iter().map(OsString::from));
    args.push(target.into());
    let shell = format!(
        "exec {} {} < {}",
        tool("qemu-io").display(),
        args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        script_path.display()
    );
    Running::spawn_program(
        Path::new("/bin/sh"),
        &["-c".into(), shell.into()],
        &dir.subdir("logs"),
        label,
    )
}

/// Runs a qemu-io command script to completion; any reported failure fails the test.
pub(crate) fn qemu_io_script(
    target: &str,
    extra: &[&str],
    script: &str,
    dir: &TestDir,
    label: &str,
) -> Finished {
    let finished = spawn_qemu_io(target, extra, script, dir, label)
        .wait(CLIENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("qemu-io {label}: {error}"));
    assert!(finished.status.success(), "qemu-io {label} failed\n{}", finished.describe());
    // qemu-io reports failed commands on stdout/stderr but may still exit 0.
    for text in [&finished.stdout, &finished.stderr] {
        assert!(
            !text.contains("failed") && !text.contains("error"),
            "qemu-io {label} reported an error\n{}",
            finished.describe()
        );
    }
    finished
}

/// Seeded `write` commands, overlapping freely (sync writes: a defined order), with
/// write-zeroes and discards mixed in.
pub(crate) fn random_write_script(seed: u64, size: u64, count: u32, fua_every: u32) -> String {
    let mut rng = Rng::new(seed);
    let blocks = size / 4096;
    let mut script = String::new();
    for i in 0..count {
        let len = rng.range(1, 17) * 4096;
        let offset = rng.below(blocks - 16) * 4096;
        let fua = if fua_every > 0 && i % fua_every == 0 { "-f " } else { "" };
        let line = match rng.below(20) {
            0 => format!("write -q -z {offset} {len}\n"),
            1 => format!("discard -q {offset} {len}\n"),
            2 => "flush\n".to_string(),
            _ => format!("write -q {fua}-P 0x{:02x} {offset} {len}\n", rng.below(256)),
        };
        script.push_str(&line);
    }
    script.push_str("flush\n");
    script
}

#[test]
fn qemu_io_random_bursts_writethrough_writeback_and_aio() {
    if !require_tools("qemu_io_random_bursts", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 64 * MIB;
    let rig = TapRig::start("tap-qemuio", size, None);
    // The reference: the same commands on a local copy of the pre-workload source.
    let reference = rig.cluster.dir.join("reference.img");
    fs::copy(&rig.source, &reference).expect("copy reference");
    let reference_target = reference.display().to_string();

    let writethrough = random_write_script(0xb0b_0001, size, 1500, 0);
    let writeback = random_write_script(0xb0b_0002, size, 1500, 7);
    // Concurrent aio writes to distinct 64 KiB slots: in flight together, no overlap.
    let mut rng = Rng::new(0xb0b_0003);
    let mut slots: Vec<u64> = (0..size / (64 * KIB)).collect();
    let mut aio = String::new();
    for i in 0..600 {
        let pick = rng.below(slots.len() as u64) as usize;
        let slot = slots.swap_remove(pick);
        aio.push_str(&format!("aio_write -q -P 0x{:02x} {} 65536\n", i % 251, slot * 64 * KIB));
    }
    aio.push_str("aio_flush\n");

    // Requests larger than a frame (NBD allows 32 MiB; a frame carries at most 8 MiB).
    let large = "write -q -P 0x5c 1048576 16777216\nwrite -q -z 20971520 12582912\n\
                 write -q -f -P 0x3d 33554432 25165824\nflush\n"
        .to_string();

    for (label, extra, script) in [
        ("writethrough", &[][..], &writethrough),
        ("writeback", &["-t", "writeback"][..], &writeback),
        ("aio", &["-t", "writeback"][..], &aio),
        ("large", &[][..], &large),
    ] {
        let started = Instant::now();
        rig.qemu_io(extra, script, &format!("tap-{label}"));
        eprintln!("{label}: workload through the tap took {:.2?}", started.elapsed());
        qemu_io_script(&reference_target, extra, script, &rig.cluster.dir, &format!("ref-{label}"));
        // The tap applied exactly what a local file gets from the same commands...
        if let Err(error) = files_identical(&reference, &rig.source) {
            panic!(
                "{label}: source differs from the local reference: {error}\n{}",
                rig.agent_log_tail()
            );
        }
        // ...and replication converges to it.
        rig.converge(&format!("after the {label} workload"));
    }
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    // Every workload ended with a flush: the target recorded crash-consistent boundaries.
    let status = rig.cluster.status_json(rig.cluster.target.addr());
    let disk = &status["disks"][0];
    let seq = disk["consistent_seq"].as_u64();
    assert!(
        seq.is_some_and(|seq| seq > 0) && disk["consistent_points"].as_u64() > Some(0),
        "the target recorded no consistency boundary from the clients' flushes: {status}"
    );
}

#[test]
fn nbdcopy_whole_image_over_four_connections_and_a_unix_socket() {
    if !require_tools("nbdcopy_whole_image", &["cmp", "nbdcopy", "nbdinfo"]) {
        return;
    }
    let size = 48 * MIB;
    let rig = TapRig::start("tap-nbdcopy", size, None);
    let image = rig.cluster.dir.join("copy-in.img");
    write_mixed_image(&image, size, 0xc0c0_0001);
    let finished = run_tool(
        "nbdcopy",
        &[
            "--connections=4".into(),
            "--requests=16".into(),
            "--flush".into(),
            image.clone().into(),
            rig.uri().into(),
        ],
        &rig.cluster.dir.subdir("logs"),
        CLIENT_TIMEOUT,
    );
    assert!(finished.status.success(), "nbdcopy failed\n{}", finished.describe());
    assert_files_identical(&image, &rig.source);
    rig.converge("after nbdcopy into the tap");
    let status = rig.cluster.status_json(rig.cluster.relay.addr());
    eprintln!("relay status after nbdcopy: {status}");

    // The same agent state and disk, now behind a unix socket: a clean restart keeps the
    // replica (no resync) and a second copy goes through the socket.
    rig_restart_on_unix_socket(rig, &image);
}

fn rig_restart_on_unix_socket(mut rig: TapRig, image: &Path) {
    rig.stop_agent_cleanly();
    let socket = rig.cluster.dir.join("tap.sock");
    let mut agent = Server::agent_tap(
        rig.cluster.relay.addr(),
        &[("d0", &rig.source)],
        &rig.cluster.dir.join("agent-state"),
        &rig.cluster.dir.subdir("logs"),
        &["--nbd-listen", &socket.display().to_string()],
    );
    let offset = agent.log_len();
    agent.start();
    rig.agent = agent;
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    let log = read_from(rig.agent.log_path(), offset);
    assert!(!log.contains("resyncing"), "a clean restart must not resync:\n{log}");
    write_mixed_image(image, fs::metadata(image).unwrap().len(), 0xc0c0_0002);
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let finished = run_tool(
        "nbdcopy",
        &[image.into(), uri.into()],
        &rig.cluster.dir.subdir("logs"),
        CLIENT_TIMEOUT,
    );
    assert!(
        finished.status.success(),
        "nbdcopy over the unix socket failed\n{}",
        finished.describe()
    );
    assert_files_identical(image, &rig.source);
    rig.converge("after nbdcopy through the unix socket");
}

#[test]
fn ext4_through_nbdfuse_and_loop_replica_passes_fsck() {
    let tools =
        ["cmp", "nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fusermount3"];
    if !require_tools("ext4_through_nbdfuse", &tools) {
        return;
    }
    // The tools are installed by scripts/test; the device and the privilege are the
    // machine's. Every machine of this project's kind has both (CI runs as root).
    if !Path::new("/dev/fuse").exists() || !is_root() {
        eprintln!("SKIPPED ext4_through_nbdfuse: this machine lacks /dev/fuse or root");
        return;
    }
    let rig = TapRig::start("tap-ext4", 128 * MIB, None);
    let dir = &rig.cluster.dir;
    let logs = dir.subdir("logs");
    let attached = NbdLoop::attach(&rig.uri(), dir, "tap");
    let device = attached.device.clone();
    let fs_dir = attached.fs_dir.clone();
    attached.sh(&format!("mkfs.ext4 -q -F {device}"));
    attached.sh(&format!("mount {device} {}", fs_dir.display()));
    let files = write_seeded_tree(&fs_dir.join("tree"), 0xe4_0001, 24 * MIB, 2 * MIB);
    attached
        .sh(&format!("cp -r {0}/tree {0}/copy && rm -rf {0}/tree/d1 && sync", fs_dir.display()));
    eprintln!("wrote {files} files through ext4 on the tap");
    attached.detach();
    rig.converge("after the ext4 workload");
    let fsck = run_tool(
        "e2fsck",
        &["-fn".into(), rig.cluster.replica("d0").into()],
        &logs,
        CLIENT_TIMEOUT,
    );
    assert!(fsck.status.success(), "e2fsck of the replica failed\n{}", fsck.describe());
}

pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|status| status.lines().any(|line| line.starts_with("Uid:\t0\t")))
        .unwrap_or(false)
}

/// An NBD export as a block device: nbdfuse exposes it as a file, losetup makes that a loop
/// device, `fs_dir` is where a test may mount it. Undone on `detach` or drop (also when a
/// step panics).
pub(crate) struct NbdLoop {
    nbdfuse: Option<Running>,
    cleanup: Option<LoopCleanup>,
    pub(crate) device: String,
    pub(crate) fs_dir: PathBuf,
    logs: PathBuf,
}

impl NbdLoop {
    pub(crate) fn attach(uri: &str, dir: &TestDir, label: &str) -> NbdLoop {
        let mountpoint = dir.subdir(&format!("fuse-{label}"));
        let fs_dir = dir.subdir(&format!("fs-{label}"));
        let pidfile = dir.join(&format!("nbdfuse-{label}.pid"));
        let logs = dir.subdir("logs");
        let mut nbdfuse = Running::spawn_program(
            &tool("nbdfuse"),
            &["-P".into(), pidfile.clone().into(), mountpoint.join("disk").into(), uri.into()],
            &logs,
            "nbdfuse",
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pidfile.exists() || fs::metadata(&pidfile).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(nbdfuse.is_running() && Instant::now() < deadline, "nbdfuse did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut attached = NbdLoop {
            nbdfuse: Some(nbdfuse),
            cleanup: None,
            device: String::new(),
            fs_dir: fs_dir.clone(),
            logs,
        };
        let disk = mountpoint.join("disk");
        attached.device =
            attached.sh(&format!("losetup -f --show {}", disk.display())).trim().to_string();
        attached.cleanup =
            Some(LoopCleanup { device: attached.device.clone(), fs_dir, fuse_dir: mountpoint });
        attached
    }

    /// Runs a shell command, which must succeed; its standard output.
    pub(crate) fn sh(&self, command: &str) -> String {
        let finished = Running::spawn_program(
            Path::new("/bin/sh"),
            &["-c".into(), command.into()],
            &self.logs,
            "sh",
        )
        .wait(CLIENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("{command}: {error}"));
        assert!(finished.status.success(), "{command} failed\n{}", finished.describe());
        finished.stdout
    }

    /// Unmounts, detaches the loop device, ends nbdfuse.
    pub(crate) fn detach(mut self) {
        drop(self.cleanup.take());
        if let Some(nbdfuse) = self.nbdfuse.take() {
            let _ = nbdfuse.wait(Duration::from_secs(20));
        }
    }
}

impl Drop for NbdLoop {
    fn drop(&mut self) {
        // The file system and the loop device go before nbdfuse does.
        drop(self.cleanup.take());
    }
}

/// Unmounts, detaches the loop device and unmounts nbdfuse on drop.
struct LoopCleanup {
    device: String,
    fs_dir: PathBuf,
    fuse_dir: PathBuf,
}

impl Drop for LoopCleanup {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new(args[0]).args(&args[1..]).status();
        };
        run(&["umount", &self.fs_dir.display().to_string()]);
        run(&["losetup", "-d", &self.device]);
        run(&["fusermount3", "-u", &self.fuse_dir.display().to_string()]);
    }
}

#[test]
fn relay_down_writes_go_to_the_bitmap_and_converge() {
    if !require_tools("relay_down_bitmap", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 64 * MIB;
    let config = "[agent]\ncapture_buffer_bytes = \"1MiB\"\ndirty_grain_bytes = \"64KiB\"\n";
    let mut rig = TapRig::start("tap-relaydown", size, Some(config));
    let script = random_write_script(0xd0_0001, size, 800, 0);
    let started = Instant::now();
    rig.qemu_io(&["-t", "writeback"], &script, "relay-up");
    let up = started.elapsed();
    rig.converge("with the relay up");

    rig.cluster.relay.kill();
    let script = random_write_script(0xd0_0002, size, 800, 0);
    let started = Instant::now();
    rig.qemu_io(&["-t", "writeback"], &script, "relay-down");
    let down = started.elapsed();
    eprintln!("same workload: relay up {up:.2?}, relay down {down:.2?}");
    // The workload finished while the relay was down: the tap did not wait for it. The
    // writes are in the bitmap file, saved at the workload's flush.
    let bitmap = rig.cluster.dir.join("agent-state").join("d0.dirty");
    assert!(bitmap.exists(), "no dirty bitmap file\n{}", rig.agent_log_tail());
    assert!(
        files_identical(&rig.source, &rig.cluster.replica("d0")).is_err(),
        "the replica cannot have the writes made while the relay was down"
    );
    rig.cluster.relay.start();
    rig.converge("after the relay came back");
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    rig.agent.assert_running("after the relay outage");
}

#[test]
fn agent_kill9_mid_workload_resyncs_and_converges() {
    if !require_tools("agent_kill9_resync", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 64 * MIB;
    let mut rig = TapRig::start("tap-kill9", size, None);
    let script = random_write_script(0xdead_0001, size, 60_000, 0);
    let client =
        spawn_qemu_io(&rig.uri(), &["-t", "writeback"], &script, &rig.cluster.dir, "long-workload");
    std::thread::sleep(Duration::from_millis(1500));
    rig.agent.kill();
    // The client dies with the connection; whatever reached the source stays there.
    let _ = client.wait(Duration::from_secs(30));
    assert_ne!(
        rig.cluster.disk_state("d0").as_deref(),
        Some("protected"),
        "the relay must not claim protection for a disk whose agent vanished"
    );
    let log = rig.restart_agent_until_protected("no protected after restart");
    assert!(log.contains("did not shut down cleanly; resyncing"), "expected a resync:\n{log}");
    rig.converge("after kill -9 of the agent and its resync");
    // And it keeps capturing afterwards.
    rig.qemu_io(&[], &random_write_script(0xdead_0002, size, 200, 0), "after-restart");
    rig.converge("after writes following the resync");
}

#[test]
fn clean_stop_with_relay_down_drains_only_the_bitmap() {
    if !require_tools("clean_stop_drains_bitmap", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 64 * MIB;
    let mut rig = TapRig::start("tap-cleanstop", size, None);
    rig.cluster.relay.kill();
    rig.qemu_io(&[], &random_write_script(0x5709_0001, size, 300, 0), "while-down");
    rig.stop_agent_cleanly();
    assert!(rig.agent.log().contains("clean shutdown"), "{}", rig.agent_log_tail());
    rig.cluster.relay.start();
    let log = rig.restart_agent_until_protected("no protected after restart");
    assert!(log.contains("dirty since the last run; reading them back"), "{log}");
    assert!(!log.contains("checksum resync"), "a clean stop must not need a resync:\n{log}");
    rig.converge("after draining the bitmap");
}

#[test]
fn scan_mode_sends_changes_every_interval() {
    if !require_tools("scan_mode", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("scan");
    let source = cluster.dir.join("scan.img");
    write_mixed_image(&source, 32 * MIB, 0x5ca_0001);
    let mut args: Vec<OsString> = vec!["agent".into(), "--relay".into()];
    args.push(cluster.relay.addr().to_string().into());
    let mut disk = OsString::from("s0=");
    disk.push(&source);
    args.extend(["--disk".into(), disk, "--state-dir".into()]);
    args.push(cluster.dir.join("scan-state").into());
    args.extend(["--mode".into(), "scan".into(), "--interval".into(), "1".into()]);
    let _agent = Running::spawn(&args, &cluster.dir.subdir("logs"), "scan-agent");
    cluster.wait_replica_identical(&source, "s0", CONVERGE_TIMEOUT, "first scan");
    modify_regions(&source, 0x5ca_0002, 8, 128 * KIB);
    cluster.wait_replica_identical(&source, "s0", CONVERGE_TIMEOUT, "a later scan");
}

#[test]
fn relay_and_target_kill9_under_a_tap_workload() {
    if !require_tools("relay_target_kill9_tap", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 64 * MIB;
    let mut rig = TapRig::start("tap-serverkill", size, None);
    let reference = rig.cluster.dir.join("reference.img");
    fs::copy(&rig.source, &reference).expect("copy reference");
    let script = random_write_script(0x9e11_0001, size, 30_000, 5);
    let client = spawn_qemu_io(&rig.uri(), &["-t", "writeback"], &script, &rig.cluster.dir, "load");
    let mut rng = Rng::new(0x9e11_0002);
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
        let down = Duration::from_millis(rng.range(50, 500));
        if round % 2 == 0 {
            rig.cluster.relay.restart_after(down);
        } else {
            rig.cluster.target.restart_after(down);
        }
    }
    let finished = client.wait(CLIENT_TIMEOUT).unwrap_or_else(|error| panic!("workload {error}"));
    assert!(
        finished.status.success() && !finished.stdout.contains("failed"),
        "the client must not notice relay or target crashes\n{}",
        finished.describe()
    );
    qemu_io_script(
        &reference.display().to_string(),
        &["-t", "writeback"],
        &script,
        &rig.cluster.dir,
        "ref",
    );
    assert_files_identical(&reference, &rig.source);
    rig.converge("after kill -9 of relay and target during the workload");
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    rig.agent.assert_running("after the server crashes");
}

#[test]
fn grown_source_disk_forces_a_resync() {
    if !require_tools("grown_source_resync", &["cmp", "qemu-io"]) {
        return;
    }
    let mut rig = TapRig::start("tap-grow", 32 * MIB, None);
    rig.stop_agent_cleanly();
    let file = fs::OpenOptions::new().write(true).open(&rig.source).expect("open source");
    file.set_len(48 * MIB).expect("grow source");
    let mut tail_data = vec![0u8; MIB as usize];
    Rng::new(0x960_0001).fill(&mut tail_data);
    write_at(&rig.source, 47 * MIB, &tail_data);
    let log = rig.restart_agent_until_protected("no protected after the resize");
    assert!(log.contains("size changed to 50331648 bytes; resyncing"), "{log}");
    rig.converge("after growing the source");
    rig.qemu_io(&[], &random_write_script(0x960_0002, 48 * MIB, 200, 0), "after-grow");
    rig.converge("after writes to the grown disk");
}

#[test]
fn relay_cache_loss_leads_to_a_resync() {
    if !require_tools("relay_cache_loss", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 32 * MIB;
    let mut rig = TapRig::start("tap-cacheloss", size, None);
    // The target goes away: the relay acknowledges these writes from its cache alone.
    rig.cluster.target.kill();
    rig.qemu_io(&[], &random_write_script(0xcac_0001, size, 400, 0), "target-down");
    let cache = rig.cluster.dir.join("relay-cache");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(&cache).map(|dir| dir.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the relay cache never filled");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Then the relay loses its cache disk: acknowledged frames are gone.
    rig.cluster.relay.kill();
    fs::remove_dir_all(&cache).expect("wipe the relay cache");
    rig.cluster.target.start();
    let offset = rig.agent.log_len();
    rig.cluster.relay.start();
    rig.agent
        .wait_log_since(offset, PROTECT_TIMEOUT, |text| text.contains("it lost its cache"))
        .unwrap_or_else(|text| panic!("the agent did not notice the loss:\n{}", tail(&text, 40)));
    rig.converge("after the relay lost its cache");
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    assert!(
        rig.cluster.relay.log().contains("continuing from there"),
        "{}",
        rig.cluster.diagnostics()
    );
}

#[test]
fn damaged_bitmap_after_a_clean_stop_forces_a_resync() {
    if !require_tools("damaged_bitmap_resync", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 32 * MIB;
    let mut rig = TapRig::start("tap-badbitmap", size, None);
    rig.cluster.relay.kill();
    rig.qemu_io(&[], &random_write_script(0xbad_0001, size, 200, 0), "while-down");
    rig.stop_agent_cleanly();
    // The bitmap file is damaged while the agent is down (a torn write, a bad sector).
    let bitmap = rig.cluster.dir.join("agent-state").join("d0.dirty");
    let mut bytes = fs::read(&bitmap).expect("read bitmap");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(&bitmap, &bytes).expect("damage bitmap");
    rig.cluster.relay.start();
    let log = rig.restart_agent_until_protected("no protected after restart");
    assert!(log.contains("is unverifiable: checksum mismatch"), "{log}");
    assert!(log.contains("checksum resync done"), "{log}");
    rig.converge("after a resync replaced the damaged bitmap");
}

#[test]
fn agent_restart_against_a_relay_that_lost_its_cache_continues_the_sequence() {
    if !require_tools("restart_after_cache_loss", &["cmp", "qemu-io"]) {
        return;
    }
    let size = 32 * MIB;
    let mut rig = TapRig::start("tap-restart-loss", size, None);
    rig.qemu_io(&[], &random_write_script(0x7e5_0001, size, 300, 0), "before");
    rig.converge("before the stop");
    rig.stop_agent_cleanly();
    // While the agent is stopped the relay is rebuilt with an empty cache: it has no record of
    // the disk, and the target holds hundreds of frames of its history.
    rig.cluster.relay.kill();
    fs::remove_dir_all(rig.cluster.dir.join("relay-cache")).expect("wipe the relay cache");
    rig.cluster.relay.start();
    rig.restart_agent_until_protected("restart against the new relay");
    rig.qemu_io(&[], &random_write_script(0x7e5_0002, size, 300, 0), "after");
    rig.converge("writes after the restart must reach the replica");
    assert!(
        rig.cluster.relay.log().contains("continuing from there"),
        "{}",
        rig.cluster.diagnostics()
    );
}
