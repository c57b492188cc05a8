//! Shared machinery of the end-to-end tests: temp dirs, free ports, role processes with their
//! logs, the agent runner, a seeded PRNG, test images, and file comparison with the real `cmp`.
//!
//! Everything here drives the real `siterelay` binary through its command line (the CLI
//! contract), never its library crates.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test target.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_siterelay");

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * KIB;

/// How long a server may take from spawn to its `listening on` log line.
pub(crate) const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one `agent --once` run in these tests (debug build, loaded 2-core CI box).
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(180);
/// The agent's `--reconnect-timeout` in tests: long enough for any restart we do, short
/// enough that a relay that never comes back fails the test in bounded time.
pub(crate) const AGENT_RECONNECT_TIMEOUT_SECS: u64 = 60;
/// How long a short command (`status`, `config check`) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// Environment and tools

/// True when running in CI (`CI` set to anything but empty, `0` or `false`).
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}

/// Where an external tool lives: `PATH`, then the sbin directories (mkfs.ext4 and e2fsck are
/// in /usr/sbin, which is not on every user's `PATH`).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The path of a tool that `require_tools` already checked.
pub(crate) fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("tool {name} not found (call require_tools first)"))
}

/// Checks that external tools are installed. Missing outside CI: prints why the test is skipped
/// and returns false. Missing in CI: fails, since `scripts/test` installs them.
pub(crate) fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{test}: required tool(s) missing: {} (scripts/test installs them: \
         e2fsprogs, qemu-utils, diffutils, ...)",
        missing.join(", ")
    );
    assert!(!in_ci(), "{message}; CI is set, so this is a failure");
    eprintln!("SKIPPED {message}; CI is not set, so the test is skipped");
    false
}

// ------------------------------------------------------------------------------------------
// Temp dirs and ports

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir. Removed on drop when the test passed; kept
/// (and its path printed) when the test panicked, so role logs can be inspected.
#[derive(Debug)]
pub(crate) struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub(crate) fn new(label: &str) -> TestDir {
        let base = std::env::var_os("SITERELAY_E2E_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("siterelay-e2e-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("clear {}: {e}", path.display()));
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates (if needed) and returns a subdirectory.
    pub(crate) fn subdir(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("SITERELAY_E2E_KEEP").is_some() {
            eprintln!("test files kept for inspection in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Ports `free_port` handed out in this process.
static ISSUED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, drop the listener.
/// Never the same port twice in one process: the kernel may offer a port again as soon as the
/// listener is dropped, before the server that was given it binds it (a cluster's target and
/// relay once both got the same port).
pub(crate) fn free_port() -> u16 {
    let mut issued = ISSUED_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if issued.insert(port) {
            return port;
        }
    }
    panic!("bind 127.0.0.1:0 offered only ports already handed out ({} of them)", issued.len());
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ------------------------------------------------------------------------------------------
// Logs

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// The text of `path` from byte `offset` on.
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "    [... {skip} earlier lines ...]");
    }
    for line in &all[skip..] {
        let _ = writeln!(out, "    {line}");
    }
    out
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// Server roles (target, relay)

/// A long-running role process (`target` or `relay`) listening on a fixed loopback port, with
/// stdout and stderr appended to one log file across restarts.
#[derive(Debug)]
pub(crate) struct Server {
    role: &'static str,
    args: Vec<OsString>,
    addr: SocketAddr,
    log_path: PathBuf,
    child: Option<Child>,
    /// Log offset where the current incarnation started.
    incarnation_offset: u64,
    incarnations: u32,
}

/// Retention that keeps nothing but the newest point: pruning moves the base image up to each
/// new point at once.
pub(crate) const TARGET_NEWEST_POINT_ONLY: &str = "[target]\npoint_interval_secs = 1\n\
    [target.retention]\nkeep_all_secs = 0\nbucket_secs = 1\nwindow_secs = 1\n";

impl Server {
    /// A target on a fresh port, data in `data_dir`, keeping only the newest recovery point
    /// (so its replica image is the source as of the last point). Not started yet.
    pub(crate) fn target(data_dir: &Path, log_dir: &Path) -> Server {
        std::fs::create_dir_all(log_dir).expect("create log dir");
        let config = log_dir.join("target-newest-point-only.toml");
        std::fs::write(&config, TARGET_NEWEST_POINT_ONLY).expect("write target config");
        Self::target_with(data_dir, log_dir, &["--config", config.to_str().expect("utf-8 path")])
    }

    pub(crate) fn target_with(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Server {
        let addr = loopback(free_port());
        let mut args: Vec<OsString> = vec!["target".into(), "--listen".into()];
        args.push(addr.to_string().into());
        args.push("--data-dir".into());
        args.push(data_dir.into());
        args.extend(extra.iter().map(OsString::from));
        Server::new("target", args, addr, log_dir.join("target.log"))
    }

    /// A relay on a fresh port forwarding to `target`, cache in `cache_dir`. Not started yet.
    pub(crate) fn relay(target: SocketAddr, cache_dir: &Path, log_dir: &Path) -> Server {
        Self::relay_with(target, cache_dir, log_dir, &[])
    }

    pub(crate) fn relay_with(
        target: SocketAddr,
        cache_dir: &Path,
        log_dir: &Path,
        extra: &[&str],
    ) -> Server {
        let addr = loopback(free_port());
        let mut args: Vec<OsString> = vec!["relay".into(), "--listen".into()];
        args.push(addr.to_string().into());
        args.push("--target".into());
        args.push(target.to_string().into());
        args.push("--cache-dir".into());
        args.push(cache_dir.into());
        args.extend(extra.iter().map(OsString::from));
        Server::new("relay", args, addr, log_dir.join("relay.log"))
    }

    /// A continuously capturing agent serving `disks` through its NBD write tap on a fresh
    /// loopback port (`addr()` is the tap). Not started yet; `start` waits for the tap.
    pub(crate) fn agent_tap(
        relay: SocketAddr,
        disks: &[(&str, &Path)],
        state_dir: &Path,
        log_dir: &Path,
        extra: &[&str],
    ) -> Server {
        let addr = loopback(free_port());
        let mut args: Vec<OsString> = vec!["agent".into(), "--relay".into()];
        args.push(relay.to_string().into());
        for (name, path) in disks {
            args.push("--disk".into());
            let mut spec = OsString::from(format!("{name}="));
            spec.push(path);
            args.push(spec);
        }
        args.push("--state-dir".into());
        args.push(state_dir.into());
        args.push("--nbd-listen".into());
        args.push(addr.to_string().into());
        args.extend(extra.iter().map(OsString::from));
        Server::new("agent", args, addr, log_dir.join("agent.log"))
    }

    /// SIGTERM (a clean stop) and wait up to `timeout` for the exit status; SIGKILL after.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or_else(|| format!("{} not running", self.role))?;
        // The shell's built-in kill: /bin/kill (procps) is not on every minimal system.
        let command = format!("kill -TERM {}", child.id());
        let _ = Command::new("/bin/sh").args(["-c", &command]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} ignored SIGTERM for {timeout:?}; killed
  log:
{}",
                    self.role,
                    tail(&self.log(), 60)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn new(role: &'static str, args: Vec<OsString>, addr: SocketAddr, log_path: PathBuf) -> Self {
        Server { role, args, addr, log_path, child: None, incarnation_offset: 0, incarnations: 0 }
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn role(&self) -> &'static str {
        self.role
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The command line, for failure messages.
    pub(crate) fn command_line(&self) -> String {
        let mut line = BIN.to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    /// Spawns the process without waiting for it to listen.
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.role);
        self.incarnations += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        self.incarnation_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            log,
            "--- e2e harness: start {} #{}: {}",
            self.role,
            self.incarnations,
            self.command_line()
        );
        let stderr = log.try_clone().expect("clone log fd");
        let child = Command::new(BIN)
            .args(&self.args)
            .envs(plaintext_unless_pki(&self.args))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.command_line()));
        self.child = Some(child);
    }

    /// Spawns the process and waits for its `listening on` log line.
    pub(crate) fn start(&mut self) {
        if let Err(error) = self.try_start() {
            panic!("{error}");
        }
    }

    /// Like `start`, returning why the process did not come up instead of panicking.
    pub(crate) fn try_start(&mut self) -> Result<(), String> {
        self.spawn();
        self.wait_listening(LISTEN_TIMEOUT)
    }

    /// Waits until the current incarnation logged `listening on`. `Err` with the log if it
    /// exits first or the timeout passes (a process that hangs is killed).
    pub(crate) fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = read_from(&self.log_path, self.incarnation_offset);
            if text.contains("listening on") {
                return Ok(());
            }
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "{} exited with {status} before logging `listening on`\n  command: {}\n  \
                     log {}:\n{}",
                    self.role,
                    self.command_line(),
                    self.log_path.display(),
                    tail(&text, 60)
                ));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "{} did not log `listening on` within {timeout:?}\n  command: {}\n  log:\n{}",
                    self.role,
                    self.command_line(),
                    tail(&text, 60)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Whether the process is alive; `None` if it was never started or was killed by us.
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => child.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Panics (with the log) unless the process is still running.
    pub(crate) fn assert_running(&mut self, context: &str) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "{context}: {} exited unexpectedly with {status}\n  log:\n{}",
                    self.role,
                    tail(&self.log(), 60)
                );
            }
        } else {
            panic!("{context}: {} is not running", self.role);
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
                let _ =
                    writeln!(log, "--- e2e harness: SIGKILL {} #{}", self.role, self.incarnations);
            }
        }
    }

    /// SIGKILL (if running), stay down for `down`, start again on the same address and wait
    /// until it listens.
    pub(crate) fn restart_after(&mut self, down: Duration) {
        if let Err(error) = self.try_restart_after(down) {
            panic!("restart: {error}");
        }
    }

    pub(crate) fn try_restart_after(&mut self, down: Duration) -> Result<(), String> {
        self.kill();
        thread::sleep(down);
        self.try_start()
    }

    /// How the process stands, for failure messages: a process that died without the harness
    /// killing it is reported with its exit code or signal (read from `/proc/PID/stat` of the
    /// unreaped child), to tell a crash from an outside kill.
    pub(crate) fn liveness(&self) -> String {
        let Some(child) = self.child.as_ref() else {
            return "not running (stopped by the harness or never started)".to_string();
        };
        let pid = child.id();
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return format!("pid {pid}: no /proc entry");
        };
        // Fields after the parenthesised command name; state is field 3, exit_code field 52.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.first() != Some(&"Z") {
            return format!("running (pid {pid})");
        }
        match fields.get(49).and_then(|code| code.parse::<i32>().ok()) {
            Some(code) if code & 0x7f != 0 => format!(
                "DIED (pid {pid}) of signal {}{} without the harness killing it",
                code & 0x7f,
                if code & 0x7f == 9 {
                    " (SIGKILL: an outside kill or the OOM killer?)"
                } else {
                    ""
                }
            ),
            Some(code) => format!("EXITED (pid {pid}) with code {} on its own", code >> 8),
            None => format!("EXITED (pid {pid}), status unknown"),
        }
    }

    /// The whole log, all incarnations.
    pub(crate) fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Current log length, to look only at lines written after this point.
    pub(crate) fn log_len(&self) -> u64 {
        file_len(&self.log_path)
    }

    /// Waits until the log written after `offset` satisfies `found`; returns that text.
    pub(crate) fn wait_log_since(
        &self,
        offset: u64,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = read_from(&self.log_path, offset);
            if found(&text) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                return Err(text);
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------------------------
// Short commands with a timeout

/// Result of a finished command.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
    pub(crate) command_line: String,
}

impl Finished {
    pub(crate) fn describe(&self) -> String {
        format!(
            "  command: {}\n  exit: {} after {:.2?}\n  stdout:\n{}  stderr:\n{}",
            self.command_line,
            self.status,
            self.elapsed,
            tail(&self.stdout, 40),
            tail(&self.stderr, 60)
        )
    }
}

/// Tests run plaintext (the explicit `SITERELAY_PLAINTEXT=1`) unless they pass `--pki-dir`,
/// which the TLS tests (security.rs) do for every process they start.
pub(crate) fn plaintext_unless_pki(args: &[OsString]) -> Vec<(&'static str, &'static str)> {
    if args.iter().any(|arg| arg == "--pki-dir") {
        Vec::new()
    } else {
        vec![("SITERELAY_PLAINTEXT", "1")]
    }
}

/// A spawned process whose stdout and stderr go to files in `out_dir`.
#[derive(Debug)]
pub(crate) struct Running {
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    command_line: String,
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Running {
    pub(crate) fn spawn(args: &[OsString], out_dir: &Path, label: &str) -> Running {
        Self::spawn_program(Path::new(BIN), args, out_dir, label)
    }

    pub(crate) fn spawn_program(
        program: &Path,
        args: &[OsString],
        out_dir: &Path,
        label: &str,
    ) -> Running {
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stdout_path = out_dir.join(format!("{label}-{n}.stdout"));
        let stderr_path = out_dir.join(format!("{label}-{n}.stderr"));
        let stdout = File::create(&stdout_path).expect("create stdout file");
        let stderr = File::create(&stderr_path).expect("create stderr file");
        let mut command_line = program.display().to_string();
        for arg in args {
            command_line.push(' ');
            command_line.push_str(&arg.to_string_lossy());
        }
        let child = Command::new(program)
            .args(args)
            .envs(plaintext_unless_pki(args))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));
        Running {
            child: Some(child),
            stdout_path,
            stderr_path,
            started: Instant::now(),
            command_line,
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => child.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Waits for exit; on timeout kills the process and returns `Err` with what it printed.
    pub(crate) fn wait(mut self, timeout: Duration) -> Result<Finished, String> {
        let mut child = self.child.take().expect("child present until waited");
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {timeout:?}, killed\n  command: {}\n  stdout:\n{}  \
                     stderr:\n{}",
                    self.command_line,
                    tail(&read_lossy(&self.stdout_path), 40),
                    tail(&read_lossy(&self.stderr_path), 60)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(Finished {
            status,
            stdout: read_lossy(&self.stdout_path),
            stderr: read_lossy(&self.stderr_path),
            elapsed: self.started.elapsed(),
            command_line: self.command_line.clone(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `siterelay ARGS` to completion (bounded by `timeout`).
pub(crate) fn run_siterelay(args: &[&str], out_dir: &Path, timeout: Duration) -> Finished {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    Running::spawn(&args, out_dir, "cmd")
        .wait(timeout)
        .unwrap_or_else(|e| panic!("siterelay command {e}"))
}

/// Runs an external tool to completion (bounded by `timeout`).
pub(crate) fn run_tool(
    name: &str,
    args: &[OsString],
    out_dir: &Path,
    timeout: Duration,
) -> Finished {
    Running::spawn_program(&tool(name), args, out_dir, name)
        .wait(timeout)
        .unwrap_or_else(|e| panic!("{name} {e}"))
}

// ------------------------------------------------------------------------------------------
// A target + relay pair and agents

/// A target and a relay as separate processes, each with its own port, data and log, all under
/// one test directory.
#[derive(Debug)]
pub(crate) struct Cluster {
    // Field order is drop order: processes die before their directory is removed.
    pub(crate) target: Server,
    pub(crate) relay: Server,
    pub(crate) dir: TestDir,
    agent_runs: AtomicU32,
}

impl Cluster {
    /// Starts target then relay, each waited on until it listens.
    pub(crate) fn start(label: &str) -> Cluster {
        let cluster = Self::new(label);
        cluster.started()
    }

    /// Like `start`, with the target configured by `target_toml` (retention, say).
    pub(crate) fn start_with_target_config(label: &str, target_toml: &str) -> Cluster {
        Self::start_with_configs(label, target_toml, None)
    }

    /// Like `start`, with a configuration file for the target and optionally the relay.
    pub(crate) fn start_with_configs(
        label: &str,
        target_toml: &str,
        relay_toml: Option<&str>,
    ) -> Cluster {
        let dir = TestDir::new(label);
        let logs = dir.subdir("logs");
        let write_config = |name: &str, text: &str| {
            let path = logs.join(name);
            fs::write(&path, text).expect("write config");
            path.to_str().expect("utf-8 path").to_string()
        };
        let config = write_config("target.toml", target_toml);
        let target = Server::target_with(&dir.join("target-data"), &logs, &["--config", &config]);
        let mut cluster = Self::assemble(dir, target);
        if let Some(text) = relay_toml {
            let config = write_config("relay.toml", text);
            let logs = cluster.dir.subdir("logs");
            let cache = cluster.dir.join("relay-cache");
            cluster.relay =
                Server::relay_with(cluster.target.addr(), &cache, &logs, &["--config", &config]);
        }
        cluster.started()
    }

    /// Like `start`, without starting anything yet.
    pub(crate) fn new(label: &str) -> Cluster {
        let dir = TestDir::new(label);
        let logs = dir.subdir("logs");
        let target = Server::target(&dir.join("target-data"), &logs);
        Self::assemble(dir, target)
    }

    fn assemble(dir: TestDir, target: Server) -> Cluster {
        let logs = dir.subdir("logs");
        let relay = Server::relay(target.addr(), &dir.join("relay-cache"), &logs);
        Cluster { target, relay, dir, agent_runs: AtomicU32::new(0) }
    }

    fn started(mut self) -> Cluster {
        self.target.start();
        self.relay.start();
        self
    }

    /// The replica file of disk `name`: `DATA_DIR/replicas/NAME.img`.
    pub(crate) fn replica(&self, name: &str) -> PathBuf {
        self.dir.join("target-data").join("replicas").join(format!("{name}.img"))
    }

    /// An agent for `disks` with its state in `DIR/agent-STATE`.
    pub(crate) fn agent(&self, state: &str, disks: &[(&str, &Path)]) -> Agent {
        Agent {
            relay: self.relay.addr(),
            disks: disks
                .iter()
                .map(|(name, path)| (name.to_string(), path.to_path_buf()))
                .collect(),
            state_dir: self.dir.join(&format!("agent-{state}")),
            out_dir: self.dir.subdir("logs"),
            reconnect_timeout_secs: AGENT_RECONNECT_TIMEOUT_SECS,
        }
    }

    /// Tails of both server logs, for failure messages.
    pub(crate) fn diagnostics(&self) -> String {
        let mut out = String::new();
        for server in [&self.relay, &self.target] {
            let _ = writeln!(
                out,
                "  {} is {}; log ({}):\n{}",
                server.role(),
                server.liveness(),
                server.log_path().display(),
                tail(&server.log(), 50)
            );
        }
        out
    }

    /// Runs one `agent --once` to success, panicking with everything we know otherwise.
    pub(crate) fn sync_once(&self, agent: &Agent, context: &str) -> Finished {
        let n = self.agent_runs.fetch_add(1, Ordering::Relaxed);
        let run = agent.spawn_once(&format!("agent-run{n}"));
        let finished = run.wait(AGENT_TIMEOUT);
        self.expect_agent_success(context, finished)
    }

    /// Checks an agent result: exit 0 and the `replica durable at target` summary line.
    pub(crate) fn expect_agent_success(
        &self,
        context: &str,
        finished: Result<Finished, String>,
    ) -> Finished {
        let finished = match finished {
            Ok(finished) => finished,
            Err(error) => panic!("{context}: agent {error}\n{}", self.diagnostics()),
        };
        if !finished.status.success() {
            panic!("{context}: agent failed\n{}\n{}", finished.describe(), self.diagnostics());
        }
        if !finished.stdout.contains("replica durable at target") {
            panic!(
                "{context}: agent exited 0 but its summary lacks `replica durable at target`\n\
                 {}\n{}",
                finished.describe(),
                self.diagnostics()
            );
        }
        finished
    }

    /// `cmp SOURCE REPLICA`, panicking with the server logs on a difference. The replica image
    /// is the base the target prunes into after each point, a step that follows the ack: it
    /// gets a few seconds.
    pub(crate) fn assert_replica_identical(&self, source: &Path, disk: &str, context: &str) {
        self.wait_replica_identical(source, disk, REPLICA_PRUNE_TIMEOUT, context);
    }

    /// `siterelay status --connect ADDR --json`, parsed.
    pub(crate) fn status_json(&self, addr: SocketAddr) -> serde_json::Value {
        status_json(addr, &self.dir.subdir("logs"))
    }

    /// The relay's state string for `disk` ("protected", "resyncing", ...).
    pub(crate) fn disk_state(&self, disk: &str) -> Option<String> {
        let status = self.status_json(self.relay.addr());
        status["disks"]
            .as_array()?
            .iter()
            .find(|entry| entry["name"] == disk)
            .and_then(|entry| entry["state"].as_str().map(str::to_string))
    }

    /// Waits until the relay reports `disk` as `state`.
    pub(crate) fn wait_disk_state(&self, disk: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.disk_state(disk);
            if last.as_deref() == Some(state) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "disk {disk} not {state} within {timeout:?} (last: {last:?})\n{}",
            self.diagnostics()
        );
    }

    /// Waits until the replica of `disk` equals `source` (continuous capture is asynchronous:
    /// identical is the state it must converge to).
    pub(crate) fn wait_replica_identical(
        &self,
        source: &Path,
        disk: &str,
        timeout: Duration,
        context: &str,
    ) {
        if let Err(error) = replica_converges(source, &self.replica(disk), timeout) {
            panic!(
                "{context}: replica did not converge within {timeout:?}: {error}\n{}",
                self.diagnostics()
            )
        }
    }
}

pub(crate) fn status_json(addr: SocketAddr, out_dir: &Path) -> serde_json::Value {
    let addr = addr.to_string();
    let finished =
        run_siterelay(&["status", "--connect", &addr, "--json"], out_dir, COMMAND_TIMEOUT);
    assert!(finished.status.success(), "status --json failed\n{}", finished.describe());
    serde_json::from_str(&finished.stdout).unwrap_or_else(|e| {
        panic!("status --json printed invalid JSON ({e})\n{}", finished.describe())
    })
}

/// The names of the disks a status document lists.
pub(crate) fn status_disk_names(status: &serde_json::Value) -> Vec<String> {
    status["disks"]
        .as_array()
        .map(|disks| {
            disks.iter().filter_map(|disk| disk["name"].as_str().map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

/// One agent configuration (disks, state dir); each `spawn_once` is one `--once` run.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) relay: SocketAddr,
    pub(crate) disks: Vec<(String, PathBuf)>,
    pub(crate) state_dir: PathBuf,
    pub(crate) out_dir: PathBuf,
    pub(crate) reconnect_timeout_secs: u64,
}

impl Agent {
    pub(crate) fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["agent".into(), "--relay".into()];
        args.push(self.relay.to_string().into());
        for (name, path) in &self.disks {
            args.push("--disk".into());
            let mut spec = OsString::from(format!("{name}="));
            spec.push(path);
            args.push(spec);
        }
        args.push("--state-dir".into());
        args.push(self.state_dir.clone().into());
        args.push("--once".into());
        args.push("--reconnect-timeout".into());
        args.push(self.reconnect_timeout_secs.to_string().into());
        args
    }

    pub(crate) fn spawn_once(&self, label: &str) -> Running {
        Running::spawn(&self.args(), &self.out_dir, label)
    }
}

// ------------------------------------------------------------------------------------------
// Seeded PRNG

/// xorshift64* seeded through splitmix64: deterministic, fast, good enough for test data.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..bound` (`bound > 0`).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below(0)");
        self.next_u64() % bound
    }

    /// In `low..high` (`low < high`).
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high, "Rng::range({low}, {high})");
        low + self.below(high - low)
    }

    pub(crate) fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

// ------------------------------------------------------------------------------------------
// Test images

/// What a mixed image is made of, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ImageSummary {
    pub(crate) hole_bytes: u64,
    pub(crate) zero_written_bytes: u64,
    pub(crate) text_bytes: u64,
    pub(crate) random_bytes: u64,
}

const WORDS: &[&str] = &[
    "replica",
    "journal",
    "segment",
    "relay",
    "target",
    "agent",
    "extent",
    "block",
    "offset",
    "durable",
    "fsync",
    "commit",
    "marker",
    "recovery",
    "point",
    "checksum",
    "resync",
    "frame",
    "header",
    "payload",
    "zstd",
    "cache",
    "backlog",
    "failover",
    "protected",
    "generation",
    "sequence",
    "ack",
    "disk",
    "sector",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
];

/// Appends `len` bytes of log-like text: compressible (zstd -1 gets roughly 3-5x), not trivial.
fn fill_text(rng: &mut Rng, buf: &mut Vec<u8>, len: usize) {
    buf.clear();
    while buf.len() < len {
        let _ = write!(
            buf,
            "2025-{:02}-{:02}T{:02}:{:02}:{:02} node{} ",
            rng.range(1, 13),
            rng.range(1, 29),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(8)
        );
        for _ in 0..rng.range(4, 14) {
            buf.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            buf.push(b' ');
        }
        let _ = writeln!(buf, "seq={}", rng.below(100_000));
    }
    buf.truncate(len);
}

/// Writes a sparse image of `size` bytes made of regions of seeded, unaligned lengths (1 KiB to
/// 3 MiB): holes and written zeros (~30%), compressible text (~40%), random bytes (~30%).
pub(crate) fn write_mixed_image(path: &Path, size: u64, seed: u64) -> ImageSummary {
    let mut rng = Rng::new(seed);
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(size).expect("set_len");
    let mut summary = ImageSummary::default();
    let mut buf = Vec::with_capacity(3 << 20);
    let mut offset = 0u64;
    while offset < size {
        let len = rng.range(KIB, 3 * MIB).min(size - offset);
        let len_usize = usize::try_from(len).expect("region fits usize");
        match rng.below(10) {
            0 | 1 => summary.hole_bytes += len,
            2 => {
                buf.clear();
                buf.resize(len_usize, 0);
                summary.zero_written_bytes += len;
            }
            3..=6 => {
                fill_text(&mut rng, &mut buf, len_usize);
                summary.text_bytes += len;
            }
            _ => {
                buf.clear();
                buf.resize(len_usize, 0);
                rng.fill(&mut buf);
                summary.random_bytes += len;
            }
        }
        if !buf.is_empty() {
            file.seek(SeekFrom::Start(offset)).expect("seek");
            file.write_all(&buf).expect("write image");
            buf.clear();
        }
        offset += len;
    }
    file.sync_all().expect("sync image");
    summary
}

/// Overwrites `count` seeded regions (1 byte to `len_max` bytes each) with random bytes, never
/// changing the size. Returns the regions written.
pub(crate) fn modify_regions(path: &Path, seed: u64, count: u32, len_max: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng::new(seed);
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = file.metadata().expect("metadata").len();
    let mut regions = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..count {
        let len = rng.range(1, len_max.min(size) + 1);
        let offset = rng.below(size - len + 1);
        buf.resize(usize::try_from(len).expect("fits usize"), 0);
        rng.fill(&mut buf);
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.write_all(&buf).expect("write");
        regions.push((offset, len));
    }
    file.sync_all().expect("sync");
    regions
}

/// Writes `bytes` at `offset` (for targeted edits such as the unaligned tail).
pub(crate) fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).expect("open for write_at");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(bytes).expect("write_at");
    file.sync_all().expect("sync");
}

/// Fills `dir` with a seeded tree of files (text and random, 0 to `file_len_max` bytes) until
/// about `total` bytes are written. Returns the number of files.
pub(crate) fn write_seeded_tree(dir: &Path, seed: u64, total: u64, file_len_max: u64) -> u32 {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    let mut files = 0u32;
    let mut buf = Vec::new();
    while written < total {
        let depth = rng.below(4);
        let mut path = dir.to_path_buf();
        for _ in 0..depth {
            path.push(format!("d{}", rng.below(5)));
        }
        fs::create_dir_all(&path).expect("create tree dir");
        path.push(format!("file-{files}.{}", if rng.chance(1, 2) { "txt" } else { "bin" }));
        let len = usize::try_from(rng.below(file_len_max + 1)).expect("fits usize");
        if path.extension().is_some_and(|e| e == "txt") {
            fill_text(&mut rng, &mut buf, len);
        } else {
            buf.clear();
            buf.resize(len, 0);
            rng.fill(&mut buf);
        }
        fs::write(&path, &buf).expect("write tree file");
        written += len as u64;
        files += 1;
    }
    files
}

// ------------------------------------------------------------------------------------------
// Comparison

/// Runs the real `cmp` on two files; `Err` with a readable explanation if they differ.
pub(crate) fn files_identical(a: &Path, b: &Path) -> Result<(), String> {
    let describe = |path: &Path| match fs::metadata(path) {
        Ok(meta) => format!("{} ({} bytes)", path.display(), meta.len()),
        Err(error) => format!("{} (cannot stat: {error})", path.display()),
    };
    if !b.exists() {
        return Err(format!("replica {} does not exist (source {})", b.display(), describe(a)));
    }
    let output =
        Command::new(tool("cmp")).arg(a).arg(b).output().unwrap_or_else(|e| panic!("run cmp: {e}"));
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "files differ (cmp exit {}):\n  source:  {}\n  replica: {}\n  cmp: {}{}\n{}",
        output.status,
        describe(a),
        describe(b),
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end(),
        difference_ranges(a, b)
    ))
}

/// Granularity of `difference_ranges`.
const DIFF_BLOCK_BYTES: usize = 64 * 1024;

/// Which 64 KiB blocks differ, merged into ranges, and whether the replica holds only zeros
/// there (data never written) or other data (written wrong or stale).
pub(crate) fn difference_ranges(a: &Path, b: &Path) -> String {
    let (Ok(mut fa), Ok(mut fb)) = (File::open(a), File::open(b)) else {
        return "  (cannot open both files to locate the differences)".to_string();
    };
    let mut ba = vec![0u8; DIFF_BLOCK_BYTES];
    let mut bb = vec![0u8; DIFF_BLOCK_BYTES];
    // (start, end, replica all zero)
    let mut ranges: Vec<(u64, u64, bool)> = Vec::new();
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na == 0 && nb == 0 {
            break;
        }
        let n = na.max(nb);
        ba[na..n].fill(0);
        bb[nb..n].fill(0);
        if na != nb || ba[..n] != bb[..n] {
            let zero = bb[..nb].iter().all(|&byte| byte == 0);
            let end = offset + n as u64;
            match ranges.last_mut() {
                Some(last) if last.1 == offset && last.2 == zero => last.1 = end,
                _ => ranges.push((offset, end, zero)),
            }
        }
        offset += n as u64;
    }
    let total: u64 = ranges.iter().map(|(start, end, _)| end - start).sum();
    let mut out =
        format!("  differing 64 KiB blocks: {} bytes in {} range(s):\n", total, ranges.len());
    for (start, end, zero) in ranges.iter().take(12) {
        let _ = writeln!(
            out,
            "    [{start}, {end}) = {} KiB at {:.3} MiB: replica has {}",
            (end - start) / 1024,
            *start as f64 / MIB as f64,
            if *zero { "only zeros (never written?)" } else { "other data" }
        );
    }
    if ranges.len() > 12 {
        let _ = writeln!(out, "    ...");
    }
    out
}

fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// `cmp a b` must succeed.
pub(crate) fn assert_files_identical(a: &Path, b: &Path) {
    if let Err(error) = files_identical(a, b) {
        panic!("{error}");
    }
}

/// How long a target may take after its ack to prune a new point into the replica image.
pub(crate) const REPLICA_PRUNE_TIMEOUT: Duration = Duration::from_secs(10);

/// `cmp source replica` until it succeeds or `timeout` passes: a replica image catches up
/// with its newest point just after the target acked it.
pub(crate) fn replica_converges(
    source: &Path,
    replica: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match files_identical(source, replica) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}
