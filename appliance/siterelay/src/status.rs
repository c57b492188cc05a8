//! `siterelay status`: asks a relay or target for its status document and prints it.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use wire::{Frame, FrameReader, Role};

use crate::args::Args;

const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let args = Args::parse("status", rest, &[("connect", true), ("json", false)])?;
    let addr: SocketAddr = args.parsed("connect")?.ok_or("status: --connect ADDR is required")?;
    let json = fetch(addr)?;
    if args.flag("json") {
        println!("{json}");
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|error| format!("bad status from {addr}: {error}"))?;
    print!("{}", render_table(&value));
    Ok(())
}

/// Connects as an operator tool and returns the peer's status JSON.
pub(crate) fn fetch(addr: SocketAddr) -> Result<String, String> {
    ask(addr, &Frame::StatusRequest)
}

/// The peer's status document, parsed.
pub(crate) fn fetch_json(addr: SocketAddr) -> Result<serde_json::Value, String> {
    serde_json::from_str(&fetch(addr)?).map_err(|error| format!("bad status from {addr}: {error}"))
}

/// Sends one operator request (`StatusRequest` or `Control`) and returns the JSON reply; a
/// refusal comes back as its message.
pub(crate) fn ask(addr: SocketAddr, request: &Frame<'_>) -> Result<String, String> {
    let fail = |error: std::io::Error| format!("cannot reach {addr}: {error}");
    let tls = crate::security::operator_tls(addr)?;
    let tcp = TcpStream::connect_timeout(&addr, STATUS_TIMEOUT).map_err(fail)?;
    tcp.set_read_timeout(Some(STATUS_TIMEOUT)).map_err(fail)?;
    let mut stream = pki::Transport::client(tcp, tls)
        .map_err(|error| format!("cannot reach {addr}: {error}"))?;
    let mut out = Vec::new();
    let hello = Frame::Hello(wire::Hello::ours(Role::Control, "status", Vec::new()));
    hello.encode(&mut out).map_err(|error| error.to_string())?;
    request.encode(&mut out).map_err(|error| error.to_string())?;
    stream.write_all(&out).map_err(fail)?;
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let received = stream.read(&mut buf).map_err(fail)?;
        if received == 0 {
            return Err(format!("{addr} closed the connection without a status"));
        }
        reader.feed(&buf[..received]);
        while let Some((raw, used)) = reader.peek().map_err(|error| format!("{addr}: {error}"))? {
            match raw.decode().map_err(|error| format!("{addr}: {error}"))? {
                Frame::Status { json } => return Ok(json.to_string()),
                Frame::Error { code, message } if code == wire::error_code::REFUSED => {
                    return Err(message.to_string())
                }
                Frame::Error { code, message } => {
                    return Err(format!("{addr} refused: {message} (code {code})"))
                }
                _ => {}
            }
            reader.consume(used);
        }
    }
}

fn bytes(value: &serde_json::Value) -> String {
    let n = value.as_u64().unwrap_or(0) as f64;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut scaled = n;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

fn render_table(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let role = status["role"].as_str().unwrap_or("?");
    let version = status["version"].as_str().unwrap_or("?");
    if let Some(error) = status["config_error"].as_str() {
        return format!("appliance {version} in maintenance: configuration error: {error}\n");
    }
    if let Some(error) = status["role_error"].as_str() {
        return format!("appliance {version} in maintenance: {error}\n");
    }
    if status["plaintext"].as_bool() == Some(true) {
        out += "WARNING: plaintext: no TLS between the roles, so no authentication and no \
                encryption on the wire ([security] plaintext = true)\n";
    }
    let empty = Vec::new();
    let disks = status["disks"].as_array().unwrap_or(&empty);
    if role == "relay" {
        let target = &status["target"];
        let link =
            if target["connected"].as_bool() == Some(true) { "connected" } else { "NOT CONNECTED" };
        let cache = &status["cache"];
        out += &format!(
            "relay {version}: target {} {link}; cache {} used of {} in {} segment(s)\n",
            target["address"].as_str().unwrap_or("?"),
            bytes(&cache["bytes_used"]),
            bytes(&cache["bytes_max"]),
            cache["segments"]
        );
        out += &format!(
            "{:<20} {:<14} {:>9} {:>10} {:>11} {:>11} {:<6}\n",
            "DISK", "STATE", "PROGRESS", "BACKLOG", "RECEIVED", "STORED", "AGENT"
        );
        for disk in disks {
            let total = disk["total_bytes"].as_u64().unwrap_or(0).max(1);
            let progress = disk["done_bytes"].as_u64().unwrap_or(0) * 100 / total;
            let agent = if disk["agent_connected"].as_bool() == Some(true) { "yes" } else { "no" };
            out += &format!(
                "{:<20} {:<14} {:>8}% {:>10} {:>11} {:>11} {:<6}\n",
                disk["name"].as_str().unwrap_or("?"),
                disk["state"].as_str().unwrap_or("?"),
                progress,
                disk["backlog_frames"].to_string(),
                bytes(&disk["bytes_received"]),
                bytes(&disk["bytes_stored"]),
                agent
            );
        }
    } else {
        out += &format!("{role} {version}\n");
        out += &format!(
            "{:<20} {:>11} {:>12} {:>12}  {}\n",
            "DISK", "SIZE", "DURABLE_SEQ", "APPLIED_SEQ", "REPLICA"
        );
        for disk in disks {
            out += &format!(
                "{:<20} {:>11} {:>12} {:>12}  {}\n",
                disk["name"].as_str().unwrap_or("?"),
                bytes(&disk["size_bytes"]),
                disk["durable_seq"].to_string(),
                disk["applied_seq"].to_string(),
                disk["replica_path"].as_str().unwrap_or("?")
            );
        }
    }
    out
}
