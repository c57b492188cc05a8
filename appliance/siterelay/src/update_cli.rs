//! `siterelay update lint | plan | init | apply | boot | status`: the rollup compatibility
//! matrix (config/rollups.toml, built in; `--matrix FILE` reads another), the upgrade planner
//! with the N-4 rule, and the A/B installation of signed bundles.
//!
//! State directory (`--state-dir`, default /var/lib/siterelay/update): `root.json` (the
//! trusted root), `installed.json` (component versions of the first installation),
//! `slots/` (slot-a, slot-b, boot-state.json; each slot holds its bundle's payloads and its
//! `manifest.json`). With a `layout.json` (the appliance image), the slots are partitions
//! chosen by systemd-boot entries instead (`update::PartitionSlots`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use update::{BootState, DirSlots, Layout, PartitionSlots, SlotId, Slots, Start};

use crate::args::Args;

const STATE_DIR_DEFAULT: &str = "/var/lib/siterelay/update";
/// The payload a slot must hold: the appliance's binary, started for the health check.
const BINARY_PAYLOAD: &str = "siterelay";
const SLOT_MANIFEST: &str = "manifest.json";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const LAYOUT_FILE: &str = "layout.json";
/// The image's version, written into each root image at build time.
const RELEASE_FILE_DEFAULT: &str = "/etc/siterelay-release";
/// `update boot`'s exit status when it rejected the trial the loader booted: the caller
/// (the image's init) reboots, and the loader starts the previous slot.
pub(crate) const EXIT_REBOOT_TO_FALLBACK: i32 = 75;

/// The matrix this build ships with.
const BUILTIN_MATRIX: &str = include_str!("../../../config/rollups.toml");

const PLAN_HELP: &str = "\
siterelay update plan --component C --from V [--to V] [--scenario S] [--matrix FILE]

The shortest supported upgrade path of one component. Release N (the newest, or --to)
supports direct upgrades from the four releases below it: N-4, N-3, N-2 and N-1 go to N in
one hop. The seed document writes \"from > N-4 to N\", but its own example, N-6 goes to N-4
and then to N, only works if N-4 itself goes directly, so that is how it is read here.
Anything older goes stepwise. N counts the distinct versions the matrix lists for the
component, in version order; revoked versions and versions not available in --scenario are
never a hop's destination.
";

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("update: expected lint or plan".into());
    };
    match sub.as_str() {
        "lint" => lint(rest),
        "plan" => plan(rest),
        "init" => init(rest),
        "apply" => apply(rest),
        "boot" => boot(rest),
        "status" => status(rest),
        other => Err(format!(
            "update: unknown subcommand {other:?} (expected lint, plan, init, apply, boot, status)"
        )),
    }
}

pub(crate) fn load_matrix(path: Option<&str>) -> Result<rollup::Matrix, String> {
    load(path).map(|(_, matrix)| matrix)
}

fn load(path: Option<&str>) -> Result<(String, rollup::Matrix), String> {
    let (name, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
            (path.to_string(), text)
        }
        None => ("built-in rollups.toml".to_string(), BUILTIN_MATRIX.to_string()),
    };
    let matrix = rollup::load(&text).map_err(|error| format!("{name}: {error}"))?;
    Ok((name, matrix))
}

/// Prints every finding; fails when there are errors (warnings alone pass).
fn lint(rest: &[String]) -> Result<(), String> {
    let (path, rest) = match rest.split_first() {
        Some((path, rest)) if !path.starts_with("--") => (Some(path.as_str()), rest),
        _ => (None, rest),
    };
    Args::parse("update lint", rest, &[])?;
    let (name, matrix) = load(path)?;
    let report = rollup::lint(&matrix);
    print!("{}", rollup::render_report(&report));
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: {} error(s) in the rollup matrix", report.errors.len()))
    }
}

fn plan(rest: &[String]) -> Result<(), String> {
    const SPEC: &[(&str, bool)] = &[
        ("component", true),
        ("from", true),
        ("to", true),
        ("scenario", true),
        ("matrix", true),
        ("help", false),
    ];
    let args = Args::parse("update plan", rest, SPEC)?;
    if args.flag("help") {
        print!("{PLAN_HELP}");
        return Ok(());
    }
    let need = |name: &str| {
        args.value(name).ok_or_else(|| format!("update plan: --{name} is required\n\n{PLAN_HELP}"))
    };
    let (component, from) = (need("component")?, need("from")?);
    let (_, matrix) = load(args.value("matrix"))?;
    let hops = rollup::plan(&matrix, component, from, args.value("to"), args.value("scenario"))
        .map_err(|error| error.to_string())?;
    print!("{}", rollup::render_plan(component, &hops));
    Ok(())
}

struct UpdateState {
    dir: PathBuf,
    slots: Box<dyn Slots>,
    /// Set when the slots are partitions (the appliance image).
    layout: Option<Layout>,
}

impl UpdateState {
    fn open(args: &Args) -> Result<UpdateState, String> {
        let dir = PathBuf::from(args.value("state-dir").unwrap_or(STATE_DIR_DEFAULT));
        let layout_path = dir.join(LAYOUT_FILE);
        let layout = if layout_path.exists() { Some(read_layout(&layout_path)?) } else { None };
        let slots: Box<dyn Slots> = match &layout {
            Some(layout) => Box::new(PartitionSlots::new(layout.clone(), &dir.join("slots"))),
            None => Box::new(DirSlots::new(&dir.join("slots"))),
        };
        Ok(UpdateState { dir, slots, layout })
    }

    /// The payloads a bundle must carry for these slots.
    fn required_payloads(&self) -> &'static [&'static str] {
        if self.layout.is_some() {
            &[update::partition::ROOT_IMAGE, update::partition::KERNEL, update::partition::INITRD]
        } else {
            &[BINARY_PAYLOAD]
        }
    }

    fn boot_state(&self) -> Result<BootState, String> {
        self.slots
            .load_state()
            .map_err(|error| format!("{}: {error}", self.dir.display()))?
            .ok_or_else(|| {
                format!(
                    "{} holds no installation; run `siterelay update init` first",
                    self.dir.display()
                )
            })
    }

    fn save(&self, state: &BootState) -> Result<(), String> {
        self.slots.save_state(state).map_err(|error| format!("{}: {error}", self.dir.display()))
    }

    fn root(&self) -> Result<bundle::Root, String> {
        crate::bundle_cli::read_root(self.dir.join("root.json").to_str().unwrap_or("root.json"))
    }

    /// The component versions the active slot runs.
    fn installed(&self, state: &BootState) -> Result<BTreeMap<String, String>, String> {
        if let Ok(body) = self.slots.read_slot_file(state.active, SLOT_MANIFEST) {
            let manifest = bundle::Manifest::parse(&body).map_err(|error| error.to_string())?;
            return Ok(manifest.components);
        }
        let path = self.dir.join("installed.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
    }
}

/// A slot layout file (`update init --layout`, `STATE/layout.json`).
fn read_layout(path: &Path) -> Result<Layout, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

/// `found` names `version`, or the error says what `source` gave instead.
fn expect_version(source: &str, found: &str, version: &str) -> Result<(), String> {
    if found.contains(version) {
        Ok(())
    } else {
        Err(format!("{source} {:?}, not {version}", found.trim()))
    }
}

const STATE_SPEC: (&str, bool) = ("state-dir", true);

/// `update init --root FILE --version V --component C=V ...`: records the running
/// installation (slot a) and the root it trusts.
fn init(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "update init",
        rest,
        &[
            STATE_SPEC,
            ("root", true),
            ("version", true),
            ("component", true),
            ("layout", true),
            ("esp-staging", true),
        ],
    )?;
    if let Some(layout) = args.value("layout") {
        // Partition slots: record the layout first, so the state below is saved through it.
        let parsed = read_layout(Path::new(layout))?;
        let dir = PathBuf::from(args.value("state-dir").unwrap_or(STATE_DIR_DEFAULT));
        if dir.join(LAYOUT_FILE).exists() {
            return Err(format!("{} already holds an installation", dir.display()));
        }
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let body = serde_json::to_string_pretty(&parsed).expect("layout serializes");
        fsio::write_atomic(&dir.join(LAYOUT_FILE), body.as_bytes())
            .map_err(|error| format!("{LAYOUT_FILE}: {error}"))?;
    }
    let mut state = UpdateState::open(&args)?;
    if let (Some(staging), Some(layout)) = (args.value("esp-staging"), &state.layout) {
        // At image build time the ESP is a directory that becomes the FAT image later.
        let mut staged = layout.clone();
        staged.esp = PathBuf::from(staging);
        state.slots = Box::new(PartitionSlots::new(staged, &state.dir.join("slots")));
    }
    if state.slots.load_state().ok().flatten().is_some() {
        return Err(format!("{} already holds an installation", state.dir.display()));
    }
    let root = crate::bundle_cli::read_root(
        args.value("root").ok_or("update init: --root FILE is required")?,
    )?;
    let version = args.value("version").unwrap_or(env!("CARGO_PKG_VERSION"));
    let components: BTreeMap<String, String> = args
        .values("component")
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .ok_or_else(|| format!("--component {pair:?}: expected COMPONENT=VERSION"))
        })
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&state.dir)
        .map_err(|error| format!("{}: {error}", state.dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        fsio::write_atomic(&state.dir.join(name), bytes).map_err(|error| format!("{name}: {error}"))
    };
    write("root.json", &root.encode().map_err(|error| error.to_string())?)?;
    write("installed.json", serde_json::to_string_pretty(&components).expect("json").as_bytes())?;
    state.save(&BootState::new(version))?;
    println!(
        "installation {version} recorded in {} (root version {})",
        state.dir.display(),
        root.version
    );
    Ok(())
}

/// `update apply BUNDLE`: verify everything, write the inactive slot, verify it there, and
/// schedule it to be tried at the next start. Nothing the running slot uses is touched.
fn apply(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("update apply: expected BUNDLE-DIR".into());
    };
    let args = Args::parse(
        "update apply",
        rest,
        &[STATE_SPEC, ("matrix", true), ("relay", true), ("agent-of", true)],
    )?;
    let state = UpdateState::open(&args)?;
    let boot = state.boot_state()?;
    let matrix = load_matrix(args.value("matrix"))?;
    let installed = state.installed(&boot)?;
    let verified = crate::bundle_cli::verify_bundle(
        Path::new(path),
        &state.root()?,
        boot.installed_bundle_version,
        &installed,
        &matrix,
    )?;
    let manifest = &verified.manifest;
    let slot = boot.may_install(manifest.bundle_version).map_err(|error| error.to_string())?;
    let new_version = manifest.components.get(IMAGE).cloned();
    if let (Some(new_version), Some(relay)) = (&new_version, args.parsed("relay")?) {
        check_relay_order(&matrix, relay, &boot.active_version, new_version)?;
    }
    if let (Some(new_version), Some(relay)) = (&new_version, args.parsed("agent-of")?) {
        check_agent_order(&matrix, relay, new_version)?;
    }
    for required in state.required_payloads() {
        if manifest.payload(required).is_none() {
            return Err(format!("the bundle has no {required:?} payload, which these slots need"));
        }
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for payload in &manifest.payloads {
        let file = verified.dir.payload_path(payload);
        let bytes = std::fs::read(&file).map_err(|error| format!("{}: {error}", file.display()))?;
        files.push((payload.name.clone(), bytes));
    }
    files.push((SLOT_MANIFEST.to_string(), verified.dir.manifest.body.clone()));
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    state
        .slots
        .write_slot(slot, &refs)
        .map_err(|error| format!("writing slot {}: {error}", slot.as_str()))?;
    // What is in the slot now, read back, is what gets started.
    for payload in &manifest.payloads {
        let bytes = state
            .slots
            .read_slot_file(slot, &payload.name)
            .map_err(|error| format!("reading slot {} back: {error}", slot.as_str()))?;
        bundle::verify_payload(manifest, &payload.name, &bytes)
            .map_err(|error| format!("slot {} after writing: {error}", slot.as_str()))?;
    }
    let version = new_version.unwrap_or_else(|| manifest.rollup.clone());
    let next = boot
        .schedule_trial(&version, manifest.bundle_version)
        .map_err(|error| error.to_string())?;
    if verified.root.version > state.root()?.version {
        let body = verified.root.encode().map_err(|error| error.to_string())?;
        fsio::write_atomic(&state.dir.join("root.json"), &body)
            .map_err(|error| format!("root.json: {error}"))?;
    }
    state.save(&next)?;
    let when = if state.layout.is_some() {
        "the next boot starts it (reboot now)"
    } else {
        "it is tried at the next start (siterelay update boot)"
    };
    println!(
        "update {} ({version}) written to slot {} and verified; {when}",
        manifest.rollup,
        slot.as_str()
    );
    Ok(())
}

/// The component whose version a node announces (its appliance release).
const IMAGE: &str = "appliance-image";

fn older(a: &str, b: &str) -> bool {
    match (rollup::Version::parse(a), rollup::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// A relay node (primary site) moves to `new` only after its recovery-site target runs
/// `new` or newer, after every other relay of its site reached `from` (nodes take each hop
/// together), and only if no connected agent falls out of `new`'s N-4 window.
fn check_relay_order(
    matrix: &rollup::Matrix,
    relay: std::net::SocketAddr,
    from: &str,
    new: &str,
) -> Result<(), String> {
    let status = crate::status::fetch_json(relay)?;
    let target = &status["target"];
    let Some(target_version) = target["version"].as_str() else {
        return Err(format!(
            "the relay at {relay} is not connected to its recovery-site target, so the \
             target's version is unknown; the recovery site is updated first"
        ));
    };
    if older(target_version, new) {
        return Err(format!(
            "the recovery site (target {}) runs {target_version}; update it to {new} first \
             (the recovery site is updated before the primary)",
            target["node"].as_str().unwrap_or("?")
        ));
    }
    let site = status["site"].as_str().unwrap_or("");
    let node = status["node"].as_str().unwrap_or("");
    if let Ok(target_addr) = target["address"].as_str().unwrap_or("").parse() {
        let target_status = crate::status::fetch_json(target_addr)?;
        for peer in target_status["relays"].as_array().into_iter().flatten() {
            let (peer_node, peer_version) =
                (peer["node"].as_str().unwrap_or("?"), peer["version"].as_str().unwrap_or("?"));
            if peer["site"] == site && peer_node != node && older(peer_version, from) {
                return Err(format!(
                    "node {peer_node} of site {site} runs {peer_version}, below {from}: every \
                     node takes the hop to {from} before any node takes the next"
                ));
            }
        }
    }
    for agent in status["agents"].as_array().into_iter().flatten() {
        let version = agent["version"].as_str().unwrap_or("?");
        if let rollup::SupportState::OutOfSupport { behind } =
            rollup::support_state(matrix, IMAGE, version, Some(new))
        {
            return Err(format!(
                "agent {} runs {version}, which would be N-{behind} of {new}, outside the \
                 relay's N-4 window: update the agents first",
                agent["node"].as_str().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

/// An agent is never newer than its relay, nor more than four releases behind it.
fn check_agent_order(
    matrix: &rollup::Matrix,
    relay: std::net::SocketAddr,
    new: &str,
) -> Result<(), String> {
    let status = crate::status::fetch_json(relay)?;
    let relay_version = status["version"].as_str().unwrap_or("?").to_string();
    if older(&relay_version, new) {
        return Err(format!(
            "the relay at {relay} runs {relay_version}; an agent is never newer than its relay \
             (update the relay first)"
        ));
    }
    if let rollup::SupportState::OutOfSupport { behind } =
        rollup::support_state(matrix, IMAGE, new, Some(&relay_version))
    {
        return Err(format!(
            "{new} would be N-{behind} of the relay's {relay_version}, outside its N-4 window"
        ));
    }
    Ok(())
}

/// Every node a relay knows (itself, its target, the other relays of the target, its agents)
/// with its version, support state and next hop.
fn known_nodes(matrix: &rollup::Matrix, relay: std::net::SocketAddr) -> Result<String, String> {
    let status = crate::status::fetch_json(relay)?;
    let mut nodes: Vec<(String, String, String, String)> = Vec::new();
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_string();
    nodes.push((
        "relay".into(),
        text(&status["node"]),
        text(&status["site"]),
        text(&status["version"]),
    ));
    let target = &status["target"];
    if target["version"].is_string() {
        nodes.push((
            "target".into(),
            text(&target["node"]),
            text(&target["site"]),
            text(&target["version"]),
        ));
        if let Ok(addr) = target["address"].as_str().unwrap_or("").parse() {
            for peer in crate::status::fetch_json(addr)?["relays"].as_array().into_iter().flatten()
            {
                if peer["node"] != status["node"] {
                    nodes.push((
                        "relay".into(),
                        text(&peer["node"]),
                        text(&peer["site"]),
                        text(&peer["version"]),
                    ));
                }
            }
        }
    }
    for agent in status["agents"].as_array().into_iter().flatten() {
        nodes.push((
            "agent".into(),
            text(&agent["node"]),
            text(&agent["site"]),
            text(&agent["version"]),
        ));
    }
    let mut out = format!(
        "{:<7} {:<16} {:<12} {:<10} {:<24} {}\n",
        "ROLE", "NODE", "SITE", "VERSION", "SUPPORT", "NEXT HOP"
    );
    for (role, node, site, version) in nodes {
        let support = support_text(matrix, IMAGE, &version);
        let next = rollup::plan(matrix, IMAGE, &version, None, None)
            .ok()
            .and_then(|hops| hops.first().map(|hop| hop.to.clone()))
            .unwrap_or_else(|| "-".into());
        out += &format!("{role:<7} {node:<16} {site:<12} {version:<10} {support:<24} {next}\n");
    }
    Ok(out)
}

/// A version's support state against the newest release, in words.
fn support_text(matrix: &rollup::Matrix, component: &str, version: &str) -> String {
    match rollup::support_state(matrix, component, version, None) {
        rollup::SupportState::Current => "current".to_string(),
        rollup::SupportState::Supported { behind } => format!("supported (N-{behind})"),
        rollup::SupportState::OutOfSupport { behind } => format!("out of support (N-{behind})"),
        rollup::SupportState::Newer => "newer than the matrix".to_string(),
        rollup::SupportState::Unknown => "not in the matrix".to_string(),
    }
}

/// Runs `program ARGS` for at most `timeout`; its standard output.
fn run_version(program: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    run_version_with(program, args, None, timeout)
}

fn run_version_with(
    program: &Path,
    args: &[&str],
    env: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(program)
        .args(args)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", program.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(|error| error.to_string())? {
            Some(status) => {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                return if status.success() {
                    Ok(out)
                } else {
                    Err(format!("it exited with {status}"))
                };
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("it did not answer within {timeout:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `update boot`: what the appliance runs at start. A scheduled update gets its one start:
/// its binary must start and report its version, then it becomes the active slot; anything
/// else (including this process dying first) goes back to the old slot. With partition
/// slots the boot loader already chose the slot (`--booted-slot`, else `siterelay.slot=` on
/// the kernel command line) and counts the trial's boots; this process is the new version.
fn boot(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "update boot",
        rest,
        &[
            STATE_SPEC,
            ("health-timeout", true),
            ("peer", true),
            ("config", true),
            ("booted-slot", true),
            ("release-file", true),
        ],
    )?;
    let state = UpdateState::open(&args)?;
    let boot = state.boot_state()?;
    let timeout = args.parsed::<u64>("health-timeout")?.map_or(HEALTH_TIMEOUT, Duration::from_secs);
    let (start, next) = match &state.layout {
        Some(_) => boot.booted(booted_slot(&args)?),
        None => boot.start(),
    };
    // The start is used up before anything runs: a crash from here on is a failed trial.
    state.save(&next)?;
    let slot = match start {
        Start::Active(slot) => {
            if let Some(outcome) = next.last_outcome.as_deref().filter(|_| boot.trial.is_some()) {
                println!("{outcome}");
            }
            if slot != next.active {
                println!(
                    "warning: the boot loader started slot {}, not the active slot {}",
                    slot.as_str(),
                    next.active.as_str()
                );
            }
            println!("running slot {} ({})", slot.as_str(), next.active_version);
            return Ok(());
        }
        Start::Trial(slot) => slot,
    };
    let trial = boot.trial.clone().expect("a trial start has a trial");
    let (binary, version_check) = match &state.layout {
        Some(_) => {
            let path = args.value("release-file").unwrap_or(RELEASE_FILE_DEFAULT);
            let release = std::fs::read_to_string(path)
                .map_err(|error| format!("{path}: {error}"))
                .and_then(|text| expect_version(&format!("{path} says"), &text, &trial.version));
            let binary = std::env::current_exe().map_err(|error| error.to_string())?;
            (binary, release)
        }
        None => {
            let binary = state.slots.slot_file(slot, BINARY_PAYLOAD);
            let check = run_version(&binary, &["--version"], timeout)
                .and_then(|out| expect_version("it reports", &out, &trial.version));
            (binary, check)
        }
    };
    let mut hwtest_args = vec!["hwtest"];
    if let Some(config) = args.value("config") {
        hwtest_args.extend(["--config", config]);
    }
    let peers: Vec<String> = args.values("peer").to_vec();
    let health = version_check
        .and_then(|()| {
            run_version(&binary, &hwtest_args, timeout)
                .map(|_| ())
                .map_err(|error| format!("its hardware checks failed: {error}"))
        })
        .and_then(|()| {
            // The new version must reach the peers this node works with.
            let (extra, env) = match args.value("config") {
                Some(path) => {
                    crate::security::operator_args(&crate::roles::read_config(Path::new(path))?)
                }
                None => (Vec::new(), None),
            };
            for peer in &peers {
                let mut status = vec!["status", "--connect", peer, "--json"];
                status.extend(extra.iter().map(String::as_str));
                run_version_with(&binary, &status, env, timeout)
                    .map_err(|error| format!("it cannot reach its peer {peer}: {error}"))?;
            }
            Ok(())
        });
    match health {
        Ok(()) => {
            let confirmed = next.confirm().map_err(|error| error.to_string())?;
            state.save(&confirmed)?;
            println!("updated to {} (slot {})", trial.version, slot.as_str());
            Ok(())
        }
        Err(reason) => {
            let reason = format!("its health check failed: {reason}");
            let rejected = next.reject(&reason).map_err(|error| error.to_string())?;
            state.save(&rejected)?;
            println!("update to {} rolled back: {reason}", trial.version);
            if state.layout.is_some() {
                println!(
                    "reboot to return to slot {} ({})",
                    rejected.active.as_str(),
                    rejected.active_version
                );
                std::process::exit(EXIT_REBOOT_TO_FALLBACK);
            }
            println!("running slot {} ({})", rejected.active.as_str(), rejected.active_version);
            Ok(())
        }
    }
}

/// The slot the boot loader started: `--booted-slot`, else `siterelay.slot=` in
/// /proc/cmdline (the loader entry puts it there).
fn booted_slot(args: &Args) -> Result<SlotId, String> {
    let text = match args.value("booted-slot") {
        Some(slot) => slot.to_string(),
        None => std::fs::read_to_string("/proc/cmdline")
            .map_err(|error| format!("/proc/cmdline: {error}"))?
            .split_whitespace()
            .find_map(|word| word.strip_prefix("siterelay.slot="))
            .ok_or(
                "the kernel command line names no slot (siterelay.slot=a|b); pass --booted-slot",
            )?
            .to_string(),
    };
    SlotId::parse(&text).ok_or_else(|| format!("unknown slot {text:?} (expected a or b)"))
}

/// `update status [--bundle DIR]`: the installation, each component's support state and
/// next hop, and whether a verified newer bundle is at hand.
fn status(rest: &[String]) -> Result<(), String> {
    let args = Args::parse(
        "update status",
        rest,
        &[STATE_SPEC, ("matrix", true), ("bundle", true), ("relay", true)],
    )?;
    let state = UpdateState::open(&args)?;
    let boot = state.boot_state()?;
    let matrix = load_matrix(args.value("matrix"))?;
    let installed = state.installed(&boot)?;
    println!(
        "slot {} active ({}), bundle version {}, root version {}",
        boot.active.as_str(),
        boot.active_version,
        boot.installed_bundle_version,
        state.root()?.version
    );
    if let Some(trial) = &boot.trial {
        println!("waiting for its first start: {} in slot {}", trial.version, trial.slot.as_str());
    }
    if let Some(outcome) = &boot.last_outcome {
        println!("last update: {outcome}");
    }
    if let Some(layout) = &state.layout {
        let slots = PartitionSlots::new(layout.clone(), &state.dir.join("slots"));
        let entries =
            slots.entries().map_err(|error| format!("{}: {error}", layout.esp.display()))?;
        println!("boot entries: {}", entries.join(", "));
    }
    for (component, version) in &installed {
        let support = support_text(&matrix, component, version);
        let next = match rollup::plan(&matrix, component, version, None, None) {
            Ok(hops) => {
                hops.first().map_or_else(String::new, |hop| format!(", next hop {}", hop.to))
            }
            Err(_) => String::new(),
        };
        println!("  {component} {version}: {support}{next}");
    }
    if let Some(relay) = args.parsed::<std::net::SocketAddr>("relay")? {
        print!("{}", known_nodes(&matrix, relay)?);
    }
    if let Some(path) = args.value("bundle") {
        match crate::bundle_cli::verify_bundle(
            Path::new(path),
            &state.root()?,
            boot.installed_bundle_version,
            &installed,
            &matrix,
        ) {
            Ok(verified) => println!(
                "update available: {} (bundle version {})",
                verified.manifest.rollup, verified.manifest.bundle_version
            ),
            Err(reason) => println!("bundle {path} cannot be applied: {reason}"),
        }
    }
    Ok(())
}
