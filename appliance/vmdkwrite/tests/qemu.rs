//! The images checked by QEMU's own VMDK driver: `qemu-img check` finds no errors,
//! `qemu-img info` reports the format, size and create type, and `qemu-img compare` finds
//! the image identical to a raw file of the source. Skipped (with a SKIPPED line) when
//! `qemu-img` is not installed. The OVF is parsed by Python's XML parser when `python3`
//! is there.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmdkwrite::{
    ovf_descriptor, write_monolithic_sparse, write_stream_optimized, OvfVm, ReadAt, VmdkOptions,
    WriteReport,
};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmdkwrite-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A disk that is zero but for a few regions, and says so.
#[derive(Debug)]
struct Sparse {
    len: u64,
    regions: Vec<(u64, Vec<u8>)>,
}

impl ReadAt for Sparse {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        buf.fill(0);
        for (at, bytes) in &self.regions {
            let (s, e) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }

    fn data_ranges(&self, _offset: u64, _len: u64) -> Vec<(u64, u64)> {
        self.regions.iter().map(|(at, b)| (*at, b.len() as u64)).collect()
    }
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Write the source's raw image (sparse: holes where the source says zeros), its length
/// rounded up to a sector as the VMDK's capacity is.
fn write_raw(source: &dyn ReadAt, path: &Path) {
    let file = File::create(path).unwrap();
    let capacity = source.len().div_ceil(512) * 512;
    file.set_len(capacity).unwrap();
    for (at, n) in source.data_ranges(0, source.len()) {
        let mut buf = vec![0u8; n as usize];
        source.read_at(&mut buf, at).unwrap();
        file.write_all_at(&buf, at).unwrap();
    }
}

/// Check one image with qemu-img: check, info, compare against `raw`.
fn check_with_qemu(vmdk: &Path, raw: &Path, create_type: &str, report: &WriteReport) {
    let v = vmdk.to_str().unwrap();
    assert_eq!(fs::metadata(vmdk).unwrap().len(), report.file_bytes, "{v}: reported size");

    let (ok, text) = qemu_img(&["check", "-f", "vmdk", v]);
    println!("qemu-img check {v}: {}", text.trim());
    assert!(ok && text.contains("No errors were found"), "check {v}: {text}");

    let (ok, text) = qemu_img(&["info", "--output=json", "-f", "vmdk", v]);
    assert!(ok, "info {v}: {text}");
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["format"], "vmdk", "{text}");
    assert_eq!(info["virtual-size"], report.capacity_bytes, "{text}");
    assert_eq!(info["cluster-size"], 65536, "{text}");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["create-type"], create_type, "{text}");
    assert_eq!(data["parent-cid"], 0xffff_ffffu64, "{text}");
    let compressed = create_type == "streamOptimized";
    assert_eq!(data["extents"][0]["compressed"].as_bool().unwrap_or(false), compressed);
    println!(
        "qemu-img info {v}: format vmdk, virtual-size {}, create-type {create_type}",
        report.capacity_bytes
    );

    let (ok, text) = qemu_img(&["compare", "-f", "vmdk", "-F", "raw", v, raw.to_str().unwrap()]);
    println!("qemu-img compare {v}: {}", text.trim());
    assert!(ok && text.contains("Images are identical"), "compare {v}: {text}");
}

/// Write `source` in both formats into a scratch directory (`sparse.vmdk`, `stream.vmdk`,
/// `source.raw`) and check both; the caller removes the directory.
fn both_formats(name: &str, source: &dyn ReadAt) -> (PathBuf, WriteReport, WriteReport) {
    let dir = scratch(name);
    let raw = dir.join("source.raw");
    write_raw(source, &raw);

    let sparse_path = dir.join("sparse.vmdk");
    let mut out = BufWriter::new(File::create(&sparse_path).unwrap());
    let sparse =
        write_monolithic_sparse(source, &mut out, &VmdkOptions::named("sparse.vmdk")).unwrap();
    drop(out);
    check_with_qemu(&sparse_path, &raw, "monolithicSparse", &sparse);

    let stream_path = dir.join("stream.vmdk");
    let mut out = BufWriter::new(File::create(&stream_path).unwrap());
    let stream =
        write_stream_optimized(source, &mut out, 1, &VmdkOptions::named("stream.vmdk")).unwrap();
    out.flush().unwrap();
    drop(out);
    check_with_qemu(&stream_path, &raw, "streamOptimized", &stream);

    (dir, sparse, stream)
}

macro_rules! need_qemu {
    () => {
        if !have("qemu-img") {
            println!("SKIPPED: qemu-img is not installed");
            return;
        }
    };
}

#[test]
fn random_data() {
    need_qemu!();
    let src = noise(11, 4 << 20);
    let (dir, sparse, stream) = both_formats("random", &src);
    assert_eq!(sparse.grains_written, 64);
    assert_eq!(stream.grains_written, 64);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zero_runs_and_an_odd_size() {
    need_qemu!();
    // 17 MiB + 512: stretches of noise, zeros and repeated bytes, 48 KiB to 1 MiB long.
    let len = (17 << 20) + 512;
    let mut src = Vec::with_capacity(len);
    let sizes = noise(12, 64);
    let mut i = 0;
    while src.len() < len {
        let n = ((usize::from(sizes[i % 64]) + 1) * 4096 + 45_056).min(len - src.len());
        match i % 3 {
            0 => src.extend(noise(i as u64 + 100, n)),
            1 => src.resize(src.len() + n, 0),
            _ => src.resize(src.len() + n, 0x5a),
        }
        i += 1;
    }
    let zero_grains = src.chunks(65536).filter(|g| g.iter().all(|&b| b == 0)).count() as u64;
    assert!(zero_grains > 10, "the pattern has whole zero grains");
    let (dir, sparse, stream) = both_formats("zero-runs", &src);
    assert_eq!(sparse.capacity_bytes, len as u64);
    assert_eq!(sparse.grains_total, 273);
    assert_eq!(sparse.grains_written, 273 - zero_grains);
    assert_eq!(stream.grains_written, 273 - zero_grains);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn length_not_a_multiple_of_512_is_rounded_up() {
    need_qemu!();
    let src = noise(13, (1 << 20) + 1);
    let (dir, sparse, stream) = both_formats("odd", &src);
    assert_eq!(sparse.capacity_bytes, (1 << 20) + 512);
    assert_eq!(stream.capacity_bytes, (1 << 20) + 512);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_gib_sparse_source() {
    need_qemu!();
    let src = Sparse {
        len: 1 << 30,
        regions: vec![
            (0, noise(14, 4096)),
            (300 << 20, noise(15, 200_000)),
            ((512 << 20) - 100, noise(16, 200)), // across a table boundary
            ((1 << 30) - 65536, vec![0xee; 65536]),
        ],
    };
    let (dir, sparse, stream) = both_formats("sparse-1g", &src);
    assert_eq!(sparse.grains_written, 1 + 4 + 2 + 1);
    assert_eq!(sparse.tables_written, 5);
    assert_eq!(sparse.bytes_read, 65536 * 8);
    // Metadata (2 × (32 tables + directory)) plus 8 grains.
    assert!(sparse.file_bytes < 1 << 20, "{}", sparse.file_bytes);
    assert!(stream.file_bytes < 300 << 10, "{}", stream.file_bytes);

    // QEMU can go on writing the monolithicSparse image: into a table that was left a hole
    // and into an allocated grain; the result still checks clean and reads back.
    if have("qemu-io") {
        let v = dir.join("sparse.vmdk");
        let v = v.to_str().unwrap();
        let io = |cmd: &str| {
            let out = Command::new("qemu-io").args(["-f", "vmdk", "-c", cmd, v]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success() && !text.contains("failed"), "qemu-io {cmd}: {text}");
        };
        io("write -P 0xab 700M 128k");
        io("write -P 0xcd 300M 4k");
        let (ok, text) = qemu_img(&["check", "-f", "vmdk", v]);
        assert!(ok && text.contains("No errors were found"), "check after writes: {text}");
        io("read -P 0xab 700M 128k");
        io("read -P 0xcd 300M 4k");
        io("read -P 0xee 1048512k 64k");
        println!(
            "qemu-io wrote into {v} (hole table and allocated grain): check clean, reads back"
        );
    } else {
        println!("SKIPPED: qemu-io is not installed (write-after-create check)");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ovf_parses_and_points_at_the_disk() {
    let dir = scratch("ovf");
    let src = noise(17, 300_000);
    let disk = dir.join("vm & disk.vmdk");
    let mut out = File::create(&disk).unwrap();
    let report =
        write_stream_optimized(&src, &mut out, 6, &VmdkOptions::named("vm & disk.vmdk")).unwrap();
    let mut vm = OvfVm::for_disk("web <01> & \"db\"", "vm & disk.vmdk", &report);
    vm.cpus = 2;
    vm.memory_mib = 2048;
    let xml = ovf_descriptor(&vm);
    let ovf = dir.join("vm.ovf");
    fs::write(&ovf, &xml).unwrap();
    assert_eq!(report.file_bytes, fs::metadata(&disk).unwrap().len());

    if !have("python3") {
        println!("SKIPPED: python3 is not installed (OVF checked structurally only)");
        assert!(xml.contains(&format!(r#"ovf:size="{}""#, report.file_bytes)));
        fs::remove_dir_all(&dir).unwrap();
        return;
    }
    // Python's expat parser: rejects anything not well-formed (and unbound prefixes).
    let script = r#"
import sys, xml.dom.minidom as m
d = m.parse(sys.argv[1])
O = "http://schemas.dmtf.org/ovf/envelope/1"
f = d.getElementsByTagNameNS(O, "File")[0]
k = d.getElementsByTagNameNS(O, "Disk")[0]
print(f.getAttributeNS(O, "href"))
print(f.getAttributeNS(O, "size"))
print(k.getAttributeNS(O, "capacity"))
print(k.getAttributeNS(O, "format"))
print(d.getElementsByTagNameNS(O, "Name")[0].firstChild.data)
"#;
    let out =
        Command::new("python3").arg("-c").arg(script).arg(&ovf).output().expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "vm & disk.vmdk",
            &report.file_bytes.to_string(),
            &report.capacity_bytes.to_string(),
            "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
            "web <01> & \"db\"",
        ]
    );
    println!("OVF parsed by python3 xml.dom.minidom: {lines:?}");
    fs::remove_dir_all(&dir).unwrap();
}
