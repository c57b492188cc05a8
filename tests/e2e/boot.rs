//! The appliance image, booted for real: `scripts/build-image` from this tree, then
//! `qemu-system-x86_64` under TCG (KVM guests hang on this host kind, recipes.md §4) with
//! OVMF, systemd-boot and the GPT disk. From the host, an agent replicates a disk through the
//! relay running in the VM (port forward) to a target on the host; the replica must be
//! identical. Then a signed bundle on update media moves the appliance to slot b (it must
//! pass its health check and stay there), and a broken bundle must be rolled back by the boot
//! loader's boot counting, with the data partition (configuration, cache) kept throughout.
//!
//! The slow suite: `scripts/test` runs it after the others (`boot::` tests), one VM at a time.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// One UEFI boot to "ready" takes ~15 s under TCG here; a reboot cycle a bit more.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// The relay's port inside the VM (the image's default configuration).
const VM_RELAY_PORT: u16 = 7700;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/build-image` with this test build's binary.
fn build_image(out: &Path, version: &str, extra: &[&str], logs: &Path) {
    let mut args: Vec<OsString> = vec![
        "--out".into(),
        out.into(),
        "--version".into(),
        version.into(),
        "--binary".into(),
        BIN.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let script = repo().join("scripts/build-image");
    let built = Running::spawn_program(&script, &args, logs, &format!("build-{version}"))
        .wait(BUILD_TIMEOUT)
        .unwrap_or_else(|error| panic!("build-image {version}: {error}"));
    assert!(built.status.success(), "build-image {version}: {}", built.describe());
}

/// An update bundle of image `dir` (root.img, vmlinuz, initrd.img) signed with `key`, on
/// an ext4 "update media" disk labeled SR-UPDATE.
fn update_media(
    dir: &Path,
    version: &str,
    bundle_version: u32,
    key: &Path,
    logs: &Path,
) -> PathBuf {
    let media_dir = dir.join("media");
    fs::create_dir_all(&media_dir).unwrap();
    let bundle = media_dir.join("bundle");
    let payload = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let made = run_siterelay(
        &[
            "bundle",
            "create",
            "--out",
            bundle.to_str().unwrap(),
            "--rollup",
            &format!("SR-{version}"),
            "--bundle-version",
            &bundle_version.to_string(),
            "--component",
            &format!("appliance-image={version}"),
            "--payload",
            &payload("root.img"),
            "--payload",
            &payload("vmlinuz"),
            "--payload",
            &payload("initrd.img"),
            "--sign",
            key.to_str().unwrap(),
        ],
        logs,
        COMMAND_TIMEOUT,
    );
    assert!(made.status.success(), "bundle create: {}", made.describe());
    let media = dir.join("media.ext4");
    let file = fs::File::create(&media).unwrap();
    file.set_len(64 << 20).unwrap();
    let args: Vec<OsString> = ["-q", "-F", "-L", "SR-UPDATE", "-d"]
        .iter()
        .map(OsString::from)
        .chain([media_dir.into_os_string(), media.clone().into_os_string()])
        .collect();
    let formatted = run_tool("mkfs.ext4", &args, logs, COMMAND_TIMEOUT);
    assert!(formatted.status.success(), "mkfs.ext4: {}", formatted.describe());
    media
}

/// A VM running the appliance disk, its serial console captured in a file and fed from a
/// pipe (the operator at the console).
struct Vm {
    child: Option<Child>,
    console: ChildStdin,
    log: PathBuf,
    /// Console bytes already matched by `expect`.
    seen: usize,
    label: String,
}

impl Vm {
    /// `media`: an update media disk; `cdrom`: an ISO in the CD drive.
    fn boot(
        disk: &Path,
        vars: &Path,
        media: Option<&Path>,
        cdrom: Option<&Path>,
        relay_port: u16,
        log: PathBuf,
    ) -> Vm {
        let mut args: Vec<String> = [
            "-accel", "tcg", "-machine", "q35", "-m", "1024", "-display", "none", "-serial",
            "stdio", "-monitor", "none",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            "-drive".into(),
            format!("if=virtio,format=qcow2,file={}", disk.display()),
            "-nic".into(),
            format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{relay_port}-:{VM_RELAY_PORT}"
            ),
        ]);
        if let Some(media) = media {
            args.extend([
                "-drive".into(),
                format!("if=virtio,format=raw,readonly=on,file={}", media.display()),
            ]);
        }
        if let Some(iso) = cdrom {
            args.extend(["-cdrom".into(), iso.display().to_string()]);
        }
        let out = fs::File::create(&log).unwrap();
        let mut child = Command::new(tool("qemu-system-x86_64"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start qemu-system-x86_64");
        let console = child.stdin.take().unwrap();
        let label = log.file_name().unwrap().to_string_lossy().into_owned();
        Vm { child: Some(child), console, log, seen: 0, label }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits for a console line containing `needle` after what earlier calls matched;
    /// returns that line.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(found) = text.get(self.seen..).and_then(|rest| rest.find(needle)) {
                let at = self.seen + found;
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                self.seen = end;
                return text[start..end].trim_end_matches('\r').to_string();
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{}: no console line with {needle:?} within {timeout:?} (qemu {exited:?}); \
                 console:\n{}",
                self.label,
                tail(&text, 60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types at the console's shell (`askfirst` wants Enter first).
    fn type_line(&mut self, line: &str) {
        self.console.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.console.flush().unwrap();
    }

    /// `poweroff` at the console; qemu exits when the guest powers off.
    fn power_off(mut self) {
        self.type_line("");
        std::thread::sleep(Duration::from_millis(500));
        self.type_line("poweroff");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut child = self.child.take().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: the appliance did not power off; console:\n{}",
                    self.label,
                    tail(&self.text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The data partition's configuration hash from the boot script's `data:` console line.
fn config_hash(line: &str) -> &str {
    line.split("data: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no configuration hash in {line:?}"))
}

/// The value of `key=` in a console line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// An agent's one-shot sync of `disk` through the relay in the VM, with the credential in
/// `pki`.
fn replicate(relay: std::net::SocketAddr, disk: &Path, dir: &TestDir, pki: &Path, run: &str) {
    let agent = Agent {
        relay,
        disks: vec![("vmdisk".into(), disk.to_path_buf())],
        state_dir: dir.join("agent-state"),
        out_dir: dir.subdir("logs"),
        reconnect_timeout_secs: AGENT_RECONNECT_TIMEOUT_SECS,
    };
    let mut args = agent.args();
    args.extend(["--pki-dir".into(), pki.as_os_str().to_owned()]);
    let finished = Running::spawn(&args, &agent.out_dir, run)
        .wait(AGENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("{run}: {error}"));
    assert!(finished.status.success(), "{run}: {}", finished.describe());
}

/// Makes an agent passphrase at the appliance's console, as an operator would, and registers
/// the host's agent with it (credential in `pki`).
fn register_agent(vm: &mut Vm, relay: std::net::SocketAddr, pki: &Path, logs: &Path) {
    vm.type_line("");
    std::thread::sleep(Duration::from_millis(500));
    vm.type_line("siterelay register --new-passphrase --pki-dir /data/pki --ttl 600");
    vm.expect("registers one agent within 600 s", BOOT_TIMEOUT);
    let console = vm.text();
    let passphrase = console
        .lines()
        .map(|line| line.trim_end_matches('\r').trim())
        .rfind(|line| {
            line.len() == 39
                && line.split('-').count() == 8
                && line.bytes().all(|b| b == b'-' || b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .unwrap_or_else(|| panic!("no passphrase on the console:\n{}", tail(&console, 20)))
        .to_string();
    let registered = run_siterelay(
        &[
            "register",
            "--connect",
            &relay.to_string(),
            "--passphrase",
            &passphrase,
            "--name",
            "host-agent",
            "--pki-dir",
            pki.to_str().unwrap(),
        ],
        logs,
        COMMAND_TIMEOUT,
    );
    assert!(registered.status.success(), "register the agent: {}", registered.describe());
}

#[test]
fn appliance_boots_replicates_updates_in_place_and_rolls_back_a_bad_update() {
    if !require_tools("boot", &["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "genisoimage"]) {
        return;
    }
    assert!(
        Path::new(OVMF_CODE).exists(),
        "{OVMF_CODE} missing (scripts/image-deps installs ovmf)"
    );
    let dir = TestDir::new("boot");
    let logs = dir.subdir("logs");

    // The recovery site: a target on the host, reached from the VM's user network at 10.0.2.2,
    // with mutual TLS; the relay in the VM registers with a passphrase made here.
    let target_pki = dir.join("target-pki");
    let target_config = logs.join("target.toml");
    fs::write(&target_config, crate::harness::TARGET_NEWEST_POINT_ONLY).unwrap();
    let mut target = Server::target_with(
        &dir.join("target-data"),
        &logs,
        &["--config", target_config.to_str().unwrap(), "--pki-dir", target_pki.to_str().unwrap()],
    );
    target.start();
    let made = run_siterelay(
        &["register", "--new-passphrase", "--pki-dir", target_pki.to_str().unwrap()],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(made.status.success(), "{}", made.describe());
    let relay_passphrase = made.stdout.trim().to_string();
    // Its address comes from the OVF environment on the CD at first boot, as a hypervisor
    // deploying the OVA with the property siterelay.target set would hand it over.
    let env_dir = dir.subdir("ovfenv");
    fs::write(
        env_dir.join("ovf-env.xml"),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment \
             xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
             xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" oe:id=\"\">\n  \
             <PropertySection>\n    <Property oe:key=\"siterelay.role\" oe:value=\"relay\"/>\n    \
             <Property oe:key=\"siterelay.target\" oe:value=\"10.0.2.2:{}\"/>\n    \
             <Property oe:key=\"siterelay.registration\" oe:value=\"{relay_passphrase}\"/>\n  \
             </PropertySection>\n</Environment>\n",
            target.addr().port()
        ),
    )
    .unwrap();
    let env_iso = dir.join("ovf-env.iso");
    let args: Vec<OsString> = ["-quiet", "-V", "OVF ENV", "-r", "-J", "-o"]
        .iter()
        .map(OsString::from)
        .chain([env_iso.clone().into_os_string(), env_dir.into_os_string()])
        .collect();
    let iso = run_tool("genisoimage", &args, &logs, COMMAND_TIMEOUT);
    assert!(iso.status.success(), "genisoimage: {}", iso.describe());

    let base = dir.join("image-0.1.0");
    build_image(&base, "0.1.0", &[], &logs);
    let ova = base.join("siterelay-0.1.0.ova");
    let ova_bytes = fs::metadata(&ova).unwrap().len();
    assert!(ova_bytes <= 64 << 20, "the OVA is {} MiB, over 64 MiB", ova_bytes >> 20);
    let disk = dir.join("vm.qcow2");
    let created = run_tool(
        "qemu-img",
        &["create", "-f", "qcow2", "-F", "raw", "-b"]
            .iter()
            .map(OsString::from)
            .chain([base.join("disk.img").into_os_string(), disk.clone().into_os_string()])
            .collect::<Vec<_>>(),
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(created.status.success(), "{}", created.describe());
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(OVMF_VARS, &vars).unwrap();
    let relay_port = free_port();
    let relay = loopback(relay_port);

    // Boot 1: first boot from slot a; replicate through the relay in the VM.
    let started = Instant::now();
    let mut vm =
        Vm::boot(&disk, &vars, None, Some(&env_iso), relay_port, logs.join("console-1.log"));
    vm.expect("written from /run/ovfenv/ovf-env.xml (role relay)", BOOT_TIMEOUT);
    let first_data = vm.expect("siterelay-appliance: data:", BOOT_TIMEOUT);
    // First start of the relay: it registers with the target (mutual TLS from then on).
    vm.expect("siterelay-appliance: registered as relay", BOOT_TIMEOUT);
    let ready = vm.expect("SITERELAY-READY", BOOT_TIMEOUT);
    let boot_secs = started.elapsed().as_secs_f64();
    assert_eq!((field(&ready, "slot"), field(&ready, "version")), ("a", "0.1.0"), "{ready}");
    vm.expect("update: running slot a (0.1.0)", BOOT_TIMEOUT);
    eprintln!(
        "boot to ready: {boot_secs:.1} s (guest uptime {} s); {ready}",
        field(&ready, "uptime")
    );
    // The host's agent registers with the relay in the VM: a passphrase made at its console.
    let agent_pki = dir.join("agent-pki");
    register_agent(&mut vm, relay, &agent_pki, &logs);
    let source = dir.join("source.img");
    write_mixed_image(&source, 32 << 20, 0xb007_0001);
    replicate(relay, &source, &dir, &agent_pki, "agent-slot-a");
    let replica = dir.join("target-data/replicas/vmdisk.img");
    replica_converges(&source, &replica, REPLICA_PRUNE_TIMEOUT)
        .unwrap_or_else(|error| panic!("replica through the VM's relay (slot a): {error}"));
    vm.power_off();

    // Boot 2: update media with a signed 0.2.0 bundle; the appliance applies it, reboots into
    // slot b, which passes its health check and becomes active.
    let key = base.join("update-1.key");
    let root = base.join("update-root.json");
    let next = dir.join("image-0.2.0");
    build_image(&next, "0.2.0", &["--update-root", root.to_str().unwrap(), "--no-ova"], &logs);
    let media = update_media(&next, "0.2.0", 2, &key, &logs);
    let mut vm = Vm::boot(&disk, &vars, Some(&media), None, relay_port, logs.join("console-2.log"));
    vm.expect("update media: applying the bundle", BOOT_TIMEOUT);
    vm.expect("written to slot b and verified", BOOT_TIMEOUT);
    vm.expect("rebooting into the new slot", BOOT_TIMEOUT);
    let data_b = vm.expect("siterelay-appliance: data:", BOOT_TIMEOUT);
    let ready = vm.expect("SITERELAY-READY", BOOT_TIMEOUT);
    assert_eq!((field(&ready, "slot"), field(&ready, "version")), ("b", "0.2.0"), "{ready}");
    vm.expect("update: updated to 0.2.0 (slot b)", BOOT_TIMEOUT);
    assert_eq!(
        config_hash(&first_data),
        config_hash(&data_b),
        "the configuration on the data partition changed across the update"
    );
    // The relay's cache journal from slot a is still there for slot b.
    let cache_files: u32 = data_b
        .rsplit(", ")
        .next()
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no cache file count in {data_b:?}"));
    assert!(cache_files >= 1, "the relay's cache did not survive the update: {data_b}");
    modify_regions(&source, 0xb007_0002, 16, 256 << 10);
    replicate(relay, &source, &dir, &agent_pki, "agent-slot-b");
    replica_converges(&source, &replica, REPLICA_PRUNE_TIMEOUT)
        .unwrap_or_else(|error| panic!("replica through the VM's relay (slot b): {error}"));
    vm.power_off();

    // Boot 3: a broken 0.3.0 goes to slot a; it cannot pass its health check, the loader
    // counts its boots and falls back to slot b, which drops the update.
    let broken = dir.join("image-0.3.0");
    build_image(
        &broken,
        "0.3.0",
        &["--update-root", root.to_str().unwrap(), "--no-ova", "--broken-binary"],
        &logs,
    );
    let media = update_media(&broken, "0.3.0", 3, &key, &logs);
    let mut vm = Vm::boot(&disk, &vars, Some(&media), None, relay_port, logs.join("console-3.log"));
    vm.expect("written to slot a and verified", BOOT_TIMEOUT);
    // Two boot attempts (the image's boot_tries), each ending in a reboot; then slot b.
    for _ in 0..2 {
        vm.expect(
            "slot a is on trial: rebooting so that the boot loader can fall back",
            BOOT_TIMEOUT,
        );
    }
    let data_back = vm.expect("siterelay-appliance: data:", BOOT_TIMEOUT * 2);
    let ready = vm.expect("SITERELAY-READY", BOOT_TIMEOUT);
    assert_eq!((field(&ready, "slot"), field(&ready, "version")), ("b", "0.2.0"), "{ready}");
    vm.expect(
        "update to 0.3.0 rolled back: slot a did not pass its health check within its boot attempts",
        BOOT_TIMEOUT,
    );
    assert_eq!(config_hash(&first_data), config_hash(&data_back));
    let console = vm.text();
    assert!(
        console.contains("was tried before; not applied again"),
        "the rolled-back bundle was not skipped"
    );
    vm.power_off();
    target.terminate(Duration::from_secs(10)).unwrap();
}
