//! What the appliance image's init runs, on the host: maintenance mode (an invalid
//! configuration is reported by `siterelay status` on the role's port, and the role starts
//! once the file is corrected) and the first boot's configuration from an OVF environment.

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::*;

/// An OVF environment as VMware writes it, with the appliance's properties.
fn ovf_env(properties: &[(&str, &str)]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment \
         xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:ve=\"http://www.vmware.com/schema/ovfenv\" oe:id=\"\" ve:vCenterId=\"vm-42\">\n  \
         <PlatformSection>\n    <Kind>VMware ESXi</Kind>\n    <Version>8.0.2</Version>\n  \
         </PlatformSection>\n  <PropertySection>\n",
    );
    for (key, value) in properties {
        xml += &format!("    <Property oe:key=\"{key}\" oe:value=\"{value}\"/>\n");
    }
    xml += "  </PropertySection>\n</Environment>\n";
    xml
}

/// `siterelay status --connect ADDR` once it answers (within 20 s): what it printed.
fn status_once_answering(addr: &str, logs: &std::path::Path, context: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let finished = run_siterelay(&["status", "--connect", addr], logs, COMMAND_TIMEOUT);
        if finished.status.success() {
            return finished.stdout;
        }
        assert!(Instant::now() < deadline, "{context}: {}", finished.describe());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A valid relay configuration listening on `port` with its cache in `cache`.
fn relay_config(port: u16, cache: &std::path::Path) -> String {
    format!(
        "[relay]\nlisten = \"127.0.0.1:{port}\"\ntarget = \"127.0.0.1:9\"\ncache_dir = \"{}\"\n\
         cache_bytes_max = \"64MiB\"\nsegment_bytes = \"16MiB\"\n",
        cache.display()
    )
}

/// Maintenance, once its configuration file changed, ends by itself, having said `said`.
fn ends_after_the_change(maintenance: Running, said: &str) {
    let ended = maintenance
        .wait(Duration::from_secs(20))
        .expect("maintenance did not notice the changed configuration");
    assert!(ended.status.success(), "{}", ended.describe());
    assert!(ended.stderr.contains(said), "{}", ended.stderr);
}

#[test]
fn first_boot_configuration_comes_from_the_ovf_environment_or_is_refused_by_name() {
    let dir = TestDir::new("appliance-ovfenv");
    let logs = dir.subdir("logs");
    let base =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../image/rootfs/etc/siterelay/appliance.toml");
    let out = dir.join("appliance.toml");
    let run = |properties: &[(&str, &str)]| {
        let env = dir.join("ovf-env.xml");
        fs::write(&env, ovf_env(properties)).unwrap();
        run_siterelay(
            &[
                "appliance",
                "ovf-config",
                "--env",
                env.to_str().unwrap(),
                "--base",
                base,
                "--out",
                out.to_str().unwrap(),
            ],
            &logs,
            COMMAND_TIMEOUT,
        )
    };
    let made = run(&[
        ("siterelay.role", "relay"),
        ("siterelay.listen", ""),
        ("siterelay.target", "10.0.0.5:7800"),
        ("siterelay.registration", "s3cret &amp; more"),
    ]);
    assert!(made.status.success(), "{}", made.describe());
    let text = fs::read_to_string(&out).unwrap();
    let config: toml::Table = text.parse().unwrap();
    assert_eq!(config["relay"]["target"].as_str(), Some("10.0.0.5:7800"), "{text}");
    assert_eq!(
        config["relay"]["listen"].as_str(),
        Some("0.0.0.0:7700"),
        "the image default stays: {text}"
    );
    assert_eq!(config["relay"]["cache_dir"].as_str(), Some("/data/cache"), "{text}");
    assert_eq!(config["appliance"]["role"].as_str(), Some("relay"), "{text}");
    let checked =
        run_siterelay(&["config", "check", out.to_str().unwrap()], &logs, COMMAND_TIMEOUT);
    assert!(checked.status.success(), "{}", checked.describe());

    fs::remove_file(&out).unwrap();
    for (properties, message) in [
        (vec![("siterelay.taget", "10.0.0.5:7800")], "unknown property \"siterelay.taget\""),
        (vec![("siterelay.role", "relay")], "siterelay.target is required for the relay role"),
        (
            vec![("siterelay.role", "target"), ("siterelay.listen", "0.0.0.0")],
            "siterelay.listen is \"0.0.0.0\", not an IP:port address",
        ),
        (vec![("siterelay.role", "Relay")], "siterelay.role is \"Relay\""),
    ] {
        let refused = run(&properties);
        assert!(!refused.status.success(), "{properties:?} accepted");
        assert!(refused.stderr.contains(message), "{properties:?}: {}", refused.stderr);
        assert!(!out.exists(), "{properties:?}: a configuration was written");
    }
}

#[test]
fn an_invalid_configuration_is_reported_in_status_and_the_role_starts_once_corrected() {
    let dir = TestDir::new("appliance-maintenance");
    let logs = dir.subdir("logs");
    let port = free_port();
    let config = dir.join("appliance.toml");
    fs::write(&config, format!("[relay]\nlisten = \"127.0.0.1:{port}\"\ntarget = \"127.0.0.1:9\"\ntarget_addr = \"x\"\n")).unwrap();
    let run_dir = dir.join("run");
    let args = |extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = ["appliance", "run", "--config"]
            .iter()
            .map(Into::into)
            .chain([config.clone().into_os_string()])
            .collect();
        args.extend(["--run-dir".into(), run_dir.clone().into_os_string()]);
        args.extend(extra.iter().map(Into::into));
        args
    };
    let maintenance_listen = format!("127.0.0.1:{port}");
    let maintenance =
        Running::spawn(&args(&["--maintenance-listen", &maintenance_listen]), &logs, "maintenance");
    let status = status_once_answering(&maintenance_listen, &logs, "maintenance never answered");
    assert!(
        status.starts_with("appliance ")
            && status.contains(" in maintenance: configuration error: "),
        "{status}"
    );
    assert!(status.contains("unknown field `target_addr`"), "{status}");
    assert!(fs::read_to_string(run_dir.join("config-error")).unwrap().contains("target_addr"));
    let json = run_siterelay(
        &["status", "--connect", &maintenance_listen, "--json"],
        &logs,
        COMMAND_TIMEOUT,
    );
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["role"], "maintenance");

    // Valid, but the role cannot run (its cache directory would be under a file): maintenance
    // again, saying why, until the file changes.
    let blocker = dir.join("not-a-directory");
    fs::write(&blocker, "x").unwrap();
    fs::write(&config, relay_config(port, &blocker.join("cache"))).unwrap();
    ends_after_the_change(maintenance, "siterelay-appliance: CONFIGURATION ERROR: ");
    let maintenance = Running::spawn(&args(&[]), &logs, "role-failing");
    let status =
        status_once_answering(&maintenance_listen, &logs, "no maintenance after the role failed");
    assert!(status.contains(" in maintenance: the relay role stopped: "), "{status}");
    assert!(status.contains("not-a-directory"), "{status}");

    // Corrected: maintenance ends by itself, and the role starts from the same file.
    let cache = dir.join("cache");
    fs::write(&config, relay_config(port, &cache)).unwrap();
    ends_after_the_change(maintenance, "siterelay-appliance: the relay role stopped: ");
    let _role = Running::spawn(&args(&[]), &logs, "role");
    let ready = run_siterelay(
        &["appliance", "ready", "--config", config.to_str().unwrap(), "--timeout", "20"],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(ready.status.success(), "{}", ready.describe());
    assert_eq!(ready.stdout.trim(), format!("relay answers on 127.0.0.1:{port}"));
    assert!(!run_dir.join("config-error").exists(), "the old error stayed");
    assert!(run_dir.join("role.pid").exists());
}
