//! `siterelay hwtest`: every qualification check reports, as text and JSON, and a cache disk
//! too small for the configured cache fails the run by name.

use std::fs;

use crate::harness::*;

#[test]
fn hwtest_reports_every_check_and_fails_on_a_too_small_cache_disk() {
    let dir = TestDir::new("hwtest");
    let logs = dir.subdir("logs");
    let cache = dir.join("cache");
    let cache_arg = cache.to_str().unwrap();
    let finished = run_siterelay(
        &["hwtest", "--cache-dir", cache_arg, "--json", "--disks", "4"],
        &logs,
        COMMAND_TIMEOUT,
    );
    let report: serde_json::Value = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|error| panic!("hwtest --json: {error}\n{}", finished.describe()));
    let names: Vec<&str> =
        report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["io_uring", "cache_o_direct", "cache_size", "cache_write", "cpu_memory", "clock"]
    );
    for check in report["checks"].as_array().unwrap() {
        assert!(["pass", "warn", "fail"].contains(&check["outcome"].as_str().unwrap()), "{check}");
        assert!(!check["detail"].as_str().unwrap().is_empty(), "{check}");
    }
    assert_eq!(report["checks"][0]["outcome"], "pass", "io_uring is required here: {report}");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "hwtest left probe files");

    let config = dir.join("huge-cache.toml");
    fs::write(&config, "[relay]\ncache_bytes_max = \"64TiB\"\nsegment_bytes = \"1GiB\"\n").unwrap();
    let finished = run_siterelay(
        &["hwtest", "--config", config.to_str().unwrap(), "--cache-dir", cache_arg],
        &logs,
        COMMAND_TIMEOUT,
    );
    assert!(!finished.status.success(), "a 64 TiB cache passed\n{}", finished.describe());
    let line = finished.stdout.lines().find(|l| l.starts_with("cache_size")).unwrap();
    assert!(
        line.contains("fail") && line.contains("less than the configured cache of 67108864 MiB"),
        "{line}"
    );
    assert_eq!(finished.stderr.trim(), "siterelay: 1 hardware check(s) failed");
}
