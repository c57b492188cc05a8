//! Mutual TLS between the real processes (issue 9): registration by passphrase through the
//! CLI, replication over TLS, and every refusal the issue names, checked in the refusing
//! node's log and in what the refused client prints. The third-party client is `openssl`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{
    require_tools, run_siterelay, run_tool, write_mixed_image, Finished, Server, TestDir,
};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

/// A target and a relay with their own CAs, the relay registered with the target.
struct Site {
    dir: TestDir,
    logs: PathBuf,
    target: Server,
    relay: Server,
    relay_pki: PathBuf,
    target_addr_text: String,
    relay_addr_text: String,
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn ok(finished: Finished, context: &str) -> Finished {
    assert!(finished.status.success(), "{context}:\n{}", finished.describe());
    finished
}

/// A new passphrase from the CA in `pki`.
fn passphrase(pki: &Path, ttl: u64, logs: &Path) -> String {
    let made = ok(
        run_siterelay(
            &[
                "register",
                "--new-passphrase",
                "--ttl",
                &ttl.to_string(),
                "--pki-dir",
                path_str(pki),
            ],
            logs,
            COMMAND_TIMEOUT,
        ),
        "register --new-passphrase",
    );
    let passphrase = made.stdout.trim().to_string();
    assert_eq!(passphrase.len(), 39, "{}", made.describe());
    passphrase
}

fn register(
    peer: SocketAddr,
    pass: &str,
    role: &str,
    name: &str,
    pki: &Path,
    logs: &Path,
) -> Finished {
    run_siterelay(
        &[
            "register",
            "--connect",
            &peer.to_string(),
            "--passphrase",
            pass,
            "--role",
            role,
            "--name",
            name,
            "--pki-dir",
            path_str(pki),
        ],
        logs,
        COMMAND_TIMEOUT,
    )
}

impl Site {
    fn start(label: &str) -> Site {
        let dir = TestDir::new(label);
        let logs = dir.subdir("logs");
        let target_pki = dir.join("target-pki");
        let config = logs.join("target.toml");
        std::fs::write(&config, crate::harness::TARGET_NEWEST_POINT_ONLY).unwrap();
        let mut target = Server::target_with(
            &dir.join("target-data"),
            &logs,
            &["--config", path_str(&config), "--pki-dir", path_str(&target_pki)],
        );
        target.start();
        let relay_pki = dir.join("relay-pki");
        let pass = passphrase(&target_pki, 600, &logs);
        ok(register(target.addr(), &pass, "relay", "relay1", &relay_pki, &logs), "register relay");
        let mut relay = Server::relay_with(
            target.addr(),
            &dir.join("relay-cache"),
            &logs,
            &["--pki-dir", path_str(&relay_pki)],
        );
        relay.start();
        let (target_addr_text, relay_addr_text) =
            (target.addr().to_string(), relay.addr().to_string());
        Site { dir, logs, target, relay, relay_pki, target_addr_text, relay_addr_text }
    }

    /// Registers an agent named `name` with the relay; returns its PKI directory.
    fn agent_pki(&self, name: &str) -> PathBuf {
        let pki = self.dir.join(&format!("{name}-pki"));
        let pass = passphrase(&self.relay_pki, 600, &self.logs);
        ok(register(self.relay.addr(), &pass, "agent", name, &pki, &self.logs), "register agent");
        pki
    }

    /// One `agent --once` of `disk` from `source` with the credential in `pki`.
    fn sync(
        &self,
        relay: SocketAddr,
        disk: &str,
        source: &Path,
        pki: &Path,
        state: &str,
    ) -> Finished {
        let extra = ["--reconnect-timeout", "5", "--pki-dir", path_str(pki)];
        agent_once(relay, disk, source, &self.dir.join(state), &self.logs, &extra)
    }

    fn replica(&self, disk: &str) -> PathBuf {
        self.dir.join("target-data").join("replicas").join(format!("{disk}.img"))
    }

    /// Waits for `needle` in the relay's log after `offset`.
    fn relay_logged(&self, offset: u64, needle: &str) -> String {
        self.relay
            .wait_log_since(offset, LOG_TIMEOUT, |text| text.contains(needle))
            .unwrap_or_else(|text| panic!("relay log lacks {needle:?}:\n{text}"))
    }
}

/// A disk image of `len` bytes repeating `pattern`.
fn write_pattern(path: &Path, pattern: &[u8], len: usize) {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        bytes.extend_from_slice(pattern);
    }
    bytes.truncate(len);
    std::fs::write(path, &bytes).unwrap();
}

/// One `agent --once` of `disk` from `source` through `relay`, `extra` flags appended.
fn agent_once(
    relay: SocketAddr,
    disk: &str,
    source: &Path,
    state: &Path,
    logs: &Path,
    extra: &[&str],
) -> Finished {
    let mut spec = OsString::from(format!("{disk}="));
    spec.push(source);
    let mut args: Vec<OsString> = vec![
        "agent".into(),
        "--relay".into(),
        relay.to_string().into(),
        "--disk".into(),
        spec,
        "--state-dir".into(),
        state.into(),
        "--once".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    crate::harness::Running::spawn(&args, logs, "agent")
        .wait(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("agent {error}"))
}

/// The command failed and said `needle`.
fn assert_refused(finished: &Finished, needle: &str) {
    assert!(!finished.status.success(), "not refused:\n{}", finished.describe());
    assert!(finished.stderr.contains(needle), "no {needle:?} in:\n{}", finished.describe());
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn registered_agents_replicate_over_tls_and_revoked_ones_are_refused() {
    let site = Site::start("tls-replicate");
    let source = site.dir.join("web01.img");
    write_mixed_image(&source, 24 * MIB, 91);
    let agent = site.agent_pki("web01");
    ok(site.sync(site.relay.addr(), "web01", &source, &agent, "state"), "sync over TLS");
    assert!(same_bytes(&source, &site.replica("web01")), "replica differs after the TLS sync");
    let log = site.relay.log();
    assert!(log.contains("TLS 1.3, mutual"), "relay did not announce TLS:\n{log}");

    // Management commands need the admin credential; the relay's own works and no warning.
    let status = ok(
        run_siterelay(
            &[
                "status",
                "--connect",
                &site.relay.addr().to_string(),
                "--pki-dir",
                path_str(&site.relay_pki),
            ],
            &site.logs,
            COMMAND_TIMEOUT,
        ),
        "status with the admin credential",
    );
    assert!(status.stdout.contains("web01"), "{}", status.describe());
    assert!(!status.stdout.contains("WARNING"), "{}", status.describe());
    let denied = run_siterelay(
        &["status", "--connect", &site.relay.addr().to_string(), "--pki-dir", path_str(&agent)],
        &site.logs,
        COMMAND_TIMEOUT,
    );
    assert_refused(&denied, "holds no admin credential");

    let listed = ok(
        run_siterelay(
            &["certs", "list", "--pki-dir", path_str(&site.relay_pki)],
            &site.logs,
            COMMAND_TIMEOUT,
        ),
        "certs list",
    );
    assert!(listed.stdout.contains("agent    web01"), "{}", listed.describe());
    ok(
        run_siterelay(
            &["certs", "revoke", "web01", "--pki-dir", path_str(&site.relay_pki)],
            &site.logs,
            COMMAND_TIMEOUT,
        ),
        "certs revoke",
    );
    let offset = site.relay.log_len();
    let refused = site.sync(site.relay.addr(), "web01", &source, &agent, "state");
    assert_refused(&refused, "was revoked");
    site.relay_logged(offset, "refused: the certificate of agent \"web01\"");
}

#[test]
fn an_agent_cannot_write_another_agents_disk() {
    let site = Site::start("tls-owner");
    let source = site.dir.join("web01.img");
    write_mixed_image(&source, 16 * MIB, 5);
    let owner = site.agent_pki("web01");
    ok(site.sync(site.relay.addr(), "web01", &source, &owner, "state1"), "owner sync");
    let replica = site.replica("web01");
    let before = std::fs::read(&replica).unwrap();

    let intruder = site.agent_pki("web02");
    let other = site.dir.join("other.img");
    write_mixed_image(&other, 16 * MIB, 6);
    let offset = site.relay.log_len();
    let refused = site.sync(site.relay.addr(), "web01", &other, &intruder, "state2");
    assert_refused(&refused, "disk \"web01\" belongs to agent \"web01\"");
    let log = site.relay_logged(offset, "belongs to agent");
    assert!(
        log.contains("(agent \"web02\" (certificate "),
        "the refusal does not name the agent:\n{log}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(std::fs::read(&replica).unwrap() == before, "the replica changed");
}

#[test]
fn bad_credentials_and_passphrases_are_refused_and_logged() {
    if !require_tools("bad_credentials_and_passphrases_are_refused_and_logged", &["openssl"]) {
        return;
    }
    let site = Site::start("tls-refusals");
    let relay = site.relay.addr().to_string();

    // An expired passphrase.
    let pass = passphrase(&site.relay_pki, 1, &site.logs);
    std::thread::sleep(Duration::from_millis(2100));
    let offset = site.relay.log_len();
    let late =
        register(site.relay.addr(), &pass, "agent", "late", &site.dir.join("late-pki"), &site.logs);
    assert_refused(&late, "the passphrase has expired");
    site.relay_logged(offset, "refused: registration of \"late\": the passphrase has expired");

    // No certificate: openssl as the client, sending a Hello and a status request.
    let mut frames = Vec::new();
    wire::Frame::Hello(wire::Hello::ours(wire::Role::Control, "openssl", Vec::new()))
        .encode(&mut frames)
        .unwrap();
    wire::Frame::StatusRequest.encode(&mut frames).unwrap();
    let input = site.dir.join("frames.bin");
    std::fs::write(&input, &frames).unwrap();
    let offset = site.relay.log_len();
    let script = format!(
        "timeout 20 openssl s_client -connect {relay} -tls1_3 -quiet < {} > {} 2>&1; true",
        path_str(&input),
        path_str(&site.dir.join("anon.out"))
    );
    run_tool("sh", &["-c".into(), script.into()], &site.logs, COMMAND_TIMEOUT);
    site.relay_logged(offset, "refused: no client certificate");

    // A self-signed certificate made by openssl.
    let key = site.dir.join("self.key");
    let cert = site.dir.join("self.crt");
    let made = run_tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
            "-days",
            "1",
            "-subj",
            "/CN=intruder",
            "-addext",
            "extendedKeyUsage=clientAuth",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]
        .map(OsString::from),
        &site.logs,
        COMMAND_TIMEOUT,
    );
    assert!(made.status.success(), "{}", made.describe());
    let offset = site.relay.log_len();
    let script = format!(
        "timeout 20 openssl s_client -connect {relay} -tls1_3 -quiet -cert {} -key {} < {} > /dev/null 2>&1; true",
        path_str(&cert),
        path_str(&key),
        path_str(&input)
    );
    run_tool("sh", &["-c".into(), script.into()], &site.logs, COMMAND_TIMEOUT);
    site.relay_logged(offset, "refused: TLS: invalid peer certificate: UnknownIssuer");

    // Another site's certificate: an agent registered with a second relay (its own CA). Our
    // agent refuses the relay first (it does not know its CA) ...
    let other = Site::start("tls-other-site");
    let foreign = other.agent_pki("web09");
    let source = site.dir.join("web09.img");
    write_mixed_image(&source, 8 * MIB, 9);
    let offset = site.relay.log_len();
    let refused = site.sync(site.relay.addr(), "web09", &source, &foreign, "state9");
    assert_refused(&refused, "invalid peer certificate: UnknownIssuer");
    site.relay_logged(offset, "refused: TLS: received fatal alert: UnknownCA");
    assert!(!site.replica("web09").exists());
    // ... and a client that presents that certificate anyway is refused by the relay.
    let offset = site.relay.log_len();
    let upstream = foreign.join("upstream");
    let script = format!(
        "timeout 20 openssl s_client -connect {relay} -tls1_3 -quiet -cert {} -key {} < {} > /dev/null 2>&1; true",
        path_str(&upstream.join("node.crt")),
        path_str(&upstream.join("node.key")),
        path_str(&input)
    );
    run_tool("sh", &["-c".into(), script.into()], &site.logs, COMMAND_TIMEOUT);
    site.relay_logged(offset, "refused: TLS: invalid peer certificate: UnknownIssuer");

    // A node that is not registered has no credential to offer.
    let bare = run_siterelay(
        &[
            "agent",
            "--relay",
            &relay,
            "--disk",
            &format!("web09={}", path_str(&source)),
            "--state-dir",
            path_str(&site.dir.join("bare-state")),
            "--once",
            "--pki-dir",
            path_str(&site.dir.join("empty-pki")),
        ],
        &site.logs,
        COMMAND_TIMEOUT,
    );
    assert_refused(&bare, "holds no certificate for this node: register it first");
    drop(other);
    let _ = &site.target;
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return any_file_contains(&path, needle);
        }
        std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

fn cache_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn an_encrypted_cache_holds_no_plaintext_and_opens_only_with_its_key() {
    let dir = TestDir::new("at-rest");
    let logs = dir.subdir("logs");
    // The target stays down at first: everything the agent sends waits in the relay's cache.
    let mut target = Server::target(&dir.join("target-data"), &logs);
    let key_file = dir.join("at-rest.key");
    let right_key = "3f".repeat(32);
    std::fs::write(&key_file, format!("{right_key}\n")).unwrap();
    let config = logs.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\ncompression_level = 0\n[security]\nencrypt_at_rest = true\nat_rest_key_file = \"{}\"\n",
            path_str(&key_file)
        ),
    )
    .unwrap();
    let cache = dir.join("relay-cache");
    let mut relay =
        Server::relay_with(target.addr(), &cache, &logs, &["--config", path_str(&config)]);
    relay.start();

    // A source full of a known text; compression is off, so only encryption can hide it.
    const PATTERN: &[u8] = b"SITERELAY-AT-REST-PATTERN-0123456789\n";
    let source = dir.join("disk.img");
    write_pattern(&source, PATTERN, 8 << 20);
    let state = dir.join("agent-state");
    let extra = ["--reconnect-timeout", "3"];
    let run = agent_once(relay.addr(), "disk0", &source, &state, &logs, &extra);
    assert!(
        !run.status.success(),
        "the target is down, the sync cannot finish:\n{}",
        run.describe()
    );
    assert!(cache_bytes(&cache) >= 8 << 20, "the writes are not in the cache");
    assert!(!any_file_contains(&cache, &PATTERN[..24]), "plaintext of the source in the cache");

    // A wrong key is refused at start, naming both keys; nothing is lost.
    std::fs::write(&key_file, format!("{}\n", "a5".repeat(32))).unwrap();
    let refused = relay.try_restart_after(Duration::ZERO).unwrap_err();
    assert!(refused.contains("it holds records encrypted with key"), "{refused}");
    assert!(refused.contains("and this relay was started with key"), "{refused}");

    // The right key: the cache is delivered once the target is up, and the replica is whole.
    std::fs::write(&key_file, format!("{right_key}\n")).unwrap();
    relay.try_restart_after(Duration::ZERO).unwrap();
    target.start();
    let replica = dir.join("target-data").join("replicas").join("disk0.img");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(replica.exists() && same_bytes(&source, &replica)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cached writes did not reach the replica"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_planned_failover_over_tls_uses_each_sites_admin_credential() {
    let site = Site::start("tls-planned");
    let source = site.dir.join("web01.img");
    write_mixed_image(&source, 16 * MIB, 12);
    let agent = site.agent_pki("web01");
    ok(site.sync(site.relay.addr(), "web01", &source, &agent, "state"), "sync over TLS");
    let target_pki = site.dir.join("target-pki");
    let socket = site.dir.join("failover.sock");
    let planned = |extra: &[&str]| {
        let mut args = vec![
            "failover",
            "planned",
            "--connect",
            &site.target_addr_text,
            "--relay",
            &site.relay_addr_text,
            "--disk",
            "web01",
            "--nbd-listen",
            path_str(&socket),
            "--json",
            "--pki-dir",
            path_str(&target_pki),
        ];
        args.extend_from_slice(extra);
        run_siterelay(&args, &site.logs, COMMAND_TIMEOUT)
    };
    // The target's admin credential does not open the relay (another CA) ...
    let refused = planned(&[]);
    assert_refused(&refused, "invalid peer certificate: UnknownIssuer");
    // ... the relay's does.
    let done = ok(planned(&["--relay-pki-dir", path_str(&site.relay_pki)]), "planned failover");
    let record: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(record["kind"], "planned", "{record}");
    assert!(same_bytes(&source, &site.replica("web01")), "the failed-over replica differs");
}

/// `failover materialize` of the newest point of `disk` into `out`.
fn materialize(target: SocketAddr, disk: &str, out: &Path, logs: &Path) -> Finished {
    run_siterelay(
        &[
            "failover",
            "materialize",
            "--connect",
            &target.to_string(),
            "--disk",
            disk,
            "--point",
            "latest",
            "--output",
            path_str(out),
            "--wait",
            "--json",
        ],
        logs,
        COMMAND_TIMEOUT,
    )
}

#[test]
fn an_encrypted_target_journal_holds_no_plaintext_and_its_points_still_read() {
    let dir = TestDir::new("at-rest-target");
    let logs = dir.subdir("logs");
    let key_file = dir.join("at-rest.key");
    let right_key = "7c".repeat(32);
    std::fs::write(&key_file, format!("{right_key}\n")).unwrap();
    // The default retention keeps every point of the last 2 h: the writes stay in the journal.
    let config = logs.join("target.toml");
    std::fs::write(
        &config,
        format!(
            "[security]\nencrypt_at_rest = true\nat_rest_key_file = \"{}\"\n",
            path_str(&key_file)
        ),
    )
    .unwrap();
    let data = dir.join("target-data");
    let mut target = Server::target_with(&data, &logs, &["--config", path_str(&config)]);
    target.start();
    let relay_config = logs.join("relay.toml");
    std::fs::write(&relay_config, "[relay]\ncompression_level = 0\n").unwrap();
    let mut relay = Server::relay_with(
        target.addr(),
        &dir.join("relay-cache"),
        &logs,
        &["--config", path_str(&relay_config)],
    );
    relay.start();

    const PATTERN: &[u8] = b"TARGET-JOURNAL-AT-REST-PATTERN-0123\n";
    let source = dir.join("disk.img");
    write_pattern(&source, PATTERN, 8 << 20);
    let run = agent_once(relay.addr(), "disk0", &source, &dir.join("agent-state"), &logs, &[]);
    assert!(run.status.success(), "{}", run.describe());
    let journal = data.join("disks").join("disk0").join("journal");
    assert!(cache_bytes(&journal) >= 8 << 20, "the writes are not in the journal");
    assert!(!any_file_contains(&journal, &PATTERN[..24]), "plaintext of the source in the journal");

    // The newest point reads back through the sealed records.
    let out = dir.join("point.raw");
    ok(materialize(target.addr(), "disk0", &out, &logs), "materialize");
    assert!(same_bytes(&source, &out), "the materialized point differs from the source");

    // A wrong key: the disk is refused by name, nothing is touched.
    std::fs::write(&key_file, format!("{}\n", "11".repeat(32))).unwrap();
    let offset = target.log_len();
    target.restart_after(Duration::ZERO);
    target
        .wait_log_since(offset, LOG_TIMEOUT, |log| {
            log.contains("its journal holds records encrypted with key")
                && log.contains("and this target was started with key")
        })
        .unwrap_or_else(|log| panic!("no refusal of the wrong key:\n{log}"));
    std::fs::remove_file(&out).unwrap();
    assert!(!materialize(target.addr(), "disk0", &out, &logs).status.success());

    // The right key again: everything is there.
    std::fs::write(&key_file, format!("{right_key}\n")).unwrap();
    target.restart_after(Duration::ZERO);
    let _ = std::fs::remove_file(&out);
    ok(materialize(target.addr(), "disk0", &out, &logs), "materialize after the restart");
    assert!(same_bytes(&source, &out), "the point differs after the restart");
}
