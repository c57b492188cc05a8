//! The reader against real images made by `qemu-img` / `qemu-io`: every create type qemu can
//! write, filled with seeded patterns at odd offsets, compared byte for byte with
//! `qemu-img convert -O raw`; and a 3-link snapshot chain whose top allocation must equal
//! what `qemu-img map` reports for the top layer. Skipped (with a `SKIPPED` line) when
//! `qemu-img` is not installed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmdk::{AllocatedRange, CreateType, Disk, VmdkError};

const MIB: u64 = 1 << 20;

fn have_qemu() -> bool {
    let ok =
        |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if ok("qemu-img") && ok("qemu-io") {
        true
    } else {
        println!("SKIPPED: qemu-img / qemu-io not installed");
        false
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmdk-qemu-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes with `qemu-io`: (pattern byte, offset, length); a pattern of `None` is `write -z`.
fn qemu_write(dir: &Path, format: &str, file: &str, writes: &[(Option<u8>, u64, u64)]) {
    let mut args = vec!["-f".to_owned(), format.to_owned()];
    for (pattern, offset, len) in writes {
        args.push("-c".to_owned());
        args.push(match pattern {
            Some(p) => format!("write -P {p:#04x} {offset} {len}"),
            None => format!("write -z {offset} {len}"),
        });
    }
    args.push(file.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(dir, "qemu-io", &args);
}

/// Compares the disk with `qemu-img convert -O raw` of the same file, over `windows` (offset,
/// length), or the whole disk when `windows` is empty.
fn compare_with_qemu(dir: &Path, name: &str, disk: &Disk, windows: &[(u64, u64)]) {
    run(dir, "qemu-img", &["convert", "-f", "vmdk", "-O", "raw", name, "expected.raw"]);
    let raw = File::open(dir.join("expected.raw")).unwrap();
    let raw_len = raw.metadata().unwrap().len();
    assert_eq!(disk.capacity_bytes(), raw_len, "{name}: capacity");
    let whole = [(0, raw_len)];
    let windows = if windows.is_empty() { &whole[..] } else { windows };
    let chunk = 4 * MIB;
    let (mut ours, mut theirs) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    for &(start, len) in windows {
        let end = (start + len).min(raw_len);
        let mut at = start;
        while at < end {
            let n = chunk.min(end - at) as usize;
            disk.read_at(&mut ours[..n], at).unwrap();
            raw.read_exact_at(&mut theirs[..n], at).unwrap();
            if ours[..n] != theirs[..n] {
                let i = (0..n).find(|&i| ours[i] != theirs[i]).unwrap();
                panic!(
                    "{name}: differs from qemu at byte {}: ours {:#04x}, qemu {:#04x}",
                    at + i as u64,
                    ours[i],
                    theirs[i]
                );
            }
            at += n as u64;
        }
    }
    std::fs::remove_file(dir.join("expected.raw")).unwrap();
}

/// Patterns at odd offsets and lengths (unaligned to sectors and grains), leaving holes, and
/// touching the last, partial grain of a 17 MiB + 512 disk.
fn writes_for(size: u64) -> Vec<(Option<u8>, u64, u64)> {
    vec![
        (Some(0x11), 0, 65536),
        (Some(0x22), MIB + 512, 300 * 1024),
        (Some(0x33), 5 * MIB + 1000, 70_001),
        (Some(0x44), 8 * MIB, 2 * MIB),
        (Some(0x55), 9 * MIB - 100, 200),
        (Some(0x66), size - 5000, 5000),
    ]
}

fn single_type(
    subformat: &str,
    size: u64,
    windows: &[(u64, u64)],
    create_type: CreateType,
    extents: usize,
) {
    let scratch = Scratch::new(&format!("{subformat}-{size}"));
    let dir = &scratch.0;
    let size_arg = size.to_string();
    let writes = writes_for(size);
    if subformat == "streamOptimized" {
        // qemu-io cannot write streamOptimized: write a raw image and convert it.
        run(dir, "qemu-img", &["create", "-f", "raw", "src.raw", &size_arg]);
        qemu_write(dir, "raw", "src.raw", &writes);
        run(
            dir,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                "src.raw",
                "disk.vmdk",
            ],
        );
        std::fs::remove_file(dir.join("src.raw")).unwrap();
    } else {
        run(
            dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "vmdk",
                "-o",
                &format!("subformat={subformat}"),
                "disk.vmdk",
                &size_arg,
            ],
        );
        qemu_write(dir, "vmdk", "disk.vmdk", &writes);
    }
    let disk = vmdk::fs::open(&scratch.path("disk.vmdk")).unwrap();
    let chain = disk.chain();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].create_type, create_type);
    assert_eq!(chain[0].extent_files.len(), extents, "{:?}", chain[0].extent_files);
    assert!(chain[0].cid.is_some());
    compare_with_qemu(dir, "disk.vmdk", &disk, windows);
}

const ODD: u64 = 17 * MIB + 512;

#[test]
fn monolithic_sparse() {
    if have_qemu() {
        single_type("monolithicSparse", ODD, &[], CreateType::MonolithicSparse, 1);
    }
}

#[test]
fn monolithic_flat() {
    if have_qemu() {
        single_type("monolithicFlat", ODD, &[], CreateType::MonolithicFlat, 1);
    }
}

#[test]
fn two_gb_max_extent_sparse() {
    if have_qemu() {
        single_type("twoGbMaxExtentSparse", ODD, &[], CreateType::TwoGbMaxExtentSparse, 1);
    }
}

#[test]
fn two_gb_max_extent_flat() {
    if have_qemu() {
        single_type("twoGbMaxExtentFlat", ODD, &[], CreateType::TwoGbMaxExtentFlat, 1);
    }
}

#[test]
fn stream_optimized() {
    if have_qemu() {
        single_type("streamOptimized", ODD, &[], CreateType::StreamOptimized, 1);
    }
}

/// Windows of a large disk worth comparing: every write (with margins) and the extent
/// boundaries at every 2 GiB.
fn windows_of(size: u64) -> Vec<(u64, u64)> {
    let mut w: Vec<(u64, u64)> = writes_for(size)
        .iter()
        .map(|(_, off, len)| (off.saturating_sub(MIB), len + 2 * MIB))
        .collect();
    let mut boundary = 2048 * MIB;
    while boundary < size {
        w.push((boundary - 2 * MIB, 4 * MIB));
        boundary += 2048 * MIB;
    }
    w.push((size / 3, MIB));
    w
}

#[test]
fn two_gb_max_extent_sparse_three_extents() {
    if have_qemu() {
        let size = 4096 * MIB + ODD;
        single_type(
            "twoGbMaxExtentSparse",
            size,
            &windows_of(size),
            CreateType::TwoGbMaxExtentSparse,
            3,
        );
    }
}

#[test]
fn two_gb_max_extent_flat_three_extents() {
    if have_qemu() {
        let size = 4096 * MIB + ODD;
        single_type(
            "twoGbMaxExtentFlat",
            size,
            &windows_of(size),
            CreateType::TwoGbMaxExtentFlat,
            3,
        );
    }
}

/// Depth-0 ranges of `qemu-img map --output=json`, merged, with `zero` for ranges that hold no
/// data (zeroed grains).
fn qemu_top_layer(dir: &Path, name: &str) -> Vec<AllocatedRange> {
    let json = run(dir, "qemu-img", &["map", "--output=json", "-f", "vmdk", name]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let mut out: Vec<AllocatedRange> = Vec::new();
    for e in entries {
        if e["depth"].as_u64() != Some(0) || e["present"].as_bool() != Some(true) {
            continue;
        }
        let range = AllocatedRange {
            offset: e["start"].as_u64().unwrap(),
            len: e["length"].as_u64().unwrap(),
            zero: !e["data"].as_bool().unwrap(),
        };
        match out.last_mut() {
            Some(last) if last.offset + last.len == range.offset && last.zero == range.zero => {
                last.len += range.len
            }
            _ => out.push(range),
        }
    }
    out
}

#[test]
fn three_link_snapshot_chain() {
    if !have_qemu() {
        return;
    }
    let scratch = Scratch::new("chain");
    let dir = &scratch.0;
    let size = ODD.to_string();
    run(dir, "qemu-img", &["create", "-f", "vmdk", "base.vmdk", &size]);
    qemu_write(dir, "vmdk", "base.vmdk", &writes_for(ODD));
    run(
        dir,
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "mid.vmdk",
        ],
    );
    qemu_write(
        dir,
        "vmdk",
        "mid.vmdk",
        &[
            (Some(0xa1), 32768, 65536),
            (Some(0xa2), 8 * MIB + 4096, 100),
            (None, 5 * MIB, 256 * 1024),
            (Some(0xa3), 12 * MIB, MIB),
        ],
    );
    std::fs::create_dir(dir.join("snap")).unwrap();
    run(
        dir,
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "../mid.vmdk",
            "-F",
            "vmdk",
            "snap/top.vmdk",
        ],
    );
    qemu_write(
        dir,
        "vmdk",
        "snap/top.vmdk",
        &[
            (Some(0xb1), 1000, 2000),
            (None, 8 * MIB, 512 * 1024),
            (Some(0xb2), 12 * MIB + 65536, 65536),
            (Some(0xb3), ODD - 700, 700),
            (None, 3 * MIB + 512, 4096),
        ],
    );

    let disk = vmdk::fs::open(&scratch.path("snap/top.vmdk")).unwrap();
    let chain = disk.chain();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1].file, "../mid.vmdk");
    assert_eq!(chain[2].file, "../base.vmdk");
    assert_eq!(chain[0].parent_cid, chain[1].cid);
    assert_eq!(chain[1].parent_cid, chain[2].cid);
    compare_with_qemu(dir, "snap/top.vmdk", &disk, &[]);

    let ours = disk.allocated_extents().unwrap();
    let theirs = qemu_top_layer(dir, "snap/top.vmdk");
    assert_eq!(ours, theirs);
    assert!(ours.iter().any(|r| r.zero), "expected zeroed grains in the top link: {ours:?}");
    assert!(ours.iter().any(|r| !r.zero));

    // The middle link alone, and its own changed grains.
    let mid = vmdk::fs::open(&scratch.path("mid.vmdk")).unwrap();
    compare_with_qemu(dir, "mid.vmdk", &mid, &[]);
    assert_eq!(mid.allocated_extents().unwrap(), qemu_top_layer(dir, "mid.vmdk"));

    // Writing to the base after the snapshot changes its CID: the chain must be refused.
    qemu_write(dir, "vmdk", "base.vmdk", &[(Some(0x99), 0, 512)]);
    match vmdk::fs::open(&scratch.path("snap/top.vmdk")) {
        Err(e @ VmdkError::ParentCidMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("vmdk: ../mid.vmdk has parentCID="), "{text}");
            assert!(text.contains("but its parent ../base.vmdk has CID="), "{text}");
        }
        other => panic!("expected a CID mismatch, got {other:?}"),
    }
}

#[test]
fn descriptor_file_of_a_flat_disk_is_small_text() {
    if !have_qemu() {
        return;
    }
    let scratch = Scratch::new("flattext");
    run(
        &scratch.0,
        "qemu-img",
        &["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", "d.vmdk", "1M"],
    );
    let mut text = String::new();
    File::open(scratch.path("d.vmdk")).unwrap().read_to_string(&mut text).unwrap();
    let descriptor = vmdk::Descriptor::parse("d.vmdk", text.as_bytes()).unwrap();
    assert_eq!(descriptor.create_type, CreateType::MonolithicFlat);
    // Opening the flat data file itself as a disk is a clear error, not a read of garbage.
    let err = vmdk::fs::open(&scratch.path("d-flat.vmdk")).unwrap_err().to_string();
    assert!(err.contains("d-flat.vmdk: neither a sparse extent"), "{err}");
}
