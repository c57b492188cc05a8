//! Recovery operations against a target: `points list`, and `failover test | materialize |
//! jobs | cleanup`. Each sends one `Control` request and prints the reply as a table, or as
//! JSON with `--json`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wire::Frame;

use crate::args::Args;

/// How long `materialize --wait` waits for the copy.
const MATERIALIZE_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn points(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("points: expected `points list --connect ADDR [--disk NAME] [--json]`".into());
    };
    if sub != "list" {
        return Err(format!("points: unknown subcommand {sub:?} (expected list)"));
    }
    let args =
        Args::parse("points list", rest, &[("connect", true), ("disk", true), ("json", false)])?;
    let addr = connect(&args, "points list")?;
    let reply = control(addr, json!({ "op": "points", "disk": args.value("disk") }))?;
    if args.flag("json") {
        println!("{reply}");
        return Ok(());
    }
    print!("{}", render_points(&reply));
    Ok(())
}

pub(crate) fn failover(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("failover: expected one of test, materialize, unplanned, change-point, \
                    commit, jobs, cleanup"
            .into());
    };
    match sub.as_str() {
        "test" => {
            let (args, addr, request) =
                point_export("test", rest, json!({ "op": "test-failover" }))?;
            let job = control(addr, request)?;
            print_job(&args, &job, "test failover ready")
        }
        "materialize" => {
            const SPEC: &[(&str, bool)] = &[
                ("connect", true),
                ("disk", true),
                ("point", true),
                ("output", true),
                ("format", true),
                ("wait", false),
                ("json", false),
            ];
            let args = Args::parse("failover materialize", rest, SPEC)?;
            let addr = connect(&args, "failover materialize")?;
            let output = required(&args, "output", "failover materialize")?;
            let output = std::path::absolute(output)
                .map_err(|error| format!("--output {output}: {error}"))?;
            let request = json!({
                "op": "materialize",
                "disk": required(&args, "disk", "failover materialize")?,
                "point": args.value("point").unwrap_or("latest"),
                "output": output,
                "format": args.value("format").unwrap_or("raw"),
            });
            let job = control(addr, request)?;
            if !args.flag("wait") {
                return print_job(&args, &job, "materialize started");
            }
            let id = job["id"].as_u64().ok_or("materialize: reply without a job id")?;
            let done = wait_job(addr, id)?;
            print_job(&args, &done, "materialized")
        }
        "unplanned" => {
            let base = json!({ "op": "failover", "kind": "unplanned" });
            let (args, addr, request) = point_export("unplanned", rest, base)?;
            let record = control(addr, request)?;
            print_failover(&args, &record, "failed over")
        }
        "planned" => {
            const SPEC: &[(&str, bool)] = &[
                ("connect", true),
                ("relay", true),
                ("disk", true),
                ("nbd-listen", true),
                ("drain-timeout", true),
                ("json", false),
            ];
            let args = Args::parse("failover planned", rest, SPEC)?;
            let addr = connect(&args, "failover planned")?;
            let relay: SocketAddr = args
                .parsed("relay")?
                .ok_or("failover planned: --relay ADDR (the relay the disk replicates through) is required")?;
            let disk = required(&args, "disk", "failover planned")?;
            let drain_timeout =
                Duration::from_secs(args.parsed("drain-timeout")?.unwrap_or(PLANNED_DRAIN_SECS));
            let forwarded = drained(relay, disk, drain_timeout)?;
            let request = json!({
                "op": "failover",
                "kind": "planned",
                "disk": disk,
                "point": "latest",
                "nbd_listen": required(&args, "nbd-listen", "failover planned")?,
                "expect_seq": forwarded,
            });
            let record = control(addr, request)?;
            print_failover(&args, &record, "failed over (planned, no data lost)")
        }
        "change-point" => {
            const SPEC: &[(&str, bool)] =
                &[("connect", true), ("disk", true), ("point", true), ("json", false)];
            let args = Args::parse("failover change-point", rest, SPEC)?;
            let addr = connect(&args, "failover change-point")?;
            let request = json!({
                "op": "change-point",
                "disk": required(&args, "disk", "failover change-point")?,
                "point": required(&args, "point", "failover change-point")?,
            });
            let record = control(addr, request)?;
            print_failover(&args, &record, "point changed")
        }
        "commit" => {
            const SPEC: &[(&str, bool)] = &[("connect", true), ("disk", true), ("json", false)];
            let args = Args::parse("failover commit", rest, SPEC)?;
            let addr = connect(&args, "failover commit")?;
            let disk = required(&args, "disk", "failover commit")?;
            let record = control(addr, json!({ "op": "commit", "disk": disk }))?;
            print_failover(&args, &record, "committed")
        }
        "release" => {
            const SPEC: &[(&str, bool)] = &[("connect", true), ("disk", true), ("json", false)];
            let args = Args::parse("failover release", rest, SPEC)?;
            let addr = connect(&args, "failover release")?;
            let disk = required(&args, "disk", "failover release")?;
            let record = control(addr, json!({ "op": "release", "disk": disk }))?;
            if !args.flag("json") {
                println!(
                    "released disk {disk}: no longer served; protect {} with an agent (reprotect)",
                    text(&record["image"])
                );
                return Ok(());
            }
            println!("{record}");
            Ok(())
        }
        "jobs" => {
            let args = Args::parse("failover jobs", rest, &[("connect", true), ("json", false)])?;
            let addr = connect(&args, "failover jobs")?;
            let reply = control(addr, json!({ "op": "jobs" }))?;
            if args.flag("json") {
                println!("{reply}");
            } else {
                print!("{}", render_jobs(&reply));
            }
            Ok(())
        }
        "cleanup" => {
            const SPEC: &[(&str, bool)] = &[("connect", true), ("job", true), ("json", false)];
            let args = Args::parse("failover cleanup", rest, SPEC)?;
            let addr = connect(&args, "failover cleanup")?;
            let id: u64 = args.parsed("job")?.ok_or("failover cleanup: --job ID is required")?;
            let job = control(addr, json!({ "op": "cleanup", "job": id }))?;
            print_job(&args, &job, "cleaned up")
        }
        other => Err(format!(
            "failover: unknown subcommand {other:?} (expected test, materialize, unplanned, \
             planned, change-point, commit, release, jobs, cleanup)"
        )),
    }
}

/// `failover test|unplanned`: a point of a disk served at `--nbd-listen`; the request is
/// `base` with the disk, point and address filled in.
fn point_export(
    sub: &str,
    rest: &[String],
    mut base: Value,
) -> Result<(Args, SocketAddr, Value), String> {
    const SPEC: &[(&str, bool)] = &[
        ("connect", true),
        ("disk", true),
        ("point", true),
        ("nbd-listen", true),
        ("json", false),
    ];
    let command = format!("failover {sub}");
    let args = Args::parse(&command, rest, SPEC)?;
    let addr = connect(&args, &command)?;
    base["disk"] = json!(required(&args, "disk", &command)?);
    base["point"] = json!(args.value("point").unwrap_or("latest"));
    base["nbd_listen"] = json!(required(&args, "nbd-listen", &command)?);
    Ok((args, addr, base))
}

/// How long a planned failover waits by default for the relay to deliver a disk's backlog.
const PLANNED_DRAIN_SECS: u64 = 600;

/// Waits until the relay has delivered everything of `disk` to the target, with its agent
/// stopped; returns the last sequence forwarded.
pub(crate) fn drained(relay: SocketAddr, disk: &str, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        crate::security::use_relay_credential(relay)?;
        let status = crate::status::fetch_json(relay)?;
        let entry = status["disks"]
            .as_array()
            .and_then(|disks| disks.iter().find(|entry| entry["name"] == disk))
            .cloned()
            .ok_or_else(|| format!("the relay at {relay} does not know disk {disk}"))?;
        if entry["agent_connected"].as_bool() == Some(true) {
            return Err(format!(
                "the agent of disk {disk} is still running: stop the workload, then stop the \
                 agent cleanly (SIGTERM) so it sends its last writes and a final point"
            ));
        }
        let backlog = entry["backlog_frames"].as_u64().unwrap_or(u64::MAX);
        if backlog == 0 {
            return entry["replicated_seq"]
                .as_u64()
                .ok_or_else(|| format!("relay status of {disk} lacks replicated_seq"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the relay still holds {backlog} frames of disk {disk} after {timeout:?}; is the \
                 target reachable from the relay?"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn connect(args: &Args, command: &str) -> Result<SocketAddr, String> {
    args.parsed("connect")?
        .ok_or_else(|| format!("{command}: --connect ADDR (the target) is required"))
}

fn required<'a>(args: &'a Args, name: &str, command: &str) -> Result<&'a str, String> {
    args.value(name).ok_or_else(|| format!("{command}: --{name} is required"))
}

/// Sends a control request; the reply parsed as JSON.
pub(crate) fn control(addr: SocketAddr, request: Value) -> Result<Value, String> {
    let text = request.to_string();
    let reply = crate::status::ask(addr, &Frame::Control { json: &text })?;
    serde_json::from_str(&reply).map_err(|error| format!("bad reply from {addr}: {error}"))
}

fn wait_job(addr: SocketAddr, id: u64) -> Result<Value, String> {
    let deadline = Instant::now() + MATERIALIZE_WAIT_MAX;
    loop {
        let jobs = control(addr, json!({ "op": "jobs" }))?;
        let job = jobs["jobs"]
            .as_array()
            .and_then(|list| list.iter().find(|job| job["id"].as_u64() == Some(id)))
            .cloned()
            .ok_or_else(|| format!("job {id} vanished from the target (did it restart?)"))?;
        match job["state"].as_str() {
            Some("done") => return Ok(job),
            Some("failed") => {
                return Err(format!("job {id} failed: {}", job["error"].as_str().unwrap_or("?")))
            }
            _ if Instant::now() >= deadline => return Err(format!("job {id} is still running")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn print_job(args: &Args, job: &Value, headline: &str) -> Result<(), String> {
    if args.flag("json") {
        println!("{job}");
        return Ok(());
    }
    println!("{headline}: job {}", job["id"]);
    println!(
        "  disk {} at point {} ({}, {})",
        text(&job["disk"]),
        job["point"],
        text(&job["point_kind"]),
        time(&job["point_time_unix_ms"])
    );
    if let Some(export) = job["export"].as_str() {
        println!("  export: {export}");
    }
    if let Some(output) = job["output"].as_str() {
        println!("  output: {output}");
    }
    Ok(())
}

fn print_failover(args: &Args, record: &Value, headline: &str) -> Result<(), String> {
    if args.flag("json") {
        println!("{record}");
        return Ok(());
    }
    println!(
        "{headline}: disk {} at point {} ({}, {}), {}",
        text(&record["disk"]),
        record["point"],
        text(&record["point_kind"]),
        time(&record["point_time_unix_ms"]),
        text(&record["phase"])
    );
    if let Some(export) = record["export"].as_str() {
        println!("  served at {export}");
    }
    Ok(())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
fn time(value: &Value) -> String {
    let Some(ms) = value.as_u64() else { return "?".into() };
    let secs = ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        ms % 1000
    )
}

fn render_points(reply: &Value) -> String {
    let mut out = String::new();
    for disk in reply["disks"].as_array().into_iter().flatten() {
        let points = disk["points"].as_array().map_or(&[][..], Vec::as_slice);
        out += &format!(
            "disk {}: {} recovery points, journal {} bytes\n",
            text(&disk["name"]),
            points.len(),
            disk["journal_bytes"]
        );
        out += &format!(
            "  {:>8}  {:<23}  {:<6}  {:<16}  {:>10}\n",
            "ID", "TIME (UTC)", "KIND", "GROUP", "SEQUENCE"
        );
        for point in points {
            out += &format!(
                "  {:>8}  {:<23}  {:<6}  {:<16}  {:>10}{}\n",
                point["id"].to_string(),
                time(&point["time_unix_ms"]),
                text(&point["kind"]),
                point["group"].as_str().unwrap_or("-"),
                point["seq"].to_string(),
                if point["latest"].as_bool() == Some(true) { "  latest" } else { "" }
            );
        }
    }
    out
}

fn render_jobs(reply: &Value) -> String {
    let mut out = String::new();
    for failover in reply["failovers"].as_array().into_iter().flatten() {
        out += &format!(
            "disk {} failed over ({}) to point {}: {}, served at {}\n",
            text(&failover["disk"]),
            text(&failover["kind"]),
            failover["point"],
            text(&failover["phase"]),
            text(&failover["export"])
        );
    }
    out += &format!(
        "{:>5}  {:<14}  {:<16}  {:>8}  {:<8}  {}\n",
        "JOB", "KIND", "DISK", "POINT", "STATE", "WHERE"
    );
    for job in reply["jobs"].as_array().into_iter().flatten() {
        let place = job["export"].as_str().or(job["output"].as_str()).unwrap_or("");
        out += &format!(
            "{:>5}  {:<14}  {:<16}  {:>8}  {:<8}  {}\n",
            job["id"].to_string(),
            text(&job["kind"]),
            text(&job["disk"]),
            job["point"].to_string(),
            text(&job["state"]),
            place
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_render_as_a_table_with_their_group() {
        let reply = json!({ "disks": [{ "name": "d0", "journal_bytes": 4096, "points": [
            { "id": 3, "time_unix_ms": 0, "kind": "group", "group": "erp", "seq": 17, "latest": false },
            { "id": 4, "time_unix_ms": 1000, "kind": "crash", "group": null, "seq": 20, "latest": true },
        ]}]});
        let table = render_points(&reply);
        assert_eq!(
            table,
            "disk d0: 2 recovery points, journal 4096 bytes\n\
             \x20       ID  TIME (UTC)               KIND    GROUP               SEQUENCE\n\
             \x20        3  1970-01-01 00:00:00.000  group   erp                       17\n\
             \x20        4  1970-01-01 00:00:01.000  crash   -                         20  latest\n"
        );
    }

    #[test]
    fn times_render_in_utc() {
        assert_eq!(time(&json!(0)), "1970-01-01 00:00:00.000");
        assert_eq!(time(&json!(1_795_910_400_123u64)), "2026-11-29 00:00:00.123");
        assert_eq!(time(&json!(951_782_400_000u64)), "2000-02-29 00:00:00.000");
    }
}
