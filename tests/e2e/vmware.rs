//! VMware sources with real tools: a VMDK snapshot chain made by qemu-img and written by
//! qemu-io; the first sync copies the chain's view, each snapshot sync sends exactly the
//! grains the new link holds (qemu-img map) and leaves the replica equal to the flattened
//! chain (qemu-img convert).

use std::fs;
use std::path::{Path, PathBuf};

use crate::harness::*;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn tool_ok(dir: &TestDir, tool_name: &str, args: &[&str]) -> String {
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let finished = run_tool(tool_name, &args, &dir.subdir("logs"), TIMEOUT);
    assert!(finished.status.success(), "{tool_name} {args:?}\n{}", finished.describe());
    finished.stdout
}

/// Bytes the top layer of `image` holds (qemu-img map, depth 0, data or zero).
fn top_layer_bytes(dir: &TestDir, image: &Path) -> u64 {
    let map = tool_ok(dir, "qemu-img", &["map", "--output=json", image.to_str().unwrap()]);
    let entries: serde_json::Value = serde_json::from_str(&map).expect("qemu-img map JSON");
    entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && (e["data"] == true || e["zero"] == true))
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

fn flattened(dir: &TestDir, image: &Path, name: &str) -> PathBuf {
    let raw = dir.join(name);
    let _ = fs::remove_file(&raw);
    tool_ok(
        dir,
        "qemu-img",
        &["convert", "-O", "raw", image.to_str().unwrap(), raw.to_str().unwrap()],
    );
    raw
}

fn qemu_io(dir: &TestDir, image: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "vmdk"];
    for command in commands {
        args.push("-c");
        args.push(command);
    }
    args.push(image.to_str().unwrap());
    tool_ok(dir, "qemu-io", &args);
}

fn snapshot_sync(cluster: &Cluster, state_dir: &Path, image: &Path) -> Finished {
    let relay = cluster.relay.addr().to_string();
    let disk = format!("d0=vmdk:{}", image.display());
    run_siterelay(
        &[
            "agent",
            "snapshot-sync",
            "--relay",
            &relay,
            "--disk",
            &disk,
            "--state-dir",
            state_dir.to_str().unwrap(),
        ],
        &cluster.dir.subdir("logs"),
        TIMEOUT,
    )
}

/// "d0: snapshot sync: N data bytes, M zero bytes sent, ..." → N + M.
fn sent_bytes(stdout: &str) -> u64 {
    let line =
        stdout.lines().find(|l| l.contains("snapshot sync")).unwrap_or_else(|| panic!("{stdout}"));
    let number = |unit: &str| -> u64 {
        let end = line.find(unit).unwrap();
        let start = line[..end].trim_end().rfind(' ').map_or(0, |at| at + 1);
        line[start..end].trim().parse().unwrap()
    };
    number(" data bytes") + number(" zero bytes")
}

#[test]
fn snapshot_chain_syncs_send_exactly_each_new_links_grains() {
    if !require_tools("snapshot_chain", &["qemu-img", "qemu-io", "cmp"]) {
        return;
    }
    let cluster = Cluster::start("vmware-chain");
    let dir = &cluster.dir;
    let base = dir.join("base.vmdk");
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            base.to_str().unwrap(),
            "40M",
        ],
    );
    qemu_io(
        dir,
        &base,
        &["write -P 0x11 0 3M", "write -P 0x22 17M 640k", "write -P 0x33 40894464 65536"],
    );
    let base_source = PathBuf::from(format!("vmdk:{}", base.display()));
    let agent = cluster.agent("a", &[("d0", &base_source)]);
    cluster.sync_once(&agent, "first sync of the chain's base");
    let raw = flattened(dir, &base, "base.raw");
    cluster.assert_replica_identical(&raw, "d0", "after the first sync");

    let mut parent = base.clone();
    for (index, writes) in [
        vec!["write -P 0x44 1M 4k", "write -P 0x55 20M 200k", "write -z 33M 128k"],
        vec!["write -P 0x66 0 64k", "write -P 0x77 5000000 70000", "write -P 0x88 39M 1M"],
    ]
    .into_iter()
    .enumerate()
    {
        let child = dir.join(&format!("child{index}.vmdk"));
        let backing = parent.file_name().unwrap().to_str().unwrap().to_string();
        tool_ok(
            dir,
            "qemu-img",
            &["create", "-q", "-f", "vmdk", "-b", &backing, "-F", "vmdk", child.to_str().unwrap()],
        );
        qemu_io(dir, &child, &writes);
        let finished = snapshot_sync(&cluster, &agent.state_dir, &child);
        assert!(finished.status.success(), "snapshot sync {index}\n{}", finished.describe());
        let sent = sent_bytes(&finished.stdout);
        let expected = top_layer_bytes(dir, &child);
        assert_eq!(sent, expected, "link {index}: sent {sent} bytes, the link holds {expected}");
        let raw = flattened(dir, &child, &format!("child{index}.raw"));
        cluster.assert_replica_identical(&raw, "d0", &format!("after snapshot sync {index}"));
        eprintln!("link {index}: {sent} bytes sent of a 40 MiB disk");
        parent = child;
    }

    // A chain that does not contain the synced link is refused, with the way out.
    let other = dir.join("other.vmdk");
    tool_ok(dir, "qemu-img", &["create", "-q", "-f", "vmdk", other.to_str().unwrap(), "40M"]);
    let finished = snapshot_sync(&cluster, &agent.state_dir, &other);
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("which is not in the chain of")
            && finished.stderr.contains("a checksum resync (agent --once)"),
        "{}",
        finished.stderr
    );
    // The write tap serves raw images only.
    let relay = cluster.relay.addr().to_string();
    let finished = run_siterelay(
        &[
            "agent",
            "--relay",
            &relay,
            "--disk",
            &format!("d0=vmdk:{}", base.display()),
            "--nbd-listen",
            "127.0.0.1:0",
        ],
        &dir.subdir("logs"),
        TIMEOUT,
    );
    assert!(
        finished.stderr.contains("disk d0 is a VMDK: VMware sources are replicated with --once"),
        "{}",
        finished.stderr
    );
}

#[test]
fn vmdk_tools_name_what_they_refuse() {
    let dir = TestDir::new("vmware-refusals");
    let logs = dir.subdir("logs");
    let run = |args: &[&str]| run_siterelay(args, &logs, TIMEOUT);
    let formats = run(&["vmdk", "formats"]);
    assert!(formats.status.success());
    assert!(
        formats.stdout.contains("supported create types: monolithicSparse"),
        "{}",
        formats.stdout
    );
    assert!(formats.stdout.contains("seSparse"), "{}", formats.stdout);
    let truncated = dir.join("bad.vmdk");
    fs::write(&truncated, b"KDMV\x01\x00\x00\x00garbage").unwrap();
    let finished = run(&["vmdk", "info", truncated.to_str().unwrap()]);
    assert_eq!(
        finished.stderr.trim(),
        "siterelay: vmdk: bad.vmdk: sparse extent header is truncated: need 512 bytes, the file has 15"
    );
    let sesparse = dir.join("se.vmdk");
    fs::write(
        &sesparse,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"seSparse\"\n\
         RW 100 SESPARSE \"x.vmdk\"\n",
    )
    .unwrap();
    let finished = run(&["vmdk", "info", sesparse.to_str().unwrap()]);
    assert!(!finished.status.success());
    assert!(finished.stderr.contains("is not supported"), "{}", finished.stderr);
    // The agent refuses it the same way, before connecting anywhere.
    let finished = run(&[
        "agent",
        "--relay",
        "127.0.0.1:9",
        "--disk",
        &format!("d0=vmdk:{}", sesparse.display()),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--once",
    ]);
    assert!(!finished.status.success());
    assert!(finished.stderr.contains("disk d0: vmdk: se.vmdk:"), "{}", finished.stderr);
}
