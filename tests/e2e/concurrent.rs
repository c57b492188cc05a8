//! Several agents on one relay at the same time, and the generation check that keeps two
//! histories of one disk name apart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;

/// How long the relay may take, after the agents exited, to show every disk as `synced`
/// (the agent's last `DiskState` report is unsequenced and may still be in flight).
const STATUS_SETTLE: Duration = Duration::from_secs(15);

/// `(name, state)` of every disk in a status document.
fn disk_states(status: &serde_json::Value) -> Vec<(String, String)> {
    status["disks"]
        .as_array()
        .map(|disks| {
            disks
                .iter()
                .map(|disk| {
                    (
                        disk["name"].as_str().unwrap_or("?").to_string(),
                        disk["state"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn many_agents_and_disks_at_once() {
    if !require_tools("many_agents_and_disks_at_once", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("many-agents");
    // Three agents, five disks; one size is not a multiple of 4 KiB.
    let plan: [(&str, &[(&str, u64)]); 3] = [
        ("a", &[("alpha-os", 24 * MIB), ("alpha-data", 24 * MIB + 1234)]),
        ("b", &[("bravo-os", 24 * MIB), ("bravo-data", 24 * MIB)]),
        ("c", &[("charlie-os", 24 * MIB)]),
    ];
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    let mut agents = Vec::new();
    for (agent_index, (state, disks)) in plan.iter().enumerate() {
        let mut specs = Vec::new();
        for (disk_index, (name, size)) in disks.iter().enumerate() {
            let path = cluster.dir.join(&format!("{name}.img"));
            let seed = 0x3a9e_0000 + (agent_index as u64) * 16 + disk_index as u64;
            write_mixed_image(&path, *size, seed);
            sources.push((name.to_string(), path.clone()));
            specs.push((name.to_string(), path));
        }
        let disk_refs: Vec<(&str, &std::path::Path)> =
            specs.iter().map(|(name, path)| (name.as_str(), path.as_path())).collect();
        agents.push(cluster.agent(state, &disk_refs));
    }

    // Start all three before waiting for any.
    let running: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(index, agent)| agent.spawn_once(&format!("agent-{}", plan[index].0)))
        .collect();
    for (index, run) in running.into_iter().enumerate() {
        let context = format!("concurrent agent {} ({} disks)", plan[index].0, plan[index].1.len());
        let finished = cluster.expect_agent_success(&context, run.wait(AGENT_TIMEOUT));
        eprintln!("{context} finished in {:.2?}", finished.elapsed);
    }
    for (name, source) in &sources {
        cluster.assert_replica_identical(
            source,
            name,
            &format!("disk {name} after concurrent sync"),
        );
    }

    // The relay lists all five disks as synced.
    let deadline = Instant::now() + STATUS_SETTLE;
    let mut polls = 0u32;
    loop {
        polls += 1;
        let status = cluster.status_json(cluster.relay.addr());
        let states = disk_states(&status);
        let all_synced = sources.iter().all(|(name, _)| {
            states.iter().any(|(listed, state)| listed == name && state == "synced")
        });
        if all_synced {
            assert_eq!(
                states.len(),
                sources.len(),
                "relay status lists other disks than the five replicated: {status}"
            );
            if polls > 1 {
                eprintln!("relay status showed all disks synced after {polls} polls");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay status does not list all five disks as synced {STATUS_SETTLE:?} after \
             the agents exited: {states:?}\n  document: {status}\n{}",
            cluster.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn second_agent_with_another_generation_is_refused() {
    if !require_tools("second_agent_with_another_generation_is_refused", &["cmp"]) {
        return;
    }
    let mut cluster = Cluster::start("generation");
    let source = cluster.dir.join("shared.img");
    write_mixed_image(&source, 8 * MIB, 0x9e4e_0001);
    let first = cluster.agent("first", &[("shared", &source)]);
    cluster.sync_once(&first, "first agent's full sync");
    cluster.assert_replica_identical(&source, "shared", "after the first agent's sync");

    // Same disk name, other state dir (so a new generation), other contents: must be refused,
    // or the replica would become a mix of two disks.
    let impostor_source = cluster.dir.join("impostor.img");
    write_mixed_image(&impostor_source, 8 * MIB, 0x9e4e_0002);
    let impostor = cluster.agent("second", &[("shared", &impostor_source)]);
    let finished = impostor
        .spawn_once("agent-impostor")
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("agent with another generation did not exit: {e}"));
    assert!(
        !finished.status.success(),
        "agent with another generation of disk `shared` succeeded\n{}\n{}",
        finished.describe(),
        cluster.diagnostics()
    );
    assert!(
        finished.stderr.contains("generation"),
        "refused agent's error does not mention the generation\n{}",
        finished.describe()
    );
    assert!(
        !finished.stdout.contains("replica durable at target"),
        "refused agent claims durability\n{}",
        finished.describe()
    );
    cluster.relay.assert_running("after refusing another generation");
    cluster.target.assert_running("after the relay refused another generation");
    cluster.assert_replica_identical(&source, "shared", "after the refused agent");

    // The original agent keeps replicating the disk.
    modify_regions(&source, 0x9e4e_0003, 4, 64 * KIB);
    cluster.sync_once(&first, "first agent's resync after the refusal");
    cluster.assert_replica_identical(&source, "shared", "after the first agent's resync");
}
