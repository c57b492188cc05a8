//! `siterelay plan check | run | continue | cleanup`: recovery plans (docs/PLANS.md) run
//! against a target. Groups go in the plan's order; for each, its `pre` actions, the
//! failover of every disk of its machines, then its `post` actions. A script that fails or
//! times out stops the plan (what was failed over stays, and the log says so); a manual step
//! waits until an operator runs `siterelay plan continue --run-dir DIR`.
//!
//! The run directory holds the run's state (`state.json`, rewritten after every step, for
//! operators and for `continue`), the signal file `continue`, and the NBD sockets of the
//! failed-over disks (`DISK.sock`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Args;
use crate::operate::control;

const STATE_FILE: &str = "state.json";
const CONTINUE_FILE: &str = "continue";
const CONTINUE_POLL: Duration = Duration::from_millis(200);

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("plan: expected one of check, run, continue, cleanup".into());
    };
    match sub.as_str() {
        "check" => check(rest),
        "run" => run_plan(rest),
        "continue" => signal_continue(rest),
        "cleanup" => cleanup(rest),
        other => Err(format!(
            "plan: unknown subcommand {other:?} (expected check, run, continue, cleanup)"
        )),
    }
}

fn load(path: &str) -> Result<plan::Plan, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
    plan::parse(&text).map_err(|error| format!("{path}: {error}"))
}

/// The disks the target knows.
fn target_disks(target: SocketAddr) -> Result<Vec<String>, String> {
    let reply = control(target, json!({ "op": "points" }))?;
    Ok(reply["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|disk| disk["name"].as_str().map(str::to_string))
        .collect())
}

fn check_against(plan: &plan::Plan, path: &str, target: SocketAddr) -> Result<(), String> {
    let disks = target_disks(target)?;
    plan.check_disks(|disk| disks.iter().any(|known| known == disk))
        .map_err(|error| format!("{path}: {error} (target {target})"))
}

fn check(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("plan check: expected PLAN.toml [--connect TARGET]".into());
    };
    let args = Args::parse("plan check", rest, &[("connect", true)])?;
    let plan = load(path)?;
    if let Some(target) = args.parsed::<SocketAddr>("connect")? {
        check_against(&plan, path, target)?;
    }
    let order: Vec<&str> = plan.order().iter().map(|group| group.name.as_str()).collect();
    println!(
        "plan {} is valid: {} machines in {} groups, run order {}",
        plan.name(),
        plan.machines().len(),
        plan.groups().len(),
        order.join(" -> ")
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Test,
    Unplanned,
    Planned,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Unplanned => "unplanned",
            Mode::Planned => "planned",
        }
    }
}

/// A plan run's state, mirrored to `state.json` after every change.
struct Run {
    dir: PathBuf,
    state: Value,
}

impl Run {
    fn save(&self) -> Result<(), String> {
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&self.state).expect("state serializes");
        fsio::write_atomic(&path, text.as_bytes())
            .map_err(|error| format!("cannot write {}: {error}", path.display()))
    }

    fn log(&mut self, line: String) -> Result<(), String> {
        println!("{line}");
        self.state["log"].as_array_mut().expect("log is a list").push(json!(line));
        self.save()
    }

    fn set(&mut self, key: &str, value: Value) -> Result<(), String> {
        self.state[key] = value;
        self.save()
    }
}

fn run_plan(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("plan run: expected PLAN.toml --connect TARGET --run-dir DIR \
                    (--test | --unplanned | --planned --relay RELAY)"
            .into());
    };
    const SPEC: &[(&str, bool)] = &[
        ("connect", true),
        ("run-dir", true),
        ("test", false),
        ("unplanned", false),
        ("planned", false),
        ("relay", true),
        ("point", true),
    ];
    let args = Args::parse("plan run", rest, SPEC)?;
    let modes = [
        (args.flag("test"), Mode::Test),
        (args.flag("unplanned"), Mode::Unplanned),
        (args.flag("planned"), Mode::Planned),
    ];
    let chosen: Vec<Mode> = modes.iter().filter(|(set, _)| *set).map(|(_, mode)| *mode).collect();
    let [mode] = chosen[..] else {
        return Err("plan run: give exactly one of --test, --unplanned, --planned".into());
    };
    let target: SocketAddr =
        args.parsed("connect")?.ok_or("plan run: --connect TARGET is required")?;
    let relay: Option<SocketAddr> = args.parsed("relay")?;
    if mode == Mode::Planned && relay.is_none() {
        return Err("plan run --planned: --relay RELAY is required (its backlog must drain)".into());
    }
    let point = args.value("point").unwrap_or("latest").to_string();
    if mode == Mode::Planned && point != "latest" {
        return Err("plan run --planned: a planned failover always takes the final point".into());
    }
    let dir = PathBuf::from(args.value("run-dir").ok_or("plan run: --run-dir DIR is required")?);
    let plan = load(path)?;
    check_against(&plan, path, target)?;
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(CONTINUE_FILE));
    let mut run = Run {
        dir: dir.clone(),
        state: json!({
            "plan": plan.name(),
            "mode": mode.as_str(),
            "target": target.to_string(),
            "state": "running",
            "group": null,
            "waiting_for": null,
            "exports": {},
            "jobs": [],
            "log": [],
        }),
    };
    run.log(format!("plan {} ({} failover) on target {target}", plan.name(), mode.as_str()))?;
    let context = RunContext { target, relay, mode, point: &point, plan: &plan };
    let result = context.run_groups(&mut run);
    match &result {
        Ok(()) => {
            run.set("state", json!("done"))?;
            run.log(format!("plan {} done", plan.name()))?;
        }
        Err(error) => {
            run.set("state", json!("failed"))?;
            run.log(format!("plan {} failed: {error}", plan.name()))?;
        }
    }
    result.map_err(|error| format!("plan {} failed: {error}", plan.name()))
}

struct RunContext<'a> {
    target: SocketAddr,
    relay: Option<SocketAddr>,
    mode: Mode,
    point: &'a str,
    plan: &'a plan::Plan,
}

impl RunContext<'_> {
    fn run_groups(&self, run: &mut Run) -> Result<(), String> {
        for group in self.plan.order() {
            run.set("group", json!(group.name))?;
            run.log(format!("group {}: starting", group.name))?;
            self.actions(run, group, "pre", &group.pre)?;
            for machine_name in &group.machines {
                let machine = self
                    .plan
                    .machines()
                    .iter()
                    .find(|machine| &machine.name == machine_name)
                    .expect("a parsed plan's groups name declared machines");
                for disk in &machine.disks {
                    self.fail_over(run, &machine.name, disk)?;
                }
            }
            self.actions(run, group, "post", &group.post)?;
            run.log(format!("group {}: done", group.name))?;
        }
        Ok(())
    }

    fn actions(
        &self,
        run: &mut Run,
        group: &plan::Group,
        list: &str,
        actions: &[plan::Action],
    ) -> Result<(), String> {
        for (index, action) in actions.iter().enumerate() {
            let at = format!("group {} {list} #{}", group.name, index + 1);
            match action {
                plan::Action::Script { command, timeout_secs } => {
                    run.log(format!("{at}: running {command:?}"))?;
                    let hook = agent::hooks::Hook {
                        command: command.clone(),
                        timeout: Duration::from_secs(*timeout_secs),
                    };
                    let outcome = agent::hooks::run_hook(&at, &hook);
                    if !outcome.is_ok() {
                        return Err(format!("{at}: {}", outcome.describe("script", &hook)));
                    }
                }
                plan::Action::Manual { text } => wait_for_operator(run, &at, text)?,
            }
        }
        Ok(())
    }

    fn fail_over(&self, run: &mut Run, machine: &str, disk: &str) -> Result<(), String> {
        let socket = run.dir.join(format!("{disk}.sock"));
        let socket = socket.to_str().ok_or("the run directory is not UTF-8")?.to_string();
        let reply = match self.mode {
            Mode::Test => control(
                self.target,
                json!({ "op": "test-failover", "disk": disk, "point": self.point, "nbd_listen": socket }),
            )?,
            Mode::Unplanned => control(
                self.target,
                json!({ "op": "failover", "kind": "unplanned", "disk": disk, "point": self.point, "nbd_listen": socket }),
            )?,
            Mode::Planned => {
                let relay = self.relay.expect("checked at the start");
                let forwarded = crate::operate::drained(relay, disk, Duration::from_secs(600))?;
                control(
                    self.target,
                    json!({ "op": "failover", "kind": "planned", "disk": disk, "point": "latest", "nbd_listen": socket, "expect_seq": forwarded }),
                )?
            }
        };
        let export = reply["export"].as_str().unwrap_or("?").to_string();
        if let Some(job) = reply["id"].as_u64() {
            run.state["jobs"].as_array_mut().expect("jobs is a list").push(json!(job));
        }
        run.state["exports"][disk] = json!(export);
        run.log(format!(
            "machine {machine}: disk {disk} at point {} served at {export}",
            reply["point"]
        ))
    }
}

/// Records that the run waits for `text` to be done and waits for `plan continue`.
fn wait_for_operator(run: &mut Run, at: &str, text: &str) -> Result<(), String> {
    run.set("waiting_for", json!(format!("{at}: {text}")))?;
    run.set("state", json!("waiting"))?;
    run.log(format!(
        "{at}: manual step: {text}\n  when it is done, run: siterelay plan continue --run-dir {}",
        run.dir.display()
    ))?;
    let signal = run.dir.join(CONTINUE_FILE);
    while std::fs::remove_file(&signal).is_err() {
        std::thread::sleep(CONTINUE_POLL);
    }
    run.set("waiting_for", Value::Null)?;
    run.set("state", json!("running"))?;
    run.log(format!("{at}: confirmed by the operator"))
}

fn read_state(dir: &Path) -> Result<Value, String> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("no plan run in {} ({error})", dir.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

fn signal_continue(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("plan continue", rest, &[("run-dir", true)])?;
    let dir =
        PathBuf::from(args.value("run-dir").ok_or("plan continue: --run-dir DIR is required")?);
    let state = read_state(&dir)?;
    if state["state"] != "waiting" {
        return Err(format!(
            "no plan run is waiting in {} (its state is {})",
            dir.display(),
            state["state"]
        ));
    }
    let signal = dir.join(CONTINUE_FILE);
    std::fs::write(&signal, b"").map_err(|error| format!("{}: {error}", signal.display()))?;
    println!("continuing: {}", state["waiting_for"].as_str().unwrap_or("?"));
    Ok(())
}

/// Ends the test failovers a `--test` run started.
fn cleanup(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("plan cleanup", rest, &[("run-dir", true), ("connect", true)])?;
    let dir =
        PathBuf::from(args.value("run-dir").ok_or("plan cleanup: --run-dir DIR is required")?);
    let state = read_state(&dir)?;
    if state["mode"] != "test" {
        return Err(format!(
            "the plan run in {} was a {} failover; only test failovers are cleaned up",
            dir.display(),
            state["mode"]
        ));
    }
    let target: SocketAddr = match args.parsed("connect")? {
        Some(target) => target,
        None => state["target"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .ok_or("plan cleanup: --connect TARGET is required")?,
    };
    for job in state["jobs"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
        match control(target, json!({ "op": "cleanup", "job": job })) {
            Ok(_) => println!("job {job}: cleaned up"),
            Err(error) => println!("job {job}: {error}"),
        }
    }
    Ok(())
}
