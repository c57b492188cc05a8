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
