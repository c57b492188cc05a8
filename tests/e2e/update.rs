//! The rollup matrix and the upgrade planner through the real binary (the rules themselves
//! are property-tested in the `rollup` crate).

use std::fs;

use crate::harness::*;

#[test]
fn lint_reports_exactly_the_two_anomalies_of_the_seed_table() {
    let dir = TestDir::new("update-lint");
    let logs = dir.subdir("logs");
    let finished = run_siterelay(&["update", "lint"], &logs, COMMAND_TIMEOUT);
    assert!(!finished.status.success(), "lint passed a matrix with errors");
    assert_eq!(
        finished.stdout,
        "error: UR28 Provider: malformed version \"5.1.3600 .0\" (expected dot-separated numbers)\n\
         error: OVF: version goes down from 5.1.3700.0 (UR29) to 5.1.3650.0 (UR30)\n\
         2 errors, 0 warnings\n"
    );
    assert_eq!(
        finished.stderr.trim(),
        "siterelay: built-in rollups.toml: 2 error(s) in the rollup matrix"
    );

    // The same file with the two cells corrected lints clean and exits 0.
    let text =
        include_str!("../../config/rollups.toml").replace("5.1.3600 .0", "5.1.3600.0").replace(
            "{ component = \"OVF\", version = \"5.1.3650.0\" }",
            "{ component = \"OVF\", version = \"5.1.3700.0\" }",
        );
    let fixed = dir.join("fixed.toml");
    fs::write(&fixed, text).unwrap();
    let finished =
        run_siterelay(&["update", "lint", fixed.to_str().unwrap()], &logs, COMMAND_TIMEOUT);
    assert!(finished.status.success(), "{}", finished.describe());
    assert!(finished.stdout.ends_with("0 errors, 0 warnings\n"), "{}", finished.describe());
}

#[test]
fn plan_goes_stepwise_from_below_n_minus_4_and_refuses_by_name() {
    let dir = TestDir::new("update-plan");
    let logs = dir.subdir("logs");
    let plan = |args: &[&str]| {
        let mut all = vec!["update", "plan"];
        all.extend_from_slice(args);
        run_siterelay(&all, &logs, COMMAND_TIMEOUT)
    };
    let direct = plan(&["--component", "Unified Setup", "--from", "9.18.4946.1"]);
    assert!(direct.status.success(), "{}", direct.describe());
    assert!(
        direct
            .stdout
            .starts_with("Unified Setup: 9.18.4946.1 -> 9.21.5091.1 directly (9.18.4946.1 is N-4"),
        "{}",
        direct.stdout
    );
    let stepwise = plan(&["--component", "appliance-image", "--from", "0.3.0"]);
    assert!(stepwise.status.success(), "{}", stepwise.describe());
    assert!(
        stepwise.stdout.starts_with("appliance-image: 0.3.0 -> 0.9.0 in 2 hops"),
        "{}",
        stepwise.stdout
    );
    assert!(
        stepwise.stdout.contains("0.3.0 -> 0.5.0") && stepwise.stdout.contains("0.5.0 -> 0.9.0")
    );
    let malformed = plan(&["--component", "Provider", "--from", "5.1.3600 .0"]);
    assert!(!malformed.status.success());
    assert_eq!(
        malformed.stderr.trim(),
        "siterelay: Provider: malformed version \"5.1.3600 .0\" (expected dot-separated numbers)"
    );
    let unknown = plan(&["--component", "Flux capacitor", "--from", "1.0"]);
    assert!(!unknown.status.success());
    assert!(unknown.stderr.contains("Flux capacitor"), "{}", unknown.stderr);
    let help = plan(&["--help"]);
    assert!(help.stdout.contains("N-4, N-3, N-2 and N-1 go to N in"), "{}", help.stdout);
}

/// Keys, a threshold-2 root, and an installation of 0.1.0 in `DIR/state`.
struct Release {
    dir: TestDir,
    logs: std::path::PathBuf,
}

impl Release {
    fn new(label: &str) -> Release {
        let dir = TestDir::new(label);
        let logs = dir.subdir("logs");
        let release = Release { dir, logs };
        release.ok(&["bundle", "keygen", "--out", &release.path("k1")]);
        release.ok(&["bundle", "keygen", "--out", &release.path("k2")]);
        release.ok(&[
            "bundle",
            "root",
            "--keys",
            &release.keys(),
            "--threshold",
            "2",
            "--version",
            "1",
            "--out",
            &release.path("root/1.root.json"),
        ]);
        release.ok(&[
            "update",
            "init",
            "--state-dir",
            &release.path("state"),
            "--root",
            &release.path("root/1.root.json"),
            "--version",
            "0.1.0",
            "--component",
            "appliance-image=0.1.0",
        ]);
        release
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn keys(&self) -> String {
        format!("{},{}", self.path("k1"), self.path("k2"))
    }

    fn run(&self, args: &[&str]) -> Finished {
        run_siterelay(args, &self.logs, COMMAND_TIMEOUT)
    }

    fn ok(&self, args: &[&str]) -> String {
        let finished = self.run(args);
        assert!(finished.status.success(), "siterelay {args:?}\n{}", finished.describe());
        finished.stdout
    }

    fn refused(&self, args: &[&str], message: &str) {
        let finished = self.run(args);
        assert!(!finished.status.success(), "siterelay {args:?} passed\n{}", finished.describe());
        assert_eq!(finished.stderr.trim(), format!("siterelay: {message}"), "{args:?}");
    }

    /// A bundle of `version` whose `siterelay` payload runs `script` (a shell body).
    fn bundle(
        &self,
        name: &str,
        version: &str,
        bundle_version: u64,
        script: &str,
        extra: &[&str],
    ) -> String {
        let payloads = self.dir.subdir(&format!("payloads-{name}"));
        let binary = payloads.join("siterelay");
        fs::write(&binary, format!("#!/bin/sh\n{script}\n")).unwrap();
        let mut args = vec![
            "bundle".to_string(),
            "create".into(),
            "--out".into(),
            self.path(name),
            "--rollup".into(),
            format!("SR-{version}"),
            "--bundle-version".into(),
            bundle_version.to_string(),
            "--component".into(),
            format!("appliance-image={version}"),
            "--payload".into(),
            binary.display().to_string(),
            "--sign".into(),
            self.keys(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs);
        self.path(name)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(
            &fs::read_to_string(self.dir.join("state/slots/boot-state.json")).unwrap(),
        )
        .unwrap()
    }
}

/// A new version failing its health check: bundle name, version, bundle version, its
/// binary's script, extra `update boot` arguments, and the reason the rollback gives.
type FailingCase =
    (&'static str, &'static str, u64, &'static str, &'static [&'static str], &'static str);

#[test]
fn signed_bundle_installs_a_b_and_a_failed_health_check_rolls_back_by_itself() {
    let release = Release::new("update-ab");
    let state = release.path("state");
    let good = release.bundle("good", "0.2.0", 2, "echo siterelay 0.2.0", &[]);
    assert!(release
        .ok(&["update", "apply", &good, "--state-dir", &state])
        .contains("written to slot b"));
    assert_eq!(
        release.ok(&["update", "boot", "--state-dir", &state]),
        "updated to 0.2.0 (slot b)\n"
    );
    assert_eq!(
        (release.state()["active"].as_str(), release.state()["active_version"].as_str()),
        (Some("b"), Some("0.2.0"))
    );

    // New versions that start but fail a part of their health check.
    let failing_cases: [FailingCase; 3] = [
        (
            "failing",
            "0.3.0",
            3,
            "echo broken >&2; exit 3",
            &[],
            "its health check failed: it exited with exit status: 3",
        ),
        (
            "isolated",
            "0.6.0",
            6,
            "case \"$1\" in --version|hwtest) echo siterelay 0.6.0 ;; *) exit 2 ;; esac",
            &["--peer", "127.0.0.1:9"],
            "its health check failed: it cannot reach its peer 127.0.0.1:9: it exited with exit \
             status: 2",
        ),
        (
            "unqualified",
            "0.6.0",
            7,
            "case \"$1\" in --version) echo siterelay 0.6.0 ;; *) exit 1 ;; esac",
            &[],
            "its health check failed: its hardware checks failed: it exited with exit status: 1",
        ),
    ];
    for (name, version, bundle_version, script, boot_args, reason) in failing_cases {
        let bundle = release.bundle(name, version, bundle_version, script, &[]);
        release.ok(&["update", "apply", &bundle, "--state-dir", &state]);
        let mut args = vec!["update", "boot", "--state-dir", &state];
        args.extend_from_slice(boot_args);
        assert_eq!(
            release.ok(&args),
            format!("update to {version} rolled back: {reason}\nrunning slot b (0.2.0)\n")
        );
    }
    // One that never answers.
    let hanging = release.bundle("hanging", "0.4.0", 4, "sleep 30", &[]);
    release.ok(&["update", "apply", &hanging, "--state-dir", &state]);
    let boot = release.ok(&["update", "boot", "--state-dir", &state, "--health-timeout", "1"]);
    assert!(
        boot.starts_with(
            "update to 0.4.0 rolled back: its health check failed: it did not answer within 1s"
        ),
        "{boot}"
    );
    // One whose start kills the supervisor itself (power cut mid-trial): the next start
    // finds the trial used up and goes back.
    let killer = release.bundle("killer", "0.5.0", 5, "kill -9 $PPID; sleep 5", &[]);
    release.ok(&["update", "apply", &killer, "--state-dir", &state]);
    let crashed = release.run(&["update", "boot", "--state-dir", &state]);
    assert!(!crashed.status.success(), "the supervisor was not killed\n{}", crashed.describe());
    let boot = release.ok(&["update", "boot", "--state-dir", &state]);
    assert_eq!(
        boot,
        "update to 0.5.0 rolled back: it started but never passed its health check\n\
         running slot b (0.2.0)\n"
    );
    assert_eq!(release.state()["active_version"], "0.2.0");
    // A rolled-back bundle can be applied again (and fails again, by itself).
    let failing = release.path("failing");
    release.ok(&["update", "apply", &failing, "--state-dir", &state]);
    let status = release.ok(&["update", "status", "--state-dir", &state]);
    assert!(status.contains("waiting for its first start: 0.3.0 in slot a"), "{status}");
}

#[test]
fn bundles_are_refused_with_the_reason() {
    let release = Release::new("update-refusals");
    let state = release.path("state");
    let root = release.path("root/1.root.json");
    let good = release.bundle("good", "0.2.0", 2, "echo siterelay 0.2.0", &[]);
    // Tampered payload.
    let payload = release.dir.join("good/payloads/siterelay");
    let mut bytes = fs::read(&payload).unwrap();
    bytes[12] ^= 1;
    fs::write(&payload, &bytes).unwrap();
    let finished = release.run(&[
        "bundle",
        "verify",
        &good,
        "--root",
        &root,
        "--installed",
        "appliance-image=0.1.0",
    ]);
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("bundle: payload \"siterelay\" has sha256 "),
        "{}",
        finished.stderr
    );
    // Signed by one key of a threshold of two.
    let one_key = release.path("k1");
    let single = release.bundle("single", "0.2.0", 2, "echo siterelay 0.2.0", &[]);
    fs::remove_dir_all(release.dir.join("single")).unwrap();
    let binary = release.dir.join("payloads-single/siterelay").display().to_string();
    release.ok(&[
        "bundle",
        "create",
        "--out",
        &single,
        "--rollup",
        "SR-0.2.0",
        "--bundle-version",
        "2",
        "--component",
        "appliance-image=0.2.0",
        "--payload",
        &binary,
        "--sign",
        &one_key,
    ]);
    let finished = release.run(&["update", "apply", &single, "--state-dir", &state]);
    assert!(
        finished.stderr.contains("below threshold: 2 of 2 required, 1 valid"),
        "{}",
        finished.stderr
    );
    // A hop the planner does not allow names the bundle that is missing.
    let far = release.bundle("far", "0.9.0", 3, "echo siterelay 0.9.0", &[]);
    release.refused(
        &["update", "apply", &far, "--state-dir", &state],
        "bundle: hop of \"appliance-image\" from \"0.1.0\" to \"0.9.0\" refused: 0.1.0 is too old \
         for 0.9.0: the supported way is 0.1.0 -> 0.5.0 -> 0.9.0; apply the bundle(s) for 0.5.0 \
         first (this one goes from 0.5.0 on)",
    );
    // Expired.
    let expired =
        release.bundle("expired", "0.2.0", 4, "echo siterelay 0.2.0", &["--expires-days", "0"]);
    let finished = release.run(&["update", "apply", &expired, "--state-dir", &state]);
    assert!(finished.stderr.contains("bundle: manifest expired at"), "{}", finished.stderr);
    // Nothing above touched the installation.
    assert_eq!(release.state()["trial"], serde_json::Value::Null);
    assert_eq!(release.state()["active_version"], "0.1.0");
}

#[test]
fn kill9_during_apply_leaves_the_old_slot_and_the_bundle_reappliable() {
    let release = Release::new("update-kill");
    let state = release.path("state");
    // A large second payload makes apply take long enough to be killed inside it.
    let big = release.dir.join("payloads-big");
    fs::create_dir_all(&big).unwrap();
    let mut data = vec![0u8; 96 << 20];
    Rng::new(0x0bad_cafe).fill(&mut data);
    fs::write(big.join("image.raw"), &data).unwrap();
    let extra = ["--payload".to_string(), big.join("image.raw").display().to_string()];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let bundle = release.bundle("big", "0.2.0", 2, "echo siterelay 0.2.0", &extra);
    // How long a whole apply takes here, on a scratch installation: kills land within it.
    let probe = release.path("probe");
    release.ok(&[
        "update",
        "init",
        "--state-dir",
        &probe,
        "--root",
        &release.path("root/1.root.json"),
        "--version",
        "0.1.0",
        "--component",
        "appliance-image=0.1.0",
    ]);
    let started = std::time::Instant::now();
    release.ok(&["update", "apply", &bundle, "--state-dir", &probe]);
    let apply_ms = (started.elapsed().as_millis() as u64).max(20);
    let mut rng = Rng::new(0x5eed_0006);
    let mut killed_inside = 0;
    for _ in 0..8 {
        let args: Vec<std::ffi::OsString> =
            ["update", "apply", &bundle, "--state-dir", &state].iter().map(Into::into).collect();
        let mut running = Running::spawn(&args, &release.logs, "apply");
        std::thread::sleep(std::time::Duration::from_millis(rng.below(apply_ms)));
        let inside = running.is_running();
        drop(running); // SIGKILL
        if !inside {
            continue;
        }
        killed_inside += 1;
        // The old slot is what starts, and nothing is half-scheduled.
        let boot_state = release.state();
        assert_eq!(boot_state["active"], "a");
        if boot_state["trial"].is_null() {
            assert_eq!(
                release.ok(&["update", "boot", "--state-dir", &state]),
                "running slot a (0.1.0)\n"
            );
        } else {
            // Killed after the commit point: the trial is complete and verified.
            break;
        }
    }
    eprintln!("{killed_inside} kills landed inside apply (which takes {apply_ms} ms)");
    assert!(killed_inside > 0, "no kill landed inside apply");
    if release.state()["trial"].is_null() {
        release.ok(&["update", "apply", &bundle, "--state-dir", &state]);
    }
    assert_eq!(
        release.ok(&["update", "boot", "--state-dir", &state]),
        "updated to 0.2.0 (slot b)\n"
    );
    assert_eq!(fs::read(release.dir.join("state/slots/slot-b/image.raw")).unwrap(), data);
}

fn node_config(release: &Release, site: &str, node: &str) -> String {
    let path = release.dir.join(&format!("{node}.toml"));
    let state = release.path(&format!("state-{node}"));
    release.ok(&[
        "update",
        "init",
        "--state-dir",
        &state,
        "--root",
        &release.path("root/1.root.json"),
        "--version",
        "0.1.0",
        "--component",
        "appliance-image=0.1.0",
    ]);
    fs::write(
        &path,
        format!(
            "[appliance]\nsite = \"{site}\"\nnode = \"{node}\"\nupdate_state_dir = \"{state}\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Applies `bundle` on `node` (with `extra` order flags), starts it once, restarts its process.
fn update_node(release: &Release, server: &mut Server, node: &str, bundle: &str, extra: &[&str]) {
    let state = release.path(&format!("state-{node}"));
    let mut args = vec!["update", "apply", bundle, "--state-dir", &state];
    args.extend_from_slice(extra);
    release.ok(&args);
    let boot = release.ok(&["update", "boot", "--state-dir", &state]);
    assert!(boot.starts_with("updated to"), "{boot}");
    server.kill();
    server.restart_after(std::time::Duration::ZERO);
}

fn wait_status(
    addr: std::net::SocketAddr,
    logs: &std::path::Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = status_json(addr, logs);
        if check(&status) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn recovery_site_first_and_cluster_nodes_hop_together() {
    let release = Release::new("update-order");
    let logs = release.logs.clone();
    let target_config = node_config(&release, "dr", "t1");
    let mut target = Server::target_with(
        &release.dir.join("t1-data"),
        &release.dir.subdir("t1"),
        &["--config", &target_config],
    );
    target.start();
    let mut relays = Vec::new();
    for node in ["r1", "r2"] {
        let config = node_config(&release, "primary", node);
        let mut relay = Server::relay_with(
            target.addr(),
            &release.dir.join(&format!("{node}-cache")),
            &release.dir.subdir(node),
            &["--config", &config],
        );
        relay.start();
        relays.push(relay);
    }
    let (r1_addr, r2_addr) = (relays[0].addr().to_string(), relays[1].addr().to_string());
    for relay in &relays {
        wait_status(relay.addr(), &logs, "relay sees its target", |s| {
            s["target"]["version"] == "0.1.0"
        });
    }
    let v2 = release.bundle("v2", "0.2.0", 2, "echo siterelay 0.2.0", &[]);
    let v3 = release.bundle("v3", "0.3.0", 3, "echo siterelay 0.3.0", &[]);
    let r1_state = release.path("state-r1");

    // The primary first: refused.
    release.refused(
        &["update", "apply", &v2, "--state-dir", &r1_state, "--relay", &r1_addr],
        "the recovery site (target t1) runs 0.1.0; update it to 0.2.0 first (the recovery site \
         is updated before the primary)",
    );
    // The recovery site, then the primary.
    update_node(&release, &mut target, "t1", &v2, &[]);
    wait_status(relays[0].addr(), &logs, "r1 sees t1 at 0.2.0", |s| {
        s["target"]["version"] == "0.2.0"
    });
    update_node(&release, &mut relays[0], "r1", &v2, &["--relay", &r1_addr]);
    update_node(&release, &mut target, "t1", &v3, &[]);
    wait_status(target.addr(), &logs, "t1 sees both relays", |s| {
        s["relays"].as_array().is_some_and(|relays| relays.len() == 2)
    });
    wait_status(relays[0].addr(), &logs, "r1 sees t1 at 0.3.0", |s| {
        s["target"]["version"] == "0.3.0"
    });
    // r1 may not take its next hop while r2, of the same site, lags behind.
    release.refused(
        &["update", "apply", &v3, "--state-dir", &r1_state, "--relay", &r1_addr],
        "node r2 of site primary runs 0.1.0, below 0.2.0: every node takes the hop to 0.2.0 \
         before any node takes the next",
    );
    update_node(&release, &mut relays[1], "r2", &v2, &["--relay", &r2_addr]);
    wait_status(target.addr(), &logs, "t1 sees r2 at 0.2.0", |s| {
        s["relays"].as_array().is_some_and(|relays| relays.iter().all(|r| r["version"] == "0.2.0"))
    });
    update_node(&release, &mut relays[0], "r1", &v3, &["--relay", &r1_addr]);
    wait_status(relays[0].addr(), &logs, "r1 announces 0.3.0", |s| s["version"] == "0.3.0");
    let nodes = release.ok(&["update", "status", "--state-dir", &r1_state, "--relay", &r1_addr]);
    for row in [
        "relay   r1               primary      0.3.0      out of support (N-6)     0.5.0",
        "target  t1               dr           0.3.0      out of support (N-6)     0.5.0",
        "relay   r2               primary      0.2.0      out of support (N-7)     0.5.0",
    ] {
        assert!(nodes.contains(row), "missing {row:?} in\n{nodes}");
    }
    // An agent never gets ahead of its relay.
    node_config(&release, "primary", "a1");
    release.refused(
        &["update", "apply", &v3, "--state-dir", &release.path("state-a1"), "--agent-of", &r2_addr],
        &format!(
            "the relay at {r2_addr} runs 0.2.0; an agent is never newer than its relay (update \
             the relay first)"
        ),
    );
}
