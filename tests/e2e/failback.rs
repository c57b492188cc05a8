//! The full round trip of a protected disk, with real NBD clients: planned failover to the
//! recovery site (zero data loss), commit, writes there, reprotect (reverse replication into
//! the original source, adopted in place, moving only the blocks that differ), failback
//! (planned failover back), and forward protection again, moving nothing.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use crate::points::{nbdcopy_out, operate, operate_raw};
use crate::tap::{qemu_io_script, random_write_script, TapRig};

const PROTECT_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const DISK_BYTES: u64 = 16 * MIB;

/// The `checksum resync done` line of an agent log: (data bytes, zero bytes) sent.
fn resync_bytes(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("checksum resync done"))
        .unwrap_or_else(|| panic!("no resync summary in the agent log:\n{}", tail(log, 30)));
    let number_before = |unit: &str| -> u64 {
        let end = line.find(unit).unwrap_or_else(|| panic!("{unit:?} not in {line:?}"));
        let start = line[..end].trim_end().rfind(' ').map_or(0, |at| at + 1);
        line[start..end].trim().parse().unwrap_or_else(|_| panic!("bad number in {line:?}"))
    };
    (number_before(" data bytes"), number_before(" zero bytes"))
}

fn sigterm(agent: &mut Server) {
    let status = agent.terminate(STOP_TIMEOUT).unwrap_or_else(|error| panic!("{error}"));
    assert!(status.success(), "agent stop: {status}\n{}", tail(&agent.log(), 40));
}

fn planned_failover(cluster: &Cluster, socket: &Path) -> String {
    let relay = cluster.relay.addr().to_string();
    let socket = socket.to_str().expect("utf-8");
    let args = ["failover", "planned", "--relay", &relay, "--disk", "d0", "--nbd-listen", socket];
    let record = operate(cluster, &args);
    assert_eq!(record["kind"], "planned", "{record}");
    operate(cluster, &["failover", "commit", "--disk", "d0"]);
    record["export"].as_str().expect("export").to_string()
}

#[test]
fn planned_failover_reprotect_and_failback_move_only_changed_blocks() {
    if !require_tools("failback", &["qemu-io", "nbdcopy", "cmp"]) {
        return;
    }
    // Primary site: the source, its agent; recovery site: relay 1 and target 1.
    let mut rig = TapRig::start_on(Cluster::start("failback-forward"), DISK_BYTES, None);
    let logs = rig.cluster.dir.subdir("logs");
    rig.qemu_io(&[], &random_write_script(0xfb_0001, DISK_BYTES, 80, 0), "workload");
    // A planned failover refuses while the agent still runs.
    let relay1 = rig.cluster.relay.addr().to_string();
    let early = operate_raw(
        &rig.cluster,
        &["failover", "planned", "--relay", &relay1, "--disk", "d0", "--nbd-listen", "/tmp/x.sock"],
    );
    assert_eq!(
        early.stderr.trim(),
        "siterelay: the agent of disk d0 is still running: stop the workload, then stop the \
         agent cleanly (SIGTERM) so it sends its last writes and a final point"
    );
    sigterm(&mut rig.agent);
    let export1 = planned_failover(&rig.cluster, &rig.cluster.dir.join("failover1.sock"));
    // Zero data loss: the failed-over disk is exactly the source at its stop.
    let copy = rig.cluster.dir.join("failed-over.img");
    nbdcopy_out(&export1, &copy, &logs);
    assert_files_identical(&rig.source, &copy);
    let failed_over = rig.cluster.replica("d0");
    assert_files_identical(&rig.source, &failed_over);

    // Work at the recovery site: three 64 KiB writes.
    let writes = "write -q -P 0x11 1048576 65536\nwrite -q -P 0x22 5242880 65536\n\
                  write -q -P 0x33 12582912 65536\nflush\n";
    qemu_io_script(&export1, &[], writes, &rig.cluster.dir, "recovery-writes");
    operate(&rig.cluster, &["failover", "release", "--disk", "d0"]);

    // Reprotect: the original source, adopted in place as the replica at the primary site;
    // an agent at the recovery site protects the failed-over disk into it.
    let mut primary = Cluster::start("failback-reverse");
    primary.target.kill();
    let data_dir = primary.dir.join("target-data");
    let adopt = run_siterelay(
        &[
            "target",
            "adopt",
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
            "--disk",
            "d0",
            "--image",
            rig.source.to_str().expect("utf-8"),
        ],
        &logs,
        STOP_TIMEOUT,
    );
    assert!(adopt.status.success(), "adopt failed\n{}", adopt.describe());
    primary.target.restart_after(Duration::ZERO);
    let reverse_logs = primary.dir.subdir("logs");
    let mut reverse_agent = Server::agent_tap(
        primary.relay.addr(),
        &[("d0", &failed_over)],
        &primary.dir.join("agent-state"),
        &reverse_logs,
        &["--take-over"],
    );
    reverse_agent.start();
    primary.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    let (data, zero) = resync_bytes(&reverse_agent.log());
    assert_eq!((data, zero), (3 * 65536, 0), "the reverse resync moved more than the changes");
    primary.wait_replica_identical(&failed_over, "d0", PROTECT_TIMEOUT, "reprotect");
    assert_files_identical(&failed_over, &rig.source);

    // Failback: one more write at the recovery site, then a planned failover back.
    let reverse_uri = format!("nbd://{}", reverse_agent.addr());
    qemu_io_script(&reverse_uri, &[], "write -q -P 0x44 65536 4096\nflush\n", &primary.dir, "last");
    sigterm(&mut reverse_agent);
    let export2 = planned_failover(&primary, &primary.dir.join("failover2.sock"));
    nbdcopy_out(&export2, &primary.dir.join("failed-back.img"), &reverse_logs);
    assert_files_identical(&failed_over, &rig.source);
    assert_files_identical(&failed_over, &primary.dir.join("failed-back.img"));
    operate(&primary, &["failover", "release", "--disk", "d0"]);

    // Forward protection again: the original agent takes its disk back; nothing differs.
    let mut forward_agent = Server::agent_tap(
        rig.cluster.relay.addr(),
        &[("d0", &rig.source)],
        &rig.cluster.dir.join("agent-state"),
        &rig.cluster.dir.subdir("logs-forward"),
        &["--take-over"],
    );
    forward_agent.start();
    rig.cluster.wait_disk_state("d0", "protected", PROTECT_TIMEOUT);
    assert_eq!(resync_bytes(&forward_agent.log()), (0, 0), "forward resync moved data");
    qemu_io_script(
        &format!("nbd://{}", forward_agent.addr()),
        &[],
        "write -q -P 0x55 0 4096\nflush\n",
        &rig.cluster.dir,
        "forward-again",
    );
    rig.cluster.wait_replica_identical(&rig.source, "d0", PROTECT_TIMEOUT, "protected again");
    let jobs = operate(&rig.cluster, &["failover", "jobs"]);
    assert_eq!(jobs["failovers"], serde_json::json!([]), "the failover did not end: {jobs}");
}
