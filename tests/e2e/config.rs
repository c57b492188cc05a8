//! `siterelay config check FILE` and `--config FILE` on the roles: the default file is valid,
//! bad files are rejected with `FILE: line L, column C: message` (and, for unknown keys, the
//! list of valid keys), exit code 1, and roles refuse to start on them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;

fn default_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/appliance.toml")
}

fn check(dir: &TestDir, file: &Path) -> Finished {
    let file = file.to_str().expect("utf-8 path");
    run_siterelay(&["config", "check", file], dir.path(), COMMAND_TIMEOUT)
}

fn write_config(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write config");
    path
}

fn assert_rejected(finished: &Finished, file: &Path, needles: &[&str]) {
    assert_eq!(finished.status.code(), Some(1), "expected exit code 1\n{}", finished.describe());
    let prefix = format!("{}: ", file.display());
    let line = finished.stderr.lines().find(|line| line.contains(&prefix));
    let Some(line) = line else {
        panic!("stderr has no line starting with {prefix:?}\n{}", finished.describe());
    };
    for needle in needles {
        assert!(
            line.contains(needle),
            "error line lacks {needle:?}: {line}\n{}",
            finished.describe()
        );
    }
}

#[test]
fn default_config_file_checks_ok() {
    let dir = TestDir::new("config-default");
    let file = default_config();
    assert!(file.is_file(), "{} missing", file.display());
    let finished = check(&dir, &file);
    assert!(finished.status.success(), "config check failed\n{}", finished.describe());
    let expected = format!("{}: ok", file.display());
    assert!(
        finished.stdout.contains(&expected),
        "stdout lacks {expected:?}\n{}",
        finished.describe()
    );
}

#[test]
fn empty_config_file_checks_ok() {
    let dir = TestDir::new("config-empty");
    let file = write_config(&dir, "empty.toml", "# nothing: all defaults\n");
    let finished = check(&dir, &file);
    assert!(finished.status.success(), "config check failed\n{}", finished.describe());
}

#[test]
fn unknown_key_is_rejected_with_position_and_valid_keys() {
    let dir = TestDir::new("config-unknown-key");
    let file = write_config(
        &dir,
        "unknown-key.toml",
        "[relay]\nlisten = \"127.0.0.1:7700\"\nsegment_size = \"64MiB\"\n",
    );
    let finished = check(&dir, &file);
    assert_rejected(
        &finished,
        &file,
        &["line 3, column 1", "unknown field `segment_size`", "expected one of", "`segment_bytes`"],
    );
}

#[test]
fn unknown_section_is_rejected_with_valid_sections() {
    let dir = TestDir::new("config-unknown-section");
    let file = write_config(&dir, "unknown-section.toml", "[log]\n\n[relai]\nlisten = 1\n");
    let finished = check(&dir, &file);
    assert_rejected(
        &finished,
        &file,
        &["line 3, column 2", "unknown field `relai`", "`relay`", "`target`", "`agent`"],
    );
}

#[test]
fn wrong_type_is_rejected_with_position() {
    let dir = TestDir::new("config-wrong-type");
    let file = write_config(&dir, "wrong-type.toml", "[relay]\nagents_max = \"many\"\n");
    let finished = check(&dir, &file);
    assert_rejected(&finished, &file, &["line 2, column 14", "invalid type"]);
}

#[test]
fn bad_enum_value_lists_valid_values() {
    let dir = TestDir::new("config-bad-level");
    let file = write_config(&dir, "bad-level.toml", "[log]\nlevel = \"verbose\"\n");
    let finished = check(&dir, &file);
    assert_rejected(&finished, &file, &["line 2, column 9", "`error`, `warn`, `info`"]);
}

#[test]
fn out_of_range_value_names_key_and_limit() {
    let dir = TestDir::new("config-range");
    let file = write_config(&dir, "range.toml", "[relay]\nagents_max = 0\n");
    let finished = check(&dir, &file);
    assert_rejected(&finished, &file, &["relay.agents_max", "line 2"]);
}

#[test]
fn malformed_toml_is_rejected() {
    let dir = TestDir::new("config-malformed");
    let file = write_config(&dir, "malformed.toml", "[log]\nlevel = \n");
    let finished = check(&dir, &file);
    assert_rejected(&finished, &file, &["line 2, column 9"]);
}

#[test]
fn missing_file_is_an_error() {
    let dir = TestDir::new("config-missing");
    let file = dir.join("does-not-exist.toml");
    let finished = check(&dir, &file);
    assert!(!finished.status.success(), "missing file accepted\n{}", finished.describe());
    assert!(
        finished.stderr.contains("does-not-exist.toml"),
        "error does not name the file\n{}",
        finished.describe()
    );
}

/// Starts a role with `--config FILE` and returns how it ended (it must end by itself).
fn run_role_with_config(dir: &TestDir, role_args: &[String], config: &Path) -> Finished {
    let mut args: Vec<&str> = role_args.iter().map(String::as_str).collect();
    let config = config.to_str().expect("utf-8 path");
    args.extend(["--config", config]);
    run_siterelay(&args, dir.path(), Duration::from_secs(20))
}

#[test]
fn roles_refuse_to_start_with_a_bad_config() {
    let dir = TestDir::new("config-roles");
    let file = write_config(&dir, "bad.toml", "[target]\nlisten = \"127.0.0.1:7800\"\nbogus = 1\n");
    let target_port = free_port();
    let relay_port = free_port();
    let data_dir = dir.join("data").display().to_string();
    let cache_dir = dir.join("cache").display().to_string();
    let state_dir = dir.join("state").display().to_string();
    let image = dir.join("disk.img");
    fs::write(&image, vec![0u8; 65536]).expect("write image");
    let roles: Vec<Vec<String>> = vec![
        vec![
            "target".into(),
            "--listen".into(),
            format!("127.0.0.1:{target_port}"),
            "--data-dir".into(),
            data_dir,
        ],
        vec![
            "relay".into(),
            "--listen".into(),
            format!("127.0.0.1:{relay_port}"),
            "--target".into(),
            format!("127.0.0.1:{target_port}"),
            "--cache-dir".into(),
            cache_dir,
        ],
        vec![
            "agent".into(),
            "--relay".into(),
            format!("127.0.0.1:{relay_port}"),
            "--disk".into(),
            format!("d={}", image.display()),
            "--state-dir".into(),
            state_dir,
            "--once".into(),
            "--reconnect-timeout".into(),
            "1".into(),
        ],
    ];
    for role in &roles {
        let finished = run_role_with_config(&dir, role, &file);
        assert!(
            !finished.status.success(),
            "{} started with a bad config\n{}",
            role[0],
            finished.describe()
        );
        let expected = format!("{}: line 3, column 1", file.display());
        assert!(
            finished.stderr.contains(&expected)
                && finished.stderr.contains("unknown field `bogus`"),
            "{} did not report {expected:?} and the unknown key\n{}",
            role[0],
            finished.describe()
        );
    }
}

#[test]
fn role_starts_with_the_default_config_and_flags_override_it() {
    let dir = TestDir::new("config-role-default");
    let logs = dir.subdir("logs");
    let config = default_config();
    let config = config.to_str().expect("utf-8 path");
    // The default file says listen = 127.0.0.1:7800 and data_dir = /var/lib/...; the flags
    // must win, or the target would listen elsewhere (and `listening on` would name it).
    let mut target = Server::target_with(&dir.join("data"), &logs, &["--config", config]);
    target.start();
    let expected = format!("listening on {}", target.addr());
    assert!(
        target.log().contains(&expected),
        "target with --config did not honour --listen: expected {expected:?} in\n{}",
        tail(&target.log(), 20)
    );
    let status = status_json(target.addr(), &logs);
    assert_eq!(status["role"].as_str(), Some("target"), "{status}");
}
