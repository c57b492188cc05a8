//! Hardware qualification: checks that a machine can run the appliance's roles (design.md
//! §7): io_uring and the opcodes the relay submits, O_DIRECT on the cache disk, the cache
//! disk's size and sustained write rate, cores and memory against the configured load, and
//! clock synchronisation. Each check passes, warns or fails with a sentence saying why;
//! the appliance runs them at boot and reports them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Warn(String),
    Fail(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Pass(_) => "pass",
            Outcome::Warn(_) => "warn",
            Outcome::Fail(_) => "fail",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Pass(text) | Outcome::Warn(text) | Outcome::Fail(text) => text,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// What the machine is checked against.
#[derive(Debug, Clone)]
pub struct Load {
    /// The relay's cache directory (its disk is tested).
    pub cache_dir: PathBuf,
    /// The configured cache size.
    pub cache_bytes_max: u64,
    /// Disks the relay is configured to serve (`relay.disks_max`): drives the core and memory
    /// recommendation.
    pub disks: u64,
    /// Bytes written for the throughput test.
    pub write_test_bytes: u64,
}

/// Sustained cache writes below this cannot keep up with a busy site.
pub const CACHE_WRITE_MB_S_MIN: f64 = 50.0;
const MIB: u64 = 1 << 20;

/// Every check, in order.
pub fn run(load: &Load) -> Vec<Check> {
    vec![
        io_uring(),
        o_direct(&load.cache_dir),
        cache_size(load),
        cache_write(load),
        cpu_memory(load),
        clock(),
    ]
}

/// The relay's io_uring needs: ring creation and every opcode it submits.
pub fn io_uring() -> Check {
    let outcome = match uring::Ring::new(16) {
        Ok(_) => Outcome::Pass("ring created, every opcode the relay submits is supported".into()),
        Err(error) => Outcome::Fail(error.to_string()),
    };
    Check { name: "io_uring", outcome }
}

fn probe_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".hwtest-{name}-{}", std::process::id()))
}

/// A 4 KiB-aligned, 4 KiB buffer of `byte`, without unsafe: a window into a larger vector.
fn aligned_block(storage: &mut Vec<u8>, byte: u8) -> &mut [u8] {
    storage.clear();
    storage.resize(8192, byte);
    let start = storage.as_ptr() as usize;
    let skip = (4096 - start % 4096) % 4096;
    &mut storage[skip..skip + 4096]
}

/// O_DIRECT writes on the cache disk (the cache's durability path avoids the page cache).
pub fn o_direct(cache_dir: &Path) -> Check {
    let path = probe_file(cache_dir, "direct");
    let outcome = (|| -> std::io::Result<()> {
        fs::create_dir_all(cache_dir)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let mut storage = Vec::new();
        file.write_all(aligned_block(&mut storage, 0x5a))?;
        file.sync_data()
    })();
    let _ = fs::remove_file(&path);
    let outcome = match outcome {
        Ok(()) => Outcome::Pass(format!("aligned O_DIRECT write to {} works", cache_dir.display())),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Outcome::Warn(format!(
            "{} does not support O_DIRECT (tmpfs?): the cache disk must be a real file system",
            cache_dir.display()
        )),
        Err(error) => Outcome::Fail(format!("O_DIRECT write in {}: {error}", cache_dir.display())),
    };
    Check { name: "cache_o_direct", outcome }
}

/// The cache file system can hold the configured cache.
pub fn cache_size(load: &Load) -> Check {
    let outcome = match nix_statvfs(&load.cache_dir) {
        Ok((total, _)) if total < load.cache_bytes_max => Outcome::Fail(format!(
            "{} holds {} MiB, less than the configured cache of {} MiB (relay.cache_bytes_max)",
            load.cache_dir.display(),
            total / MIB,
            load.cache_bytes_max / MIB
        )),
        Ok((_, available)) if available < load.cache_bytes_max => Outcome::Warn(format!(
            "{} has {} MiB free, less than the configured cache of {} MiB",
            load.cache_dir.display(),
            available / MIB,
            load.cache_bytes_max / MIB
        )),
        Ok((total, available)) => Outcome::Pass(format!(
            "{} MiB, {} MiB free, for a cache of {} MiB",
            total / MIB,
            available / MIB,
            load.cache_bytes_max / MIB
        )),
        Err(error) => Outcome::Fail(format!("cannot stat {}: {error}", load.cache_dir.display())),
    };
    Check { name: "cache_size", outcome }
}

fn nix_statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    fs::create_dir_all(dir)?;
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let fragment = stat.fragment_size() as u64;
    Ok((stat.blocks() as u64 * fragment, stat.blocks_available() as u64 * fragment))
}

/// Sustained write rate of the cache disk: `write_test_bytes` in 4 MiB writes, synced.
pub fn cache_write(load: &Load) -> Check {
    let path = probe_file(&load.cache_dir, "write");
    let measured = (|| -> std::io::Result<f64> {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        let chunk = vec![0xa5u8; 4 * MIB as usize];
        let started = Instant::now();
        let mut written = 0u64;
        while written < load.write_test_bytes {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok(written as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-6))
    })();
    let _ = fs::remove_file(&path);
    let outcome = match measured {
        Ok(rate) if rate < CACHE_WRITE_MB_S_MIN => Outcome::Warn(format!(
            "{rate:.0} MB/s sustained writes, below {CACHE_WRITE_MB_S_MIN:.0} MB/s: the cache may \
             fill during bursts"
        )),
        Ok(rate) => Outcome::Pass(format!("{rate:.0} MB/s sustained writes (synced)")),
        Err(error) => Outcome::Fail(format!("write test in {}: {error}", load.cache_dir.display())),
    };
    Check { name: "cache_write", outcome }
}

/// Cores and memory against the load: two cores and 1 GiB, plus a core per 64 disks and
/// 16 MiB of memory per disk.
pub fn cpu_memory(load: &Load) -> Check {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let cores_needed = 2 + load.disks / 64;
    let memory_needed = 1024 * MIB + load.disks * 16 * MIB;
    let found = format!("{cores} cores, {} MiB of memory", memory / MIB);
    let needed =
        format!("{cores_needed} cores and {} MiB for {} disks", memory_needed / MIB, load.disks);
    let outcome = if cores < cores_needed || memory < memory_needed {
        Outcome::Warn(format!("{found}; recommended {needed}"))
    } else {
        Outcome::Pass(format!("{found}; {needed} recommended"))
    };
    Check { name: "cpu_memory", outcome }
}

/// Clock synchronisation (recovery points carry wall-clock times; retention uses them).
pub fn clock() -> Check {
    let outcome = match read_time_status() {
        Some(unsynchronised) if unsynchronised => Outcome::Warn(
            "the kernel reports the clock as not synchronised (no NTP): recovery point times \
             and retention may drift"
                .into(),
        ),
        Some(_) => Outcome::Pass("the kernel reports the clock as synchronised".into()),
        None => Outcome::Warn("cannot read the clock's synchronisation status".into()),
    };
    Check { name: "clock", outcome }
}

/// `Some(true)` when the kernel flags the clock unsynchronised (STA_UNSYNC or TIME_ERROR).
fn read_time_status() -> Option<bool> {
    let mut timex = nix::libc::timex { modes: 0, ..zeroed_timex() };
    // SAFETY: `timex` is a valid, initialised struct the kernel reads `modes` (0: change
    // nothing) from and fills in; the pointer is live for the call.
    let state = unsafe { nix::libc::adjtimex(&mut timex) };
    if state < 0 {
        return None;
    }
    Some(state == nix::libc::TIME_ERROR || timex.status & nix::libc::STA_UNSYNC != 0)
}

fn zeroed_timex() -> nix::libc::timex {
    // SAFETY: `timex` is a plain C struct of integers, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// The checks as JSON (`siterelay hwtest --json`).
pub fn to_json(checks: &[Check]) -> String {
    let mut out = String::from("{\"checks\":[");
    for (index, check) in checks.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"name\":\"{}\",\"outcome\":\"{}\",\"detail\":\"{}\"}}",
            check.name,
            check.outcome.as_str(),
            json_escape(check.outcome.detail())
        ));
    }
    out.push_str("]}");
    out
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay cannot run without io_uring, so neither can its tests: fail loudly here.
    #[test]
    fn io_uring_is_usable_on_this_machine() {
        assert!(matches!(super::io_uring().outcome, Outcome::Pass(_)));
    }

    fn load(dir: &Path, cache: u64) -> Load {
        Load {
            cache_dir: dir.to_path_buf(),
            cache_bytes_max: cache,
            disks: 4,
            write_test_bytes: 8 * MIB,
        }
    }

    #[test]
    fn every_check_reports_and_leaves_no_files() {
        let dir = std::env::temp_dir().join(format!("hwtest-{}", std::process::id()));
        let checks = run(&load(&dir, 64 * MIB));
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["io_uring", "cache_o_direct", "cache_size", "cache_write", "cpu_memory", "clock"]
        );
        assert!(checks.iter().all(|c| !c.outcome.detail().is_empty()));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "probe files left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cache_larger_than_its_disk_fails_by_name() {
        let dir = std::env::temp_dir().join(format!("hwtest-size-{}", std::process::id()));
        let check = cache_size(&load(&dir, 1 << 62));
        assert_eq!(check.outcome.as_str(), "fail");
        assert!(check.outcome.detail().contains("less than the configured cache"), "{:?}", check);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_names_every_check_and_escapes() {
        let checks = [Check { name: "x", outcome: Outcome::Warn("say \"hi\"\n".into()) }];
        assert_eq!(
            to_json(&checks),
            r#"{"checks":[{"name":"x","outcome":"warn","detail":"say \"hi\"\u000a"}]}"#
        );
    }
}
