//! The appliance's OVA packaging with real tools: GNU tar reads it with the descriptor first,
//! python's XML parser reads the descriptor, sha256sum agrees with the manifest, qemu-img
//! accepts the disk and finds it identical to the image; a truncated or tampered OVA is
//! refused by name.

use std::fs;

use crate::harness::*;

#[test]
fn ova_is_read_by_tar_xml_sha256sum_and_qemu_img_and_damage_is_named() {
    if !require_tools("ova", &["tar", "qemu-img", "python3", "sha256sum"]) {
        return;
    }
    let dir = TestDir::new("image-ova");
    let logs = dir.subdir("logs");
    let image = dir.join("appliance.img");
    let mut bytes = vec![0u8; 24 << 20];
    Rng::new(0x0a0a_0001).fill(&mut bytes[..3 << 20]);
    bytes[20 << 20..(20 << 20) + 4096].fill(0x42);
    fs::write(&image, &bytes).unwrap();
    let ova = dir.join("siterelay.ova");
    let ova_arg = ova.to_str().unwrap();
    let made = run_siterelay(
        &[
            "image",
            "ova",
            "--disk",
            image.to_str().unwrap(),
            "--out",
            ova_arg,
            "--name",
            "siterelay",
        ],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(made.status.success(), "{}", made.describe());
    let tool = |name: &str, args: &[&str]| {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let finished = run_tool(name, &args, &logs, COMMAND_TIMEOUT);
        assert!(finished.status.success(), "{name} {args:?}\n{}", finished.describe());
        finished.stdout
    };
    assert_eq!(
        tool("tar", &["-tf", ova_arg]),
        "siterelay.ovf\nsiterelay-disk1.vmdk\nsiterelay.mf\n"
    );
    let out = dir.subdir("unpacked");
    tool("tar", &["-xf", ova_arg, "-C", out.to_str().unwrap()]);
    let ovf = out.join("siterelay.ovf");
    let parsed = tool(
        "python3",
        &["-c", "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); print(len(d.getElementsByTagName('Property')))", ovf.to_str().unwrap()],
    );
    assert_eq!(parsed.trim(), "4", "the four deployment properties");
    let manifest = fs::read_to_string(out.join("siterelay.mf")).unwrap();
    for member in ["siterelay.ovf", "siterelay-disk1.vmdk"] {
        let sum = tool("sha256sum", &[out.join(member).to_str().unwrap()]);
        let hash = sum.split_whitespace().next().unwrap();
        assert!(manifest.contains(&format!("SHA256({member})= {hash}")), "{member}: {manifest}");
    }
    let vmdk = out.join("siterelay-disk1.vmdk");
    tool("qemu-img", &["check", vmdk.to_str().unwrap()]);
    tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", image.to_str().unwrap(), vmdk.to_str().unwrap()],
    );
    let verified = run_siterelay(&["image", "verify-ova", ova_arg], &logs, COMMAND_TIMEOUT);
    assert!(verified.status.success(), "{}", verified.describe());

    let whole = fs::read(&ova).unwrap();
    let truncated = dir.join("truncated.ova");
    fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let finished = run_siterelay(
        &["image", "verify-ova", truncated.to_str().unwrap()],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(
        finished.stderr.contains(&format!("{}: ova: truncated", truncated.display())),
        "{}",
        finished.stderr
    );
    let tampered = dir.join("tampered.ova");
    let mut damaged = whole.clone();
    let at = whole.len() / 2;
    damaged[at] ^= 0xff;
    fs::write(&tampered, &damaged).unwrap();
    let finished =
        run_siterelay(&["image", "verify-ova", tampered.to_str().unwrap()], &logs, COMMAND_TIMEOUT);
    assert!(!finished.status.success(), "a damaged OVA verified");
    assert!(finished.stderr.contains("ova: "), "{}", finished.stderr);
}

/// The appliance image's update path without a VM: slots are files standing in for the
/// root-a/root-b partitions, the ESP is a directory. A signed image bundle lands in the
/// inactive partition and gets a counted boot entry; the booted trial blesses it; a loader
/// fallback or a failed health check removes it; damaged or unsuitable bundles are refused
/// before anything is touched.
#[test]
fn image_bundles_go_to_the_inactive_partition_with_counted_boot_entries() {
    let dir = TestDir::new("image-update");
    let logs = dir.subdir("logs");
    let path = |name: &str| dir.join(name).display().to_string();
    let ok = |args: &[&str]| {
        let finished = run_siterelay(args, &logs, COMMAND_TIMEOUT);
        assert!(finished.status.success(), "siterelay {args:?}\n{}", finished.describe());
        finished.stdout
    };
    for part in ["part-a", "part-b"] {
        fs::File::create(dir.join(part)).unwrap().set_len(4 << 20).unwrap();
    }
    fs::create_dir_all(dir.join("esp")).unwrap();
    let layout = serde_json::json!({
        "esp": path("esp"), "partition_a": path("part-a"), "partition_b": path("part-b"),
        "boot_tries": 2, "cmdline": "console=ttyS0",
    });
    fs::write(dir.join("layout.json"), layout.to_string()).unwrap();
    ok(&["bundle", "keygen", "--out", &path("k1")]);
    ok(&[
        "bundle",
        "root",
        "--keys",
        &path("k1"),
        "--threshold",
        "1",
        "--version",
        "1",
        "--out",
        &path("root.json"),
    ]);
    let state = path("state");
    ok(&[
        "update",
        "init",
        "--state-dir",
        &state,
        "--layout",
        &path("layout.json"),
        "--root",
        &path("root.json"),
        "--version",
        "0.1.0",
        "--component",
        "appliance-image=0.1.0",
    ]);
    let entries = || {
        let mut names: Vec<String> = fs::read_dir(dir.join("esp/loader/entries"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(entries(), ["siterelay-0-a.conf"]);
    let cache = dir.subdir("cache");
    let config = dir.join("appliance.toml");
    fs::write(
        &config,
        format!(
            "[relay]\ncache_dir = \"{}\"\ncache_bytes_max = \"64MiB\"\nsegment_bytes = \"16MiB\"\n",
            cache.display()
        ),
    )
    .unwrap();
    let release = dir.join("release");
    let bundle = |name: &str, version: &str, bundle_version: &str, payloads: &[&str]| {
        let files = dir.subdir(&format!("payloads-{name}"));
        let mut rng = Rng::new(bundle_version.len() as u64 * 7 + version.len() as u64);
        let mut args = vec![
            "bundle".to_string(),
            "create".into(),
            "--out".into(),
            path(name),
            "--rollup".into(),
            format!("SR-{version}"),
            "--bundle-version".into(),
            bundle_version.into(),
            "--component".into(),
            format!("appliance-image={version}"),
            "--sign".into(),
            path("k1"),
        ];
        for payload in payloads {
            let mut bytes = vec![0u8; if *payload == "root.img" { 1 << 20 } else { 4096 }];
            rng.fill(&mut bytes);
            fs::write(files.join(payload), &bytes).unwrap();
            args.extend(["--payload".into(), files.join(payload).display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs);
        path(name)
    };
    let refused = |args: &[&str], message: &str| {
        let finished = run_siterelay(args, &logs, COMMAND_TIMEOUT);
        assert!(!finished.status.success(), "siterelay {args:?} passed\n{}", finished.describe());
        assert!(finished.stderr.contains(message), "{args:?}: {}", finished.stderr);
    };
    let image = ["root.img", "vmlinuz", "initrd.img"];

    // Refused before anything is touched: a binary-only bundle, a damaged root image.
    let binary_only = bundle("binary-only", "0.2.0", "2", &["siterelay"]);
    refused(
        &["update", "apply", &binary_only, "--state-dir", &state],
        "the bundle has no \"root.img\" payload, which these slots need",
    );
    let damaged = bundle("damaged", "0.2.0", "2", &image);
    let root_img = dir.join("damaged/payloads/root.img");
    let mut bytes = fs::read(&root_img).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(&root_img, &bytes).unwrap();
    refused(
        &["update", "apply", &damaged, "--state-dir", &state],
        "payload \"root.img\" has sha256",
    );
    assert!(fs::read(dir.join("part-b")).unwrap().iter().all(|&b| b == 0), "slot b was touched");
    assert_eq!(entries(), ["siterelay-0-a.conf"]);

    // A good bundle: partition b, its kernel on the ESP, a counted entry that sorts first.
    let good = bundle("good", "0.2.0", "2", &image);
    ok(&["update", "apply", &good, "--state-dir", &state]);
    let written = fs::read(dir.join("part-b")).unwrap();
    assert_eq!(&written[..1 << 20], &fs::read(dir.join("payloads-good/root.img")).unwrap()[..]);
    assert_eq!(
        fs::read(dir.join("esp/EFI/siterelay/b/vmlinuz")).unwrap(),
        fs::read(dir.join("payloads-good/vmlinuz")).unwrap()
    );
    assert_eq!(entries(), ["siterelay-0-a.conf", "siterelay-2-b+2.conf"]);
    let status = ok(&["update", "status", "--state-dir", &state]);
    assert!(status.contains("boot entries: siterelay-0-a.conf, siterelay-2-b+2.conf"), "{status}");

    // The loader started b (and counted it); b's health check passes: blessed, active.
    fs::rename(
        dir.join("esp/loader/entries/siterelay-2-b+2.conf"),
        dir.join("esp/loader/entries/siterelay-2-b+1-1.conf"),
    )
    .unwrap();
    fs::write(&release, "siterelay-appliance 0.2.0\n").unwrap();
    let booted = ok(&[
        "update",
        "boot",
        "--state-dir",
        &state,
        "--booted-slot",
        "b",
        "--release-file",
        release.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(booted.contains("updated to 0.2.0 (slot b)"), "{booted}");
    assert_eq!(entries(), ["siterelay-0-a.conf", "siterelay-2-b.conf"]);

    // 0.3.0 goes to a (a's old entry first), the loader falls back to b: dropped.
    let next = bundle("next", "0.3.0", "3", &image);
    ok(&["update", "apply", &next, "--state-dir", &state]);
    assert_eq!(entries(), ["siterelay-2-b.conf", "siterelay-3-a+2.conf"]);
    let fallback = ok(&["update", "boot", "--state-dir", &state, "--booted-slot", "b"]);
    assert!(
        fallback.contains(
            "update to 0.3.0 rolled back: slot a did not pass its health check within its boot attempts"
        ),
        "{fallback}"
    );
    assert_eq!(entries(), ["siterelay-2-b.conf"]);

    // Applied again, started, but its health check fails: removed, exit 75 (reboot).
    let again = bundle("again", "0.3.0", "4", &image);
    ok(&["update", "apply", &again, "--state-dir", &state]);
    let finished = run_siterelay(
        &[
            "update",
            "boot",
            "--state-dir",
            &state,
            "--booted-slot",
            "a",
            "--release-file",
            release.to_str().unwrap(),
        ],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert_eq!(finished.status.code(), Some(75), "{}", finished.describe());
    assert!(finished.stdout.contains("its health check failed"), "{}", finished.stdout);
    assert!(finished.stdout.contains("reboot to return to slot b (0.2.0)"), "{}", finished.stdout);
    assert_eq!(entries(), ["siterelay-2-b.conf"]);
}
