//! Recovery plans run by the real binary: groups in dependency order, pre/post scripts, a
//! manual step that waits for `plan continue`, test failovers whose exports serve the right
//! disks (read with nbdcopy), cleanup; and bad plans refused by name.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::points::{nbdcopy_out, operate};

const KEEP_EVERY_POINT: &str = "[target]\npoint_interval_secs = 1\n\
    [target.retention]\nkeep_all_secs = 3600\nbucket_secs = 3600\nwindow_secs = 7200\n";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn plan_text(order: &Path, db_pre_extra: &str) -> String {
    let order = order.display();
    format!(
        r#"name = "erp"

[[machine]]
name = "db1"
disks = ["d0"]

[[machine]]
name = "app1"
disks = ["d1"]

# Written first, runs second: it waits for the databases.
[[group]]
name = "apps"
machines = ["app1"]
after = ["databases"]
pre = [ {{ script = "echo app-pre >> {order}" }} ]

[[group]]
name = "databases"
machines = ["db1"]
pre = [ {{ script = "echo db-pre >> {order}" }}, {db_pre_extra} ]
post = [ {{ script = "echo db-post >> {order}" }} ]
"#
    )
}

fn state(run_dir: &Path) -> serde_json::Value {
    fs::read_to_string(run_dir.join("state.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn two_disk_cluster(label: &str) -> (Cluster, Vec<std::path::PathBuf>) {
    let cluster = Cluster::start_with_target_config(label, KEEP_EVERY_POINT);
    let mut sources = Vec::new();
    for (index, name) in ["d0", "d1"].iter().enumerate() {
        let path = cluster.dir.join(&format!("{name}.img"));
        let mut bytes = vec![0u8; 4 * MIB as usize];
        Rng::new(0x91a0 + index as u64).fill(&mut bytes[..MIB as usize]);
        fs::write(&path, &bytes).expect("write source");
        sources.push(path);
    }
    let agent = cluster.agent("a", &[("d0", &sources[0]), ("d1", &sources[1])]);
    cluster.sync_once(&agent, "two disks");
    (cluster, sources)
}

#[test]
fn test_plan_runs_groups_in_order_and_waits_for_the_manual_step() {
    if !require_tools("test_plan", &["nbdcopy", "cmp"]) {
        return;
    }
    let (cluster, sources) = two_disk_cluster("plan-test");
    let logs = cluster.dir.subdir("logs");
    let order = cluster.dir.join("order.txt");
    let plan = cluster.dir.join("erp.toml");
    fs::write(&plan, plan_text(&order, r#"{ manual = "Check the database" }"#)).unwrap();
    let run_dir = cluster.dir.join("run");
    let target = cluster.target.addr().to_string();
    let args = [
        "plan",
        "run",
        plan.to_str().unwrap(),
        "--connect",
        &target,
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--test",
    ];
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let mut running = Running::spawn(&args, &logs, "plan-run");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while state(&run_dir)["state"] != "waiting" {
        assert!(running.is_running(), "plan run ended before its manual step");
        assert!(Instant::now() < deadline, "plan never reached its manual step");
        std::thread::sleep(Duration::from_millis(100));
    }
    let waiting = state(&run_dir);
    assert_eq!(waiting["waiting_for"], "group databases pre #2: Check the database");
    assert_eq!(fs::read_to_string(&order).unwrap(), "db-pre\n");
    assert_eq!(waiting["exports"], serde_json::json!({}), "a disk failed over too early");
    let run_dir_arg = run_dir.to_str().unwrap();
    let go = run_siterelay(&["plan", "continue", "--run-dir", run_dir_arg], &logs, RUN_TIMEOUT);
    assert!(go.status.success(), "plan continue failed\n{}", go.describe());
    let finished = running.wait(RUN_TIMEOUT).expect("plan run ends");
    assert!(finished.status.success(), "plan run failed\n{}", finished.describe());
    assert_eq!(fs::read_to_string(&order).unwrap(), "db-pre\ndb-post\napp-pre\n");
    let done = state(&run_dir);
    assert_eq!(done["state"], "done", "{done}");
    for (disk, source) in ["d0", "d1"].iter().zip(&sources) {
        let uri = done["exports"][disk].as_str().expect("export").to_string();
        let copy = cluster.dir.join(&format!("{disk}-copy.img"));
        nbdcopy_out(&uri, &copy, &logs);
        assert_files_identical(source, &copy);
    }
    let late = run_siterelay(&["plan", "continue", "--run-dir", run_dir_arg], &logs, RUN_TIMEOUT);
    assert_eq!(
        late.stderr.trim(),
        format!("siterelay: no plan run is waiting in {run_dir_arg} (its state is \"done\")")
    );
    let cleanup = run_siterelay(&["plan", "cleanup", "--run-dir", run_dir_arg], &logs, RUN_TIMEOUT);
    assert!(cleanup.status.success(), "plan cleanup failed\n{}", cleanup.describe());
    let jobs = operate(&cluster, &["failover", "jobs"]);
    assert_eq!(jobs["jobs"], serde_json::json!([]), "{jobs}");
}

#[test]
fn failing_script_stops_the_plan_and_bad_plans_are_refused_by_name() {
    let (cluster, _) = two_disk_cluster("plan-bad");
    let logs = cluster.dir.subdir("logs");
    let order = cluster.dir.join("order.txt");
    let target = cluster.target.addr().to_string();
    let plan = cluster.dir.join("failing.toml");
    fs::write(&plan, plan_text(&order, r#"{ script = "echo broken >&2; exit 3" }"#)).unwrap();
    let run_dir = cluster.dir.join("run");
    let finished = run_siterelay(
        &[
            "plan",
            "run",
            plan.to_str().unwrap(),
            "--connect",
            &target,
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--unplanned",
        ],
        &logs,
        RUN_TIMEOUT,
    );
    assert!(!finished.status.success(), "a failing script did not stop the plan");
    let stderr = finished.stderr.trim();
    assert!(
        stderr.starts_with("siterelay: plan erp failed: group databases pre #2: script hook \"echo broken >&2; exit 3\""),
        "{stderr}"
    );
    assert!(stderr.contains("broken"), "the script's error output is not shown: {stderr}");
    assert_eq!(fs::read_to_string(&order).unwrap(), "db-pre\n");
    assert_eq!(state(&run_dir)["state"], "failed");
    let jobs = operate(&cluster, &["failover", "jobs"]);
    assert_eq!(jobs["failovers"], serde_json::json!([]), "a disk failed over: {jobs}");

    let write = |name: &str, text: &str| {
        let path = cluster.dir.join(name);
        fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let cycle = write(
        "cycle.toml",
        "name = \"erp\"\n[[machine]]\nname = \"db1\"\ndisks = [\"d0\"]\n[[machine]]\n\
         name = \"app1\"\ndisks = [\"d1\"]\n[[group]]\nname = \"apps\"\nmachines = [\"app1\"]\n\
         after = [\"databases\"]\n[[group]]\nname = \"databases\"\nmachines = [\"db1\"]\n\
         after = [\"apps\"]\n",
    );
    let unknown_machine = write(
        "unknown-machine.toml",
        "name = \"erp\"\n[[machine]]\nname = \"db1\"\ndisks = [\"d0\"]\n[[group]]\n\
         name = \"databases\"\nmachines = [\"db1\", \"web9\"]\n",
    );
    let malformed = write("malformed.toml", "name = \"erp\"\n[[machine]\nname = \"x\"\n");
    let unknown_disk = write(
        "unknown-disk.toml",
        "name = \"erp\"\n[[machine]]\nname = \"db1\"\ndisks = [\"d0\", \"d7\"]\n[[group]]\n\
         name = \"databases\"\nmachines = [\"db1\"]\n",
    );
    let cases = [
        (
            vec![cycle.as_str()],
            format!("{cycle}: plan: groups form a cycle: apps -> databases -> apps"),
        ),
        (
            vec![unknown_machine.as_str()],
            format!("{unknown_machine}: plan: group \"databases\" lists unknown machine \"web9\""),
        ),
        (
            vec![malformed.as_str()],
            format!(
                "{malformed}: plan: malformed TOML: line 2, column 10: invalid table header; \
                 expected `.`, `]]`"
            ),
        ),
        (
            vec![unknown_disk.as_str(), "--connect", &target],
            format!(
                "{unknown_disk}: plan: machine \"db1\" has disk \"d7\", which the target does \
                 not know (target {target})"
            ),
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["plan", "check"];
        all.extend(args);
        let finished = run_siterelay(&all, &logs, RUN_TIMEOUT);
        assert!(!finished.status.success(), "{all:?} passed");
        assert_eq!(finished.stderr.trim(), format!("siterelay: {message}"), "{all:?}");
    }
}
