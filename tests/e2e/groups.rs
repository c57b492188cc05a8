//! Consistency groups across two agents: a causal chain of writes (each write to disk g1
//! issued only after the same step's write to g0 was acknowledged, and the next g0 write only
//! after that) must never show up out of order in a confirmed group point: read through test
//! failover exports, g1 is at most g0's step and g0 at most one step ahead.

use std::fs::{self, File};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::points::{cleanup, nbdcopy_out, operate};
use crate::tap::qemu_io_script;

const KEEP_EVERY_POINT: &str = "[target]\npoint_interval_secs = 1\n\
    [target.retention]\nkeep_all_secs = 3600\nbucket_secs = 3600\nwindow_secs = 7200\n";
const GROUP: &str =
    "[[relay.group]]\nname = \"pair\"\ndisks = [\"g0\", \"g1\"]\ninterval_secs = 1\n";
const PROTECT_TIMEOUT: Duration = Duration::from_secs(90);
const STEP: u64 = 32768;
const STEPS: u64 = 120;

/// The group points every disk has, by marker id: (point id on g0, point id on g1).
fn group_points(cluster: &Cluster) -> Vec<(u64, u64, u64)> {
    let reply = operate(cluster, &["points", "list"]);
    let points_of = |disk: &str| -> Vec<Value> {
        reply["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["name"] == disk)
            .and_then(|entry| entry["points"].as_array().cloned())
            .unwrap_or_default()
    };
    let (g0, g1) = (points_of("g0"), points_of("g1"));
    g0.iter()
        .filter(|point| point["group"] == "pair")
        .filter_map(|point| {
            let marker = point["marker_id"].as_u64()?;
            let other = g1.iter().find(|p| p["group"] == "pair" && p["marker_id"] == marker)?;
            Some((marker, point["id"].as_u64()?, other["id"].as_u64()?))
        })
        .collect()
}

/// How many steps of the chain a copy of a disk holds (a prefix, checked).
fn steps_in(image: &[u8]) -> u64 {
    let written: Vec<bool> = (0..STEPS)
        .map(|step| image[(step * STEP) as usize] == (step as u8).wrapping_add(1))
        .collect();
    let count = written.iter().take_while(|w| **w).count();
    assert!(written[count..].iter().all(|w| !w), "not a prefix of the chain: {written:?}");
    count as u64
}

#[test]
fn group_points_cut_a_causal_chain_across_two_agents_consistently() {
    if !require_tools("group_points", &["qemu-io", "nbdcopy"]) {
        return;
    }
    let cluster = Cluster::start_with_configs("groups", KEEP_EVERY_POINT, Some(GROUP));
    let logs = cluster.dir.subdir("logs");
    let mut agents = Vec::new();
    for name in ["g0", "g1"] {
        let source = cluster.dir.join(&format!("{name}.img"));
        File::create(&source).unwrap().set_len(4 * MIB).unwrap();
        let mut agent = Server::agent_tap(
            cluster.relay.addr(),
            &[(name, &source)],
            &cluster.dir.join(&format!("state-{name}")),
            &cluster.dir.subdir(&format!("logs-{name}")),
            &[],
        );
        agent.start();
        agents.push(agent);
    }
    for name in ["g0", "g1"] {
        cluster.wait_disk_state(name, "protected", PROTECT_TIMEOUT);
    }
    let started = Instant::now();
    for step in 0..STEPS {
        for agent in &agents {
            let script =
                format!("write -q -P {} {} {STEP}\n", (step as u8).wrapping_add(1), step * STEP);
            qemu_io_script(&format!("nbd://{}", agent.addr()), &[], &script, &cluster.dir, "chain");
        }
    }
    eprintln!("chain of {STEPS} steps written in {:.1?}", started.elapsed());
    // One more round after the chain: a group point with every step.
    std::thread::sleep(Duration::from_millis(2500));
    let points = group_points(&cluster);
    assert!(points.len() >= 2, "too few confirmed group points: {points:?}");
    let mut cuts = Vec::new();
    for (marker, g0_point, g1_point) in &points {
        let mut steps = Vec::new();
        for (disk, point) in [("g0", g0_point), ("g1", g1_point)] {
            let socket = cluster.dir.join(&format!("{disk}-{marker}.sock"));
            let (job, uri) = start_test_failover_of(&cluster, disk, *point, &socket);
            let copy = cluster.dir.join(&format!("{disk}-{marker}.img"));
            nbdcopy_out(&uri, &copy, &logs);
            steps.push(steps_in(&fs::read(&copy).unwrap()));
            cleanup(&cluster, job);
            fs::remove_file(&copy).unwrap();
        }
        let (g0, g1) = (steps[0], steps[1]);
        assert!(
            g1 <= g0 && g0 <= g1 + 1,
            "group point {marker} cuts the chain at g0={g0}, g1={g1}"
        );
        cuts.push((g0, g1));
    }
    eprintln!("group points cut the chain at (g0, g1) = {cuts:?}");
    assert!(cuts.iter().any(|(g0, _)| *g0 == STEPS), "no group point after the chain: {cuts:?}");
    assert!(
        cuts.iter().any(|(g0, _)| *g0 > 0 && *g0 < STEPS),
        "no group point fell inside the chain, so this run proved nothing: {cuts:?}"
    );
    let status = cluster.status_json(cluster.relay.addr());
    assert!(status["groups"][0]["confirmed_points"].as_u64() >= Some(2), "{status}");
}

fn start_test_failover_of(
    cluster: &Cluster,
    disk: &str,
    point: u64,
    socket: &std::path::Path,
) -> (u64, String) {
    let socket = socket.to_str().unwrap();
    let point = point.to_string();
    let job = operate(
        cluster,
        &["failover", "test", "--disk", disk, "--point", &point, "--nbd-listen", socket],
    );
    (job["id"].as_u64().unwrap(), job["export"].as_str().unwrap().to_string())
}
