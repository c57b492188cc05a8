//! Full sync and checksum resync through three separate processes (agent → relay → target):
//! the replica must be byte-identical to the source every time.

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use crate::harness::*;

/// Numeric fields of a status document that look like a count of bytes that came in from
/// agents. Used only to check, loosely, that a resync moves far fewer bytes than a full sync;
/// absent counters just skip that check.
fn ingest_byte_counter(status: &serde_json::Value) -> Option<u64> {
    fn walk(value: &serde_json::Value, key: &str, sum: &mut Option<u64>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(v, k, sum);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, key, sum)),
            serde_json::Value::Number(n) => {
                let key = key.to_ascii_lowercase();
                let ingest = ["received", "ingest", "recv", "bytes_in", "in_bytes", "wire"]
                    .iter()
                    .any(|word| key.contains(word));
                if key.contains("bytes") && ingest {
                    if let Some(n) = n.as_u64() {
                        *sum = Some(sum.unwrap_or(0) + n);
                    }
                }
            }
            _ => {}
        }
    }
    let mut sum = None;
    walk(status, "", &mut sum);
    sum
}

fn check_status_lists(cluster: &Cluster, disk: &str) {
    for (server, role) in [(&cluster.relay, "relay"), (&cluster.target, "target")] {
        let status = cluster.status_json(server.addr());
        assert_eq!(status["role"].as_str(), Some(role), "status --json of the {role}: {status}");
        let names = status_disk_names(&status);
        assert!(
            names.iter().any(|name| name == disk),
            "status --json of the {role} does not list disk {disk}: {status}"
        );
    }
}

#[test]
fn mixed_64mib_image_full_sync_then_resync() {
    if !require_tools("mixed_64mib_image_full_sync_then_resync", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("mixed64");
    let source = cluster.dir.join("disk0.img");
    let summary = write_mixed_image(&source, 64 * MIB, 0x5eed_0064);
    eprintln!("source image: {summary:?}");
    let agent = cluster.agent("a", &[("disk0", &source)]);

    let full = cluster.sync_once(&agent, "initial full sync of 64 MiB");
    eprintln!("full sync took {:.2?}; summary:\n{}", full.elapsed, full.stdout);
    cluster.assert_replica_identical(&source, "disk0", "after full sync");
    check_status_lists(&cluster, "disk0");
    let after_full = ingest_byte_counter(&cluster.status_json(cluster.relay.addr()));

    let regions = modify_regions(&source, 0xd1ff_0001, 12, 256 * KIB);
    let changed: u64 = regions.iter().map(|(_, len)| len).sum();
    eprintln!("modified {} regions, {changed} bytes", regions.len());
    let resync = cluster.sync_once(&agent, "checksum resync after modifying 12 regions");
    eprintln!("resync took {:.2?}; summary:\n{}", resync.elapsed, resync.stdout);
    cluster.assert_replica_identical(&source, "disk0", "after resync");

    // Loose traffic check, only where the relay exposes a byte counter.
    let after_resync = ingest_byte_counter(&cluster.status_json(cluster.relay.addr()));
    match (after_full, after_resync) {
        (Some(full_bytes), Some(total)) if full_bytes > 0 => {
            let resync_bytes = total.saturating_sub(full_bytes);
            eprintln!("relay byte counter: full sync {full_bytes}, resync {resync_bytes}");
            assert!(
                resync_bytes < 16 * MIB,
                "resync moved {resync_bytes} bytes for {changed} changed bytes (full sync \
                 moved {full_bytes}); a checksum resync should move only differing blocks"
            );
        }
        _ => eprintln!("relay status has no ingest byte counter; resync traffic not checked"),
    }
}

#[test]
fn unaligned_size_image_and_tail_resync() {
    if !require_tools("unaligned_size_image_and_tail_resync", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("unaligned");
    let source = cluster.dir.join("odd.img");
    let size = 10 * MIB + 1234;
    write_mixed_image(&source, size, 0x0dd_51ce);
    let agent = cluster.agent("a", &[("odd", &source)]);

    cluster.sync_once(&agent, "full sync of a 10 MiB + 1234 byte image");
    cluster.assert_replica_identical(&source, "odd", "after full sync");

    // Change the last partial block and one region in the middle.
    let mut rng = Rng::new(77);
    let mut tail_bytes = [0u8; 1000];
    rng.fill(&mut tail_bytes);
    write_at(&source, size - tail_bytes.len() as u64, &tail_bytes);
    write_at(&source, 5 * MIB + 17, b"changed in the middle");
    cluster.sync_once(&agent, "resync after changing the unaligned tail");
    // The harness's plain helper (no server logs on failure) works just as well here.
    assert_files_identical(&source, &cluster.replica("odd"));
}

#[test]
fn two_disks_in_one_agent() {
    if !require_tools("two_disks_in_one_agent", &["cmp"]) {
        return;
    }
    let cluster = Cluster::start("twodisks");
    let first = cluster.dir.join("first.img");
    let second = cluster.dir.join("second.img");
    write_mixed_image(&first, 12 * MIB, 1);
    write_mixed_image(&second, 7 * MIB + 512, 2);
    let agent = cluster.agent("a", &[("first", &first), ("second", &second)]);
    cluster.sync_once(&agent, "full sync of two disks");
    cluster.assert_replica_identical(&first, "first", "first disk");
    cluster.assert_replica_identical(&second, "second", "second disk");

    modify_regions(&second, 3, 4, 64 * KIB);
    cluster.sync_once(&agent, "resync of two disks, one changed");
    cluster.assert_replica_identical(&first, "first", "first disk after resync");
    cluster.assert_replica_identical(&second, "second", "second disk after resync");
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn expect_tool_success(name: &str, args: Vec<OsString>, cluster: &Cluster, context: &str) {
    let logs = cluster.dir.subdir("logs");
    let finished = run_tool(name, &args, &logs, Duration::from_secs(120));
    if !finished.status.success() {
        panic!("{context}: {name} failed\n{}\n{}", finished.describe(), cluster.diagnostics());
    }
}

#[test]
fn ext4_filesystem_image_replicates_and_checks_clean() {
    let test = "ext4_filesystem_image_replicates_and_checks_clean";
    if !require_tools(test, &["cmp", "mkfs.ext4", "e2fsck", "debugfs", "qemu-img"]) {
        return;
    }
    let cluster = Cluster::start("ext4");
    let tree = cluster.dir.subdir("tree");
    let files = write_seeded_tree(&tree, 0xe474, 24 * MIB, 512 * KIB);
    let source = cluster.dir.join("fs.img");
    let mut args = os(&["-q", "-F", "-d"]);
    args.push(tree.clone().into());
    args.push(source.clone().into());
    args.push("64M".into());
    expect_tool_success("mkfs.ext4", args, &cluster, "mkfs.ext4 -d");
    eprintln!("ext4 image with {files} files");
    let replica = cluster.replica("fs0");
    let agent = cluster.agent("a", &[("fs0", &source)]);

    cluster.sync_once(&agent, "full sync of an ext4 image");
    cluster.assert_replica_identical(&source, "fs0", "ext4 after full sync");
    check_replica_filesystem(&cluster, &source, &replica, "after full sync");

    // Change the filesystem offline (no mount needed): add a file, remove another.
    let extra = cluster.dir.join("extra.bin");
    let mut data = vec![0u8; 300 * 1024];
    Rng::new(0xadd).fill(&mut data);
    fs::write(&extra, &data).expect("write extra file");
    let write_cmd = format!("write {} added.bin", extra.display());
    let mut args = os(&["-w", "-R", &write_cmd]);
    args.push(source.clone().into());
    expect_tool_success("debugfs", args, &cluster, "debugfs write");
    let root_file = fs::read_dir(&tree)
        .expect("read tree")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .min();
    if let Some(name) = root_file {
        let rm_cmd = format!("rm {name}");
        let mut args = os(&["-w", "-R", &rm_cmd]);
        args.push(source.clone().into());
        expect_tool_success("debugfs", args, &cluster, "debugfs rm");
    }
    expect_tool_success("e2fsck", fsck_args(&source), &cluster, "source fsck after debugfs");

    cluster.sync_once(&agent, "resync of the changed ext4 image");
    cluster.assert_replica_identical(&source, "fs0", "ext4 after resync");
    check_replica_filesystem(&cluster, &source, &replica, "after resync");
}

fn fsck_args(image: &std::path::Path) -> Vec<OsString> {
    let mut args = os(&["-fn"]);
    args.push(image.into());
    args
}

fn check_replica_filesystem(
    cluster: &Cluster,
    source: &std::path::Path,
    replica: &std::path::Path,
    context: &str,
) {
    expect_tool_success("e2fsck", fsck_args(replica), cluster, &format!("e2fsck -fn {context}"));
    let mut args = os(&["compare", "-f", "raw", "-F", "raw"]);
    args.push(source.into());
    args.push(replica.into());
    expect_tool_success("qemu-img", args, cluster, &format!("qemu-img compare {context}"));
}
