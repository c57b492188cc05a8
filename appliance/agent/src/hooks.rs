//! Freeze and thaw hooks for app-consistent recovery points.
//!
//! Before an app-consistent marker the agent runs a configured freeze command (for example
//! `fsfreeze -f /mnt/data` or an application script), inserts the marker, then runs the thaw
//! command. A hook must never leave the workload stuck:
//!
//! - every hook runs with a timeout, in its own process group, and a timeout kills the whole
//!   group (SIGKILL), so helpers the hook started go too;
//! - if freeze fails or times out, thaw runs anyway (to undo a partial freeze) and the point is
//!   taken crash-consistent, with a warning;
//! - thaw has its own timeout, and a thaw failure is logged as an error;
//! - between freeze and thaw the caller only inserts the marker, so the freeze window is short.
//!
//! Output is drained concurrently (a chatty hook never blocks on a full pipe) and only the last
//! [`OUTPUT_TAIL_BYTES`] of each stream are kept.

use std::fmt;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How much of each output stream (stdout, stderr) is kept: the tail, at most this many bytes.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// After the hook's shell exits, how long to wait for the output readers to reach the end of
/// the pipes. They normally finish at once; they only wait longer when a background process the
/// hook started still holds the pipes open, and then the hook must not be held up by it.
const READ_GRACE: Duration = Duration::from_millis(100);

/// After a timeout kill, how long to wait for the shell to be reaped. A process in
/// uninterruptible sleep (a freeze stuck in the kernel) may not die at once; the agent goes on
/// regardless (to run thaw) and a background thread reaps it later.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// A configured hook command, run as `/bin/sh -c COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
}

/// How one run of a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Exited with status 0.
    Ok,
    /// Exited non-zero or was killed by a signal (not by us).
    Failed { status: String, stderr_tail: String },
    /// Did not finish within its timeout; its process group was killed.
    TimedOut { after: Duration },
    /// Rejected or could not be started.
    SpawnFailed(String),
}

impl HookOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, HookOutcome::Ok)
    }

    /// A message naming the hook and its command, e.g.
    /// `freeze hook "fsfreeze -f /mnt" timed out after 5 s and was killed`.
    pub fn describe<'a>(&'a self, label: &'a str, hook: &'a Hook) -> DescribedOutcome<'a> {
        DescribedOutcome { label, command: &hook.command, outcome: self }
    }
}

/// The problem alone (without the hook's name and command; see [`HookOutcome::describe`]).
impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Ok => write!(f, "succeeded"),
            HookOutcome::Failed { status, stderr_tail } if stderr_tail.is_empty() => {
                write!(f, "failed ({status}, no output on stderr)")
            }
            HookOutcome::Failed { status, stderr_tail } => {
                write!(f, "failed ({status}): {stderr_tail}")
            }
            HookOutcome::TimedOut { after } => {
                write!(f, "timed out after {} and was killed", human_duration(*after))
            }
            HookOutcome::SpawnFailed(reason) => write!(f, "could not be started: {reason}"),
        }
    }
}

/// [`HookOutcome`] displayed with the hook's label and command.
#[derive(Debug, Clone, Copy)]
pub struct DescribedOutcome<'a> {
    label: &'a str,
    command: &'a str,
    outcome: &'a HookOutcome,
}

impl fmt::Display for DescribedOutcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hook {:?} {}", self.label, self.command, self.outcome)
    }
}

/// Runs `hook` to completion or until its timeout, whichever comes first. `label` ("freeze",
/// "thaw") names the hook in log messages.
///
/// Returns shortly after the shell exits even if a background process it started keeps the
/// output pipes open. After a timeout it returns within [`KILL_GRACE`] of the kill even if the
/// process does not die (a kernel-side hang); it is then reaped in the background.
pub fn run_hook(label: &str, hook: &Hook) -> HookOutcome {
    if hook.command.trim().is_empty() {
        return HookOutcome::SpawnFailed("the command is empty; nothing to run".to_string());
    }
    if hook.timeout.is_zero() {
        return HookOutcome::SpawnFailed("the timeout is zero".to_string());
    }
    let started = Instant::now();
    let deadline = started.checked_add(hook.timeout);
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(&hook.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return HookOutcome::SpawnFailed(format!("/bin/sh: {error}")),
    };
    // The shell leads its own process group, so its pid is the group id.
    let group = Pid::from_raw(child.id() as i32);

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let stdout = Arc::new(Mutex::new(Tail::default()));
    let stderr = Arc::new(Mutex::new(Tail::default()));
    let mut readers = 0;
    let mut setup_error = None;
    let started_readers = [
        child.stdout.take().map(|pipe| spawn_reader(label, "out", pipe, &stdout, &done_tx)),
        child.stderr.take().map(|pipe| spawn_reader(label, "err", pipe, &stderr, &done_tx)),
    ];
    for started_reader in started_readers.into_iter().flatten() {
        match started_reader {
            Ok(()) => readers += 1,
            Err(error) => setup_error = Some(format!("cannot start an output reader: {error}")),
        }
    }
    drop(done_tx);

    // A waiter thread reaps the shell, so its exit is seen at once (no polling latency inside
    // the freeze window) and a process that cannot be killed never holds this thread.
    let (exit_tx, exit_rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    if setup_error.is_none() {
        let spawned = std::thread::Builder::new().name(format!("hook-{label}-wait")).spawn({
            let mut child = child;
            move || {
                let _ = exit_tx.send(child.wait());
            }
        });
        if let Err(error) = spawned {
            setup_error = Some(format!("cannot start the waiter: {error}"));
        }
    }
    if let Some(reason) = setup_error {
        kill_group(label, group);
        return HookOutcome::SpawnFailed(reason);
    }

    let waited = match deadline {
        Some(deadline) => exit_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        None => exit_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    };
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            // Not expected for a child we own; do not leave anything behind.
            kill_group(label, group);
            return HookOutcome::Failed {
                status: format!("cannot wait for it: {error}"),
                stderr_tail: String::new(),
            };
        }
        Err(RecvTimeoutError::Disconnected) => {
            kill_group(label, group);
            return HookOutcome::Failed {
                status: "its waiter thread ended without a status".to_string(),
                stderr_tail: String::new(),
            };
        }
        Err(RecvTimeoutError::Timeout) => {
            kill_group(label, group);
            if exit_rx.recv_timeout(KILL_GRACE).is_err() {
                log::error!(
                    "{label} hook {:?} did not die within {} of SIGKILL; continuing without it",
                    hook.command,
                    human_duration(KILL_GRACE)
                );
            }
            log_output(label, hook, &stdout, &stderr);
            return HookOutcome::TimedOut { after: hook.timeout };
        }
    };

    let read_deadline = Instant::now() + READ_GRACE;
    for _ in 0..readers {
        let left = read_deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            log::debug!(
                "{label} hook {:?}: a background process still holds its output open; \
                 not waiting for it",
                hook.command
            );
            break;
        }
    }
    log_output(label, hook, &stdout, &stderr);
    if status.success() {
        log::debug!("{label} hook {:?} succeeded in {:?}", hook.command, started.elapsed());
        HookOutcome::Ok
    } else {
        HookOutcome::Failed {
            status: describe_status(status),
            stderr_tail: lock(&stderr).to_text(),
        }
    }
}

/// Whether a recovery point is application-consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The freeze hook succeeded and the marker was inserted while frozen.
    App,
    /// The freeze hook failed or timed out; the marker is only crash-consistent.
    Crash,
}

/// What [`app_consistent`] did.
#[derive(Debug)]
pub struct AppConsistentResult<R> {
    /// What `insert_marker` returned.
    pub marker: R,
    pub consistency: Consistency,
    /// Set when the point is only crash-consistent: why (names the freeze command).
    pub warning: Option<String>,
    pub freeze: HookOutcome,
    pub thaw: HookOutcome,
    /// From the freeze hook's return to the thaw hook's start.
    pub freeze_window: Duration,
}

/// Runs `freeze`, calls `insert_marker` with the consistency it gets, then runs `thaw`; thaw always runs once freeze was
/// attempted.
///
/// If freeze does not succeed, thaw runs first (undoing a partial freeze as early as possible)
/// and `insert_marker` is still called afterwards, so a crash-consistent point is taken; the
/// result says [`Consistency::Crash`] with a warning. If `insert_marker` panics, thaw still
/// runs before the panic continues (with `panic = "abort"` nothing runs after a panic).
/// A thaw failure is logged as an error and returned; it does not change the point's
/// consistency.
pub fn app_consistent<F: FnOnce(Consistency) -> R, R>(
    freeze: &Hook,
    thaw: &Hook,
    insert_marker: F,
) -> AppConsistentResult<R> {
    let freeze_outcome = run_hook("freeze", freeze);
    let frozen_at = Instant::now();
    if freeze_outcome.is_ok() {
        let marker = panic::catch_unwind(AssertUnwindSafe(|| insert_marker(Consistency::App)));
        let freeze_window = frozen_at.elapsed();
        let thaw_outcome = run_thaw(thaw);
        match marker {
            Ok(marker) => AppConsistentResult {
                marker,
                consistency: Consistency::App,
                warning: None,
                freeze: freeze_outcome,
                thaw: thaw_outcome,
                freeze_window,
            },
            Err(payload) => panic::resume_unwind(payload),
        }
    } else {
        let warning = format!(
            "recovery point is crash-consistent only: {}",
            freeze_outcome.describe("freeze", freeze)
        );
        log::warn!("{warning}");
        let freeze_window = frozen_at.elapsed();
        let thaw_outcome = run_thaw(thaw);
        let marker = insert_marker(Consistency::Crash);
        AppConsistentResult {
            marker,
            consistency: Consistency::Crash,
            warning: Some(warning),
            freeze: freeze_outcome,
            thaw: thaw_outcome,
            freeze_window,
        }
    }
}

fn run_thaw(thaw: &Hook) -> HookOutcome {
    let outcome = run_hook("thaw", thaw);
    if !outcome.is_ok() {
        log::error!("{}; the workload may still be frozen", outcome.describe("thaw", thaw));
    }
    outcome
}

/// SIGKILL to the whole process group. An already empty group (ESRCH) is fine.
fn kill_group(label: &str, group: Pid) {
    match killpg(group, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => log::error!("{label} hook: cannot kill process group {group}: {error}"),
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

fn log_output(label: &str, hook: &Hook, stdout: &Mutex<Tail>, stderr: &Mutex<Tail>) {
    for (name, tail) in [("stdout", stdout), ("stderr", stderr)] {
        let text = lock(tail).to_text();
        if !text.is_empty() {
            log::debug!("{label} hook {:?} {name}: {text}", hook.command);
        }
    }
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a thread that drains `pipe` into `tail` and then reports on `done`.
fn spawn_reader(
    label: &str,
    name: &str,
    pipe: impl Read + Send + 'static,
    tail: &Arc<Mutex<Tail>>,
    done: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    let tail = Arc::clone(tail);
    let done = done.clone();
    std::thread::Builder::new().name(format!("hook-{label}-{name}")).spawn(move || {
        drain(pipe, &tail);
        let _ = done.send(());
    })?;
    Ok(())
}

/// Reads `pipe` to its end, keeping the tail.
fn drain(mut pipe: impl Read, tail: &Mutex<Tail>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => lock(tail).push(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= OUTPUT_TAIL_BYTES {
            self.truncated |= data.len() > OUTPUT_TAIL_BYTES || !self.bytes.is_empty();
            self.bytes.clear();
            self.bytes.extend_from_slice(&data[data.len() - OUTPUT_TAIL_BYTES..]);
            return;
        }
        let overflow = (self.bytes.len() + data.len()).saturating_sub(OUTPUT_TAIL_BYTES);
        if overflow > 0 {
            self.bytes.drain(..overflow);
            self.truncated = true;
        }
        self.bytes.extend_from_slice(data);
    }

    /// The tail as text, trimmed; "…" in front when earlier output was dropped.
    fn to_text(&self) -> String {
        let mut bytes = &self.bytes[..];
        if self.truncated {
            // Do not start in the middle of a UTF-8 sequence.
            let partial = bytes.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count();
            bytes = &bytes[partial..];
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if self.truncated && !text.is_empty() {
            format!("…{text}")
        } else {
            text.to_string()
        }
    }
}

fn human_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn hook(command: &str, timeout_ms: u64) -> Hook {
        Hook { command: command.to_string(), timeout: Duration::from_millis(timeout_ms) }
    }

    /// A fresh scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("siterelay-hooks-{}-{name}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Dead: gone from /proc, or a zombie waiting for its new parent to reap it.
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state =
                    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                matches!(state, Some("Z" | "X"))
            }
        }
    }

    fn wait_dead(pid: u32, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if is_dead(pid) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn read_pid(path: &Path) -> u32 {
        std::fs::read_to_string(path).expect("pid file").trim().parse().expect("pid in pid file")
    }

    #[test]
    fn hooks_success() {
        assert_eq!(run_hook("freeze", &hook("echo frozen; true", 5_000)), HookOutcome::Ok);
    }

    #[test]
    fn hooks_nonzero_exit_is_failed_with_stderr_tail() {
        let outcome =
            run_hook("freeze", &hook("echo fine; echo 'cannot freeze /mnt' >&2; exit 3", 5_000));
        assert_eq!(
            outcome,
            HookOutcome::Failed {
                status: "exit code 3".to_string(),
                stderr_tail: "cannot freeze /mnt".to_string()
            }
        );
        let freeze = hook("fsfreeze -f /mnt", 5_000);
        assert_eq!(
            outcome.describe("freeze", &freeze).to_string(),
            "freeze hook \"fsfreeze -f /mnt\" failed (exit code 3): cannot freeze /mnt"
        );
    }

    #[test]
    fn hooks_killed_by_signal_names_the_signal() {
        let outcome = run_hook("thaw", &hook("kill -TERM $$", 5_000));
        match outcome {
            HookOutcome::Failed { status, .. } => assert!(status.contains("SIGTERM"), "{status}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn hooks_timeout_kills_the_whole_group() {
        let scratch = Scratch::new("timeout");
        let pid_file = scratch.path("grandchild.pid");
        let command = format!("sleep 30 & echo $! > '{}'; sleep 30", pid_file.display());
        let started = Instant::now();
        let outcome = run_hook("freeze", &hook(&command, 300));
        let elapsed = started.elapsed();
        assert_eq!(outcome, HookOutcome::TimedOut { after: Duration::from_millis(300) });
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1_500), "took {elapsed:?}");
        let grandchild = read_pid(&pid_file);
        assert!(wait_dead(grandchild, Duration::from_secs(2)), "grandchild {grandchild} survived");
        let freeze = hook("fsfreeze -f /mnt", 5_000);
        assert_eq!(
            HookOutcome::TimedOut { after: Duration::from_secs(5) }
                .describe("freeze", &freeze)
                .to_string(),
            "freeze hook \"fsfreeze -f /mnt\" timed out after 5 s and was killed"
        );
    }

    #[test]
    fn hooks_large_output_does_not_deadlock() {
        // About 10.8 MB on each stream, far beyond a pipe buffer.
        let started = Instant::now();
        let outcome = run_hook(
            "freeze",
            &hook(
                "yes 'out line' | head -n 1200000; yes 'err line' | head -n 1200000 >&2; exit 1",
                10_000,
            ),
        );
        match outcome {
            HookOutcome::Failed { status, stderr_tail } => {
                assert_eq!(status, "exit code 1");
                assert!(stderr_tail.starts_with('…'), "{stderr_tail:.40}");
                assert!(stderr_tail.len() <= OUTPUT_TAIL_BYTES + '…'.len_utf8());
                assert!(stderr_tail.ends_with("err line"), "{stderr_tail:.40}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn hooks_background_process_holding_output_does_not_hold_the_hook() {
        let scratch = Scratch::new("background");
        let pid_file = scratch.path("daemon.pid");
        let command = format!("sleep 30 & echo $! > '{}'; exit 0", pid_file.display());
        let started = Instant::now();
        assert_eq!(run_hook("thaw", &hook(&command, 5_000)), HookOutcome::Ok);
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        // Not ours to keep: clean up the daemon this test started.
        let _ = nix::sys::signal::kill(Pid::from_raw(read_pid(&pid_file) as i32), Signal::SIGKILL);
    }

    #[test]
    fn hooks_empty_command_is_rejected_before_spawn() {
        let empty = hook("  \n", 300);
        let outcome = run_hook("freeze", &empty);
        assert!(matches!(outcome, HookOutcome::SpawnFailed(_)), "{outcome:?}");
        assert_eq!(
            outcome.describe("freeze", &empty).to_string(),
            "freeze hook \"  \\n\" could not be started: the command is empty; nothing to run"
        );
        let zero = Hook { command: "true".to_string(), timeout: Duration::ZERO };
        assert!(matches!(run_hook("thaw", &zero), HookOutcome::SpawnFailed(_)));
    }

    #[test]
    fn hooks_tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"hello");
        assert_eq!(tail.to_text(), "hello");
        tail.push(&vec![b'x'; OUTPUT_TAIL_BYTES - 2]);
        tail.push(b"end");
        assert_eq!(tail.bytes.len(), OUTPUT_TAIL_BYTES);
        assert!(tail.to_text().starts_with('…'));
        assert!(tail.to_text().ends_with("xxend"));
        let mut big = Tail::default();
        big.push(&vec![b'y'; 3 * OUTPUT_TAIL_BYTES]);
        assert_eq!(big.bytes.len(), OUTPUT_TAIL_BYTES);
        assert!(big.truncated);
    }

    #[test]
    fn hooks_app_consistent_freezes_marks_thaws() {
        let scratch = Scratch::new("app");
        let frozen = scratch.path("frozen");
        let thawed = scratch.path("thawed");
        let freeze = hook(&format!("touch '{}'", frozen.display()), 5_000);
        let thaw = hook(&format!("touch '{}'", thawed.display()), 5_000);
        let result = app_consistent(&freeze, &thaw, |_| (frozen.exists(), thawed.exists()));
        assert_eq!(result.marker, (true, false), "marker must be inserted between freeze and thaw");
        assert_eq!(result.consistency, Consistency::App);
        assert_eq!(result.warning, None);
        assert_eq!(result.freeze, HookOutcome::Ok);
        assert_eq!(result.thaw, HookOutcome::Ok);
        assert!(thawed.exists());
        assert!(result.freeze_window < Duration::from_millis(500), "{:?}", result.freeze_window);
    }

    #[test]
    fn hooks_freeze_failure_still_thaws_and_is_crash_consistent() {
        let scratch = Scratch::new("freeze-fails");
        let thawed = scratch.path("thawed");
        let freeze = hook("echo 'device busy' >&2; exit 7", 5_000);
        let thaw = hook(&format!("touch '{}'", thawed.display()), 5_000);
        let result = app_consistent(&freeze, &thaw, |_| thawed.exists());
        assert!(result.marker, "the marker is still inserted, after thaw");
        assert_eq!(result.consistency, Consistency::Crash);
        let warning = result.warning.expect("a warning");
        assert!(warning.contains("crash-consistent"), "{warning}");
        assert!(warning.contains(&format!("{:?}", freeze.command)), "{warning}");
        assert!(warning.contains("device busy"), "{warning}");
        assert!(matches!(result.freeze, HookOutcome::Failed { .. }));
        assert_eq!(result.thaw, HookOutcome::Ok);
        assert!(thawed.exists());
    }

    #[test]
    fn hooks_freeze_timeout_still_thaws() {
        let scratch = Scratch::new("freeze-hangs");
        let thawed = scratch.path("thawed");
        let freeze = hook("sleep 30", 300);
        let thaw = hook(&format!("touch '{}'", thawed.display()), 5_000);
        let started = Instant::now();
        let result = app_consistent(&freeze, &thaw, |_| ());
        assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
        assert_eq!(result.consistency, Consistency::Crash);
        let warning = result.warning.expect("a warning");
        assert!(
            warning.contains("freeze hook \"sleep 30\" timed out after 300 ms and was killed"),
            "{warning}"
        );
        assert!(thawed.exists());
    }

    #[test]
    fn hooks_thaw_failure_is_reported_and_point_stays_app_consistent() {
        let result = app_consistent(&hook("true", 5_000), &hook("sleep 30", 300), |_| 42);
        assert_eq!(result.marker, 42);
        assert_eq!(result.consistency, Consistency::App);
        assert_eq!(result.thaw, HookOutcome::TimedOut { after: Duration::from_millis(300) });
    }

    #[test]
    fn hooks_marker_panic_still_thaws() {
        let scratch = Scratch::new("marker-panics");
        let thawed = scratch.path("thawed");
        let thaw = hook(&format!("touch '{}'", thawed.display()), 5_000);
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            app_consistent(&hook("true", 5_000), &thaw, |_| panic!("marker failed"))
        }));
        assert!(caught.is_err());
        assert!(thawed.exists());
    }
}
