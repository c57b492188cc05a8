//! `siterelay quickstart`: the whole data path on one machine. Makes a sample disk, runs a
//! target, a relay and an agent on loopback (in this process, on the embedded default
//! configuration), replicates, verifies the replica byte for byte, changes the sample, resyncs,
//! verifies again, then captures a workload's writes continuously through the NBD write tap
//! and verifies the replica once more.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::nbd_client;

const DEFAULT_SIZE_BYTES: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("quickstart", rest, &[("dir", true), ("size", true)])?;
    let mut config = config::Config::default();
    // The quickstart keeps only the newest recovery point, so the replica image itself is
    // the source as of that point and a plain byte compare verifies it.
    config.target.point_interval_secs = 1;
    config.target.retention = config::RetentionConfig {
        keep_all_secs: 0,
        bucket_secs: 1,
        window_secs: 1,
        app_consistent_count: 0,
    };
    crate::logger::init(log::LevelFilter::Warn);
    let size = match args.value("size") {
        Some(text) => config::parse_byte_size(text).map_err(|error| format!("--size: {error}"))?,
        None => DEFAULT_SIZE_BYTES,
    };
    if size < 64 * MIB {
        return Err("--size must be at least 64 MiB".into());
    }
    let dir = match args.value("dir") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("siterelay-quickstart-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    // Every run starts from scratch: state left by an earlier run (maybe of another version)
    // would turn the demo into a resync of that run's disk.
    for stale in
        ["target", "relay-cache", "agent-state", "tap.sock", "target-pki", "relay-pki", "agent-pki"]
    {
        let path = dir.join(stale);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    println!("siterelay quickstart in {}", dir.display());

    let sample = dir.join("sample-disk.img");
    step(
        "1/7",
        &format!(
            "creating a {} sample disk (ext4 with files, text, zeros, random data)",
            config::format_byte_size(size)
        ),
    );
    let has_ext4 = make_sample(&dir, &sample, size)?;

    step("2/7", "starting target and relay on loopback");
    let target_pki = dir.join("target-pki");
    let target_ca = pki::Authority::open(&target_pki, pki::CaKind::Target, "quickstart")
        .map_err(|error| error.to_string())?;
    let target_options = target::TargetOptions {
        at_rest: None,
        tls: Some(Arc::new(target_ca)),
        listen: "127.0.0.1:0".parse().expect("literal"),
        data_dir: dir.join("target"),
        group_commit_bytes_max: config.target.group_commit_bytes_max as usize,
        retention: crate::roles::retention_options(&config.target),
    };
    let target = target::Target::bind(&target_options).map_err(|error| error.to_string())?;
    let target_addr = target.local_addr();
    std::thread::spawn(move || target.serve());
    let relay_pki = dir.join("relay-pki");
    register(&target_pki, target_addr, "quickstart-relay", wire::Role::Relay, &relay_pki)?;
    let relay_ca = pki::Authority::open(&relay_pki, pki::CaKind::Relay, "quickstart")
        .map_err(|error| error.to_string())?;
    let mut relay_options = crate::roles::relay_options(&config.relay);
    relay_options.listen = "127.0.0.1:0".parse().expect("literal");
    relay_options.target = target_addr;
    relay_options.cache_dir = dir.join("relay-cache");
    relay_options.upstream_tls =
        Some(pki::PkiDir::new(&relay_pki).upstream_config().map_err(|error| error.to_string())?);
    relay_options.tls = Some(Arc::new(relay_ca));
    let relay = relay::Relay::bind(relay_options).map_err(|error| error.to_string())?;
    let relay_addr = relay.local_addr();
    std::thread::spawn(move || {
        if let Err(error) = relay.serve() {
            log::error!("relay stopped: {error}");
        }
    });
    println!(
        "      target {target_addr} (data in {}), relay {relay_addr} (cache in {})",
        dir.join("target").display(),
        dir.join("relay-cache").display()
    );

    let agent_pki = dir.join("agent-pki");
    register(&relay_pki, relay_addr, "quickstart-agent", wire::Role::Agent, &agent_pki)?;
    for (addr, pki) in [(target_addr, &target_pki), (relay_addr, &relay_pki)] {
        crate::security::set_operator_credential(addr, crate::security::admin_tls(pki)?);
    }
    println!(
        "      mutual TLS 1.3: the relay registered with the target and the agent with the \
         relay, each with a one-time passphrase"
    );
    let mut agent_config = config.clone();
    agent_config.security.pki_dir = agent_pki;
    agent_config.agent.relay = relay_addr;
    agent_config.agent.state_dir = dir.join("agent-state");
    agent_config.agent.disks =
        vec![config::DiskConfig { name: "sample".into(), path: sample.clone() }];
    let mut options = crate::roles::agent_options(&agent_config, true)?;
    // The quickstart shows the product as deployed: TLS even when SITERELAY_PLAINTEXT is set.
    options.tls = Some(
        pki::PkiDir::new(&agent_config.security.pki_dir)
            .upstream_config()
            .map_err(|error| error.to_string())?,
    );
    let replica = target::replica_path(&dir.join("target"), "sample");

    step("3/7", "initial sync agent -> relay -> target");
    let started = Instant::now();
    let reports = agent::sync_once(&options).map_err(|error| error.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    crate::roles::print_report(&reports[0]);
    let status = crate::status::fetch_json(relay_addr)?;
    let disk = &status["disks"][0];
    let received = disk["bytes_received"].as_u64().unwrap_or(0);
    let stored = disk["bytes_stored"].as_u64().unwrap_or(0).max(1);
    println!(
        "      {:.0} MB/s end to end ({:.2} s); {} MiB of data compressed to {} MiB (ratio {:.2}); {} MiB of zero blocks sent as extents",
        size as f64 / seconds / 1e6,
        seconds,
        received / MIB,
        stored / MIB,
        received as f64 / stored as f64,
        reports[0].zero_bytes / MIB
    );
    verify(&sample, &replica)?;

    step("4/7", "changing 3 regions of the sample disk and resyncing (checksums, only differing blocks move)");
    change_sample(&sample, size)?;
    let reports = agent::sync_once(&options).map_err(|error| error.to_string())?;
    crate::roles::print_report(&reports[0]);
    verify(&sample, &replica)?;

    step("5/7", "continuous capture: a workload writes through the NBD write tap");
    continuous(&dir, &options, relay_addr, &sample, &replica, size)?;

    step("6/7", "recovery: test failover of the newest point, read over NBD and verified");
    test_failover(&dir, target_addr, &sample, &replica)?;

    step("7/7", "done");
    println!("      source:  {}", sample.display());
    println!("      replica: {}", replica.display());
    if has_ext4 {
        println!(
            "      check it yourself: cmp {} {} && e2fsck -fn {}",
            sample.display(),
            replica.display(),
            replica.display()
        );
    } else {
        println!("      check it yourself: cmp {} {}", sample.display(), replica.display());
    }
    println!("      remove the files with: rm -r {}", dir.display());
    Ok(())
}

/// Runs the capturing agent, waits for `protected`, writes 64 MiB through the tap as a
/// client would, and checks the replica catches up.
fn continuous(
    dir: &Path,
    options: &agent::AgentOptions,
    relay_addr: std::net::SocketAddr,
    sample: &Path,
    replica: &Path,
    size: u64,
) -> Result<(), String> {
    let socket = dir.join("tap.sock");
    let capture = agent::CaptureOptions {
        tap: agent::TapAddr::Unix(socket.clone()),
        buffer_bytes: config::Config::default().agent.capture_buffer_bytes,
        grain_bytes: config::Config::default().agent.dirty_grain_bytes,
        connections_max: 4,
        app_consistent: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let agent_options = agent::AgentOptions { progress: false, ..options.clone() };
    let agent_stop = Arc::clone(&stop);
    let agent =
        std::thread::spawn(move || agent::run_continuous(&agent_options, &capture, agent_stop));
    let result = (|| -> Result<(), String> {
        wait_for_state(relay_addr, "protected", Duration::from_secs(120))?;
        println!("      tap at nbd+unix:///?socket={} (protected)", socket.display());
        let mut client = nbd_client::NbdClient::connect(&socket)?;
        let mut noise = Noise(99);
        let mut block = vec![0u8; 256 << 10];
        let quarter = size / 4 / MIB * MIB;
        let started = Instant::now();
        let writes = 256u64;
        for index in 0..writes {
            noise.fill(&mut block);
            let slot = noise.0 % ((size - 3 * quarter) / block.len() as u64);
            client.write(3 * quarter + slot * block.len() as u64, &block)?;
            if index % 64 == 63 {
                client.flush()?;
            }
        }
        let written = started.elapsed();
        drop(client);
        let caught_up = wait_identical(sample, replica, 3 * quarter, Duration::from_secs(120))?;
        println!(
            "      {writes} writes of 256 KiB in {:.2} s ({:.0} MB/s at the client, never waiting for the relay); replica caught up {:.0} ms after the last write",
            written.as_secs_f64(),
            (writes * block.len() as u64) as f64 / written.as_secs_f64() / 1e6,
            caught_up.as_secs_f64() * 1000.0
        );
        Ok(())
    })();
    stop.store(true, Ordering::Release);
    let stopped = agent.join().map_err(|_| "the agent thread panicked".to_string())?;
    result?;
    stopped.map_err(|error| error.to_string())?;
    verify(sample, replica)
}

/// Exports the newest recovery point read-write (copy-on-write) as a DR drill would, reads it
/// back through NBD, checks a write to it stays out of the replica, and cleans up.
fn test_failover(
    dir: &Path,
    target: std::net::SocketAddr,
    sample: &Path,
    replica: &Path,
) -> Result<(), String> {
    use serde_json::json;
    let points = crate::operate::control(target, json!({ "op": "points", "disk": "sample" }))?;
    let count = points["disks"][0]["points"].as_array().map_or(0, Vec::len);
    let socket = dir.join("point.sock");
    let _ = std::fs::remove_file(&socket);
    let request = json!({
        "op": "test-failover",
        "disk": "sample",
        "point": "latest",
        "nbd_listen": socket.to_str().ok_or("the quickstart directory is not UTF-8")?,
    });
    let job = crate::operate::control(target, request)?;
    println!(
        "      {count} recovery point(s) kept (the quickstart keeps the newest only); point {} exported at {}",
        job["point"],
        job["export"].as_str().unwrap_or("?")
    );
    let result = (|| -> Result<(), String> {
        let mut client = nbd_client::NbdClient::connect(&socket)?;
        let mut source = File::open(sample).map_err(|error| error.to_string())?;
        let size = source.metadata().map_err(|error| error.to_string())?.len();
        let started = Instant::now();
        let (mut ours, mut theirs) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
        let mut offset = 0u64;
        while offset < size {
            let len = ours.len().min((size - offset) as usize);
            client.read(offset, &mut theirs[..len])?;
            source.read_exact(&mut ours[..len]).map_err(|error| error.to_string())?;
            if ours[..len] != theirs[..len] {
                return Err(format!(
                    "verification FAILED: the point differs from the source near byte {offset}"
                ));
            }
            offset += len as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        let head = |path: &Path| -> Result<Vec<u8>, String> {
            let mut bytes = vec![0u8; 4096];
            let mut file = File::open(path).map_err(|error| error.to_string())?;
            file.read_exact(&mut bytes).map_err(|error| error.to_string())?;
            Ok(bytes)
        };
        let before = head(replica)?;
        client.write(0, &[0x5a; 4096])?;
        client.flush()?;
        let mut check = [0u8; 4096];
        client.read(0, &mut check)?;
        drop(client);
        let after = head(replica)?;
        if check != [0x5a; 4096] || before != after {
            return Err("verification FAILED: the test write did not stay in the export".into());
        }
        println!(
            "      read {} MiB back through NBD in {seconds:.2} s: identical to the source; a write to the export left the replica untouched",
            size / MIB
        );
        Ok(())
    })();
    let id = job["id"].as_u64().unwrap_or(0);
    crate::operate::control(target, json!({ "op": "cleanup", "job": id }))?;
    println!("      test failover cleaned up (export stopped, its writes discarded)");
    result
}

fn wait_for_state(
    relay: std::net::SocketAddr,
    state: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = crate::status::fetch_json(relay)?;
        if status["disks"][0]["state"] == state {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the disk did not become {state} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the replica equals the source from byte `from` on (the part the workload
/// wrote); returns how long that took.
fn wait_identical(
    source: &Path,
    replica: &Path,
    from: u64,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let read_tail = |path: &Path| -> Option<Vec<u8>> {
        let file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let mut buf = vec![0u8; len.checked_sub(from)? as usize];
        file.read_exact_at(&mut buf, from).ok()?;
        Some(buf)
    };
    loop {
        if read_tail(source).is_some_and(|tail| Some(tail) == read_tail(replica)) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Err(format!("the replica did not catch up within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn step(number: &str, text: &str) {
    println!("[{number}] {text}");
}

/// A deterministic xorshift stream: quick, incompressible enough, reproducible.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Layout: a quarter ext4 (when mkfs.ext4 exists), then compressible text, zeros, random.
fn make_sample(dir: &Path, sample: &Path, size: u64) -> Result<bool, String> {
    let fail = |error: std::io::Error| format!("{}: {error}", sample.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(sample)
        .map_err(fail)?;
    file.set_len(size).map_err(fail)?;
    let quarter = size / 4 / MIB * MIB;
    let has_ext4 = make_ext4(dir, &file, quarter)?;
    let mut chunk = vec![0u8; 4 << 20];
    let mut line = 0u64;
    let mut offset = quarter;
    while offset < 2 * quarter {
        let mut text = String::with_capacity(chunk.len() + 200);
        while text.len() < chunk.len() {
            line += 1;
            text += &format!("2026-11-28T12:{:02}:{:02}Z relay[{}]: disk sample block {} replicated, backlog {} frames\n", line / 60 % 60, line % 60, line % 7, line * 16, line % 13);
        }
        let len = chunk.len().min((2 * quarter - offset) as usize);
        file.write_all_at(&text.as_bytes()[..len], offset).map_err(fail)?;
        offset += len as u64;
    }
    // Zeros from 2*quarter to 3*quarter are already there (sparse).
    let mut noise = Noise(0x5EED_5EED_1234_5678);
    offset = 3 * quarter;
    while offset < size {
        let len = chunk.len().min((size - offset) as usize);
        noise.fill(&mut chunk[..len]);
        file.write_all_at(&chunk[..len], offset).map_err(fail)?;
        offset += len as u64;
    }
    file.sync_all().map_err(fail)?;
    Ok(has_ext4)
}

fn make_ext4(dir: &Path, sample: &File, size: u64) -> Result<bool, String> {
    let files = dir.join("sample-files");
    let image = dir.join("sample-ext4.img");
    let fail = |error: std::io::Error| format!("{}: {error}", files.display());
    std::fs::create_dir_all(files.join("etc")).map_err(fail)?;
    std::fs::create_dir_all(files.join("var/lib/app")).map_err(fail)?;
    std::fs::write(files.join("etc/hostname"), "protected-vm\n").map_err(fail)?;
    let mut noise = Noise(42);
    for index in 0..32 {
        let mut data = vec![0u8; 256 << 10];
        noise.fill(&mut data);
        std::fs::write(files.join(format!("var/lib/app/data-{index:02}.bin")), &data)
            .map_err(fail)?;
    }
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(&image)
        .arg(format!("{}k", size / 1024))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(made, Ok(status) if status.success()) {
        println!("      (mkfs.ext4 not found: the sample has no file system)");
        return Ok(false);
    }
    let mut fs = File::open(&image).map_err(|error| format!("{}: {error}", image.display()))?;
    let mut chunk = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let read = fs.read(&mut chunk).map_err(|error| format!("{}: {error}", image.display()))?;
        if read == 0 {
            break;
        }
        if !wire::is_zero(&chunk[..read]) {
            sample.write_all_at(&chunk[..read], offset).map_err(|error| error.to_string())?;
        }
        offset += read as u64;
    }
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir_all(&files);
    Ok(true)
}

fn change_sample(sample: &Path, size: u64) -> Result<(), String> {
    let file = OpenOptions::new().write(true).open(sample).map_err(|error| error.to_string())?;
    let mut noise = Noise(7);
    let mut block = vec![0u8; 1 << 20];
    for offset in [size / 2 + 3 * MIB, size / 3, size - 5 * MIB] {
        noise.fill(&mut block);
        file.write_all_at(&block, offset).map_err(|error| error.to_string())?;
    }
    file.sync_all().map_err(|error| error.to_string())
}

/// Compares the two files byte for byte, giving the target a moment to prune the newest
/// point into the replica image (it does so right after acknowledging it).
fn verify(source: &Path, replica: &Path) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match compare(source, replica) {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            result => return result,
        }
    }
}

fn compare(source: &Path, replica: &Path) -> Result<(), String> {
    let open =
        |path: &Path| File::open(path).map_err(|error| format!("{}: {error}", path.display()));
    let (mut a, mut b) = (open(source)?, open(replica)?);
    let (len_a, len_b) = (
        a.metadata().map_err(|e| e.to_string())?.len(),
        b.metadata().map_err(|e| e.to_string())?.len(),
    );
    if len_a != len_b {
        return Err(format!("verification FAILED: source has {len_a} bytes, replica {len_b}"));
    }
    let mut buf_a = vec![0u8; 4 << 20];
    let mut buf_b = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    while offset < len_a {
        let len = buf_a.len().min((len_a - offset) as usize);
        a.read_exact(&mut buf_a[..len]).map_err(|error| error.to_string())?;
        b.read_exact(&mut buf_b[..len]).map_err(|error| error.to_string())?;
        if buf_a[..len] != buf_b[..len] {
            let at = buf_a[..len].iter().zip(&buf_b[..len]).position(|(x, y)| x != y).unwrap_or(0)
                as u64
                + offset;
            return Err(format!("verification FAILED: replica differs from source at byte {at}"));
        }
        offset += len as u64;
    }
    println!("      verified: replica is identical to the source ({len_a} bytes compared)");
    Ok(())
}

/// Registers a node with a peer the way an operator does: a passphrase made on the peer,
/// presented once by the node.
fn register(
    peer_pki: &Path,
    peer: std::net::SocketAddr,
    name: &str,
    role: wire::Role,
    node_pki: &Path,
) -> Result<(), String> {
    let passphrase =
        pki::PkiDir::new(peer_pki).new_passphrase(600).map_err(|error| error.to_string())?;
    pki::register::register_with(
        peer,
        name,
        role,
        &passphrase,
        &pki::PkiDir::new(node_pki),
        Duration::from_secs(15),
    )
    .map_err(|error| error.to_string())
}
