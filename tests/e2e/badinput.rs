//! Hostile or broken peers on the relay's and the target's sockets (invariant 7 of design.md):
//! each bad connection is closed by the server, the log names the problem, the process keeps
//! running, and agent syncs running at the same time and afterwards still complete with an
//! identical replica. The attacked server is then restarted (kill -9): nothing from the bad
//! connections may have been made durable, so it must start, and (target) every disk that
//! received a bad `Writes` must still attach.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wire::limits::FRAME_BODY_BYTES_MAX;
use wire::{DiskInfo, Frame, FrameType, Hello, Role, FRAME_MAGIC};

use crate::harness::*;

/// How long the server may take to close a bad connection and log why.
const REACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server must log about a bad connection.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A new line containing this text.
    Text(&'static str),
    /// Any new WARN or ERROR line (for problems whose wording is not fixed by the contract).
    WarnOrError,
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Close our sending side after the bytes (the peer sees EOF).
    half_close: bool,
    expect: Expect,
}

/// Size of the disks the bad-input cases announce.
const BAD_DISK_BYTES: u64 = MIB;

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("encode frame");
    out
}

fn disk_info(name: &str) -> DiskInfo<'_> {
    DiskInfo {
        name,
        generation: [0xba; 16],
        size_bytes: BAD_DISK_BYTES,
        take_over: false,
        fresh: true,
    }
}

/// A valid `Hello` from `role`; an agent announces `disk` as its disk id 0.
fn hello(role: Role, disk: &str) -> Vec<u8> {
    encode(&Frame::Hello(Hello {
        version_min: wire::PROTOCOL_VERSION_MIN,
        version_max: wire::PROTOCOL_VERSION_MAX,
        role,
        product_version: "0.0.0-e2e-badinput",
        site_id: "e2e",
        node_id: "badinput",
        disks: if role == Role::Agent { vec![disk_info(disk)] } else { Vec::new() },
    }))
}

/// What a well-behaved peer sends before its first `Writes` for disk id 0: an agent's `Hello`
/// (to a relay), or a relay's `Hello` and `DiskAttach` (to a target).
fn preamble(peer: Role, disk: &str) -> Vec<u8> {
    let mut out = hello(peer, disk);
    if peer == Role::Relay {
        out.extend_from_slice(&encode(&Frame::DiskAttach { disk_id: 0, disk: disk_info(disk) }));
    }
    out
}

/// A `Writes` frame (disk id 0, seq 1, one extent) with a correct header and CRC and whatever
/// body fields are given. Built by hand because `Frame::encode` refuses invalid frames.
fn writes_frame(compression: u8, extent: (u64, u32, u8), data_len: u32, payload: &[u8]) -> Vec<u8> {
    let (offset, len, flags) = extent;
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes()); // disk_id
    body.extend_from_slice(&1u64.to_le_bytes()); // seq
    body.push(compression);
    body.push(0);
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&data_len.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // extent count
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.push(flags);
    body.extend_from_slice(&[0, 0, 0]);
    body.extend_from_slice(payload);
    let mut out = Vec::new();
    wire::encode_raw_frame(FrameType::Writes, None, &body, &mut out).expect("seal Writes");
    out
}

fn header(magic: u32, frame_type: u8, body_len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&magic.to_le_bytes());
    out.push(frame_type);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // CRC: never reached
    out
}

/// Disk names used by the cases that get past the handshake; each case has its own disk so
/// one case's state (sequence numbers, a replica) cannot hide another case's problem.
fn case_disk(index: usize) -> String {
    format!("e2ebad{index}")
}

fn cases(peer: Role) -> Vec<Case> {
    let mut garbage = vec![0u8; 4096];
    Rng::new(0x6a7b).fill(&mut garbage);
    garbage[0] = 0x00; // never the first byte of the magic
    let mut zstd_garbage = vec![0u8; 64];
    Rng::new(0x25d).fill(&mut zstd_garbage);
    let plain_hello = hello(peer, "e2ebad0");
    let mut crc_flipped = plain_hello.clone();
    crc_flipped[12] ^= 0x01;
    let oversize = u32::try_from(FRAME_BODY_BYTES_MAX + 1).expect("limit fits u32");
    let mut cases = vec![
        Case {
            name: "random garbage",
            bytes: garbage,
            half_close: false,
            expect: Expect::Text("bad frame magic"),
        },
        Case {
            name: "HTTP request",
            bytes: b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: e2e\r\n\r\n".to_vec(),
            half_close: false,
            expect: Expect::Text("bad frame magic 0x20544547"),
        },
        Case {
            name: "truncated frame then close",
            bytes: plain_hello[..plain_hello.len() / 2].to_vec(),
            half_close: true,
            expect: Expect::WarnOrError,
        },
        Case {
            name: "wrong magic",
            bytes: header(FRAME_MAGIC ^ 0x0100_0000, 1, 0),
            half_close: false,
            expect: Expect::Text("bad frame magic"),
        },
        Case {
            name: "unknown frame type",
            bytes: header(FRAME_MAGIC, 99, 0),
            half_close: false,
            expect: Expect::Text("unknown frame type 99"),
        },
        Case {
            name: "body_len one over the limit",
            bytes: header(FRAME_MAGIC, FrameType::Writes as u8, oversize),
            half_close: false,
            expect: Expect::Text("exceeds the limit"),
        },
        Case {
            name: "body_len 4 GiB",
            bytes: header(FRAME_MAGIC, FrameType::Writes as u8, u32::MAX),
            half_close: false,
            expect: Expect::Text("exceeds the limit"),
        },
        Case {
            name: "CRC mismatch",
            bytes: crc_flipped,
            half_close: false,
            expect: Expect::Text("CRC32C mismatch"),
        },
        Case {
            name: "Writes before Hello",
            bytes: writes_frame(0, (0, 4096, wire::EXTENT_ZERO), 0, &[]),
            half_close: false,
            expect: Expect::Text("expected Hello"),
        },
    ];
    // (name, Writes frame, expected log text): each sent after a valid preamble.
    let after_handshake: Vec<(&'static str, Vec<u8>, &'static str)> = vec![
        (
            "Writes with a zero-length extent",
            writes_frame(0, (0, 0, 0), 0, &[]),
            "zero-length extent",
        ),
        (
            "Writes with an extent past 2^64",
            writes_frame(0, (u64::MAX - 100, 4096, wire::EXTENT_ZERO), 0, &[]),
            "extent ends past 2^64",
        ),
        (
            "Writes whose payload is shorter than data_len",
            writes_frame(0, (0, 4096, 0), 4096, &[0xab; 10]),
            "length differs from data_len",
        ),
        (
            "Writes past the end of the disk",
            writes_frame(0, (2 * BAD_DISK_BYTES, 4096, wire::EXTENT_ZERO), 0, &[]),
            "past the disk size",
        ),
        (
            "Writes with a zstd payload that does not decompress",
            writes_frame(1, (0, 4096, 0), 4096, &zstd_garbage),
            "does not decompress",
        ),
    ];
    for (index, (name, writes, needle)) in after_handshake.into_iter().enumerate() {
        let mut bytes = preamble(peer, &case_disk(index + 1));
        bytes.extend_from_slice(&writes);
        cases.push(Case { name, bytes, half_close: false, expect: Expect::Text(needle) });
    }
    cases
}

/// Number of disks the cases announce (`e2ebad1..=N`), for the post-restart probe.
const HANDSHAKE_CASES: usize = 5;

/// Connects as a relay, attaches `disk` and waits for the target's `Ack`: after a restart, a
/// disk that once received bad frames must still be usable (nothing bad was journaled).
fn probe_attach(addr: SocketAddr, disk: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream.write_all(&preamble(Role::Relay, disk)).map_err(|e| format!("send: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("set_read_timeout");
    let deadline = Instant::now() + REACTION_TIMEOUT;
    let mut reader = wire::FrameReader::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Err("target closed the connection".into()),
            Ok(n) => reader.feed(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("receive: {e}")),
        }
        while let Some((raw, used)) = reader.peek().map_err(|e| format!("bad frame: {e}"))? {
            match raw.decode().map_err(|e| format!("bad frame: {e}"))? {
                Frame::Ack(_) => return Ok(()),
                Frame::Error { code, message } => {
                    return Err(format!("target answered Error {code}: {message}"))
                }
                _ => {}
            }
            reader.consume(used);
        }
    }
    Err(format!("no Ack within {REACTION_TIMEOUT:?}"))
}

/// Reads until the server closes the connection (EOF or reset). `Err` if it stays open.
fn wait_closed(stream: &mut TcpStream) -> Result<(), String> {
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("set_read_timeout");
    let deadline = Instant::now() + REACTION_TIMEOUT;
    let mut buf = [0u8; 65536];
    let mut received = 0usize;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(()), // reset: closed
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "connection still open after {REACTION_TIMEOUT:?} ({received} bytes received)"
            ));
        }
    }
}

fn is_warn_or_error(line: &str) -> bool {
    line.starts_with("WARN") || line.starts_with("ERROR")
}

/// Sends every bad case to `server` and checks reaction and log. Returns failures as text so
/// all cases run before the test fails.
fn attack(server: &mut Server, peer: Role) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases(peer) {
        let offset = server.log_len();
        let addr: SocketAddr = server.addr();
        let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => stream,
            Err(e) => {
                failures.push(format!("{}: {}: cannot connect: {e}", server.role(), case.name));
                continue;
            }
        };
        // The server may close before taking all bytes: write errors are expected then.
        let _ = stream.write_all(&case.bytes);
        let _ = stream.flush();
        if case.half_close {
            let _ = stream.shutdown(Shutdown::Write);
        }
        if let Err(e) = wait_closed(&mut stream) {
            failures.push(format!("{} did not close on {}: {e}", server.role(), case.name));
        }
        drop(stream);
        let logged = server.wait_log_since(offset, REACTION_TIMEOUT, |text| match case.expect {
            Expect::Text(needle) => {
                text.lines().any(|line| is_warn_or_error(line) && line.contains(needle))
            }
            Expect::WarnOrError => text.lines().any(is_warn_or_error),
        });
        match logged {
            Ok(text) => {
                let line = text.lines().find(|line| is_warn_or_error(line)).unwrap_or_default();
                eprintln!("{} on {:?}: {line}", server.role(), case.name);
            }
            Err(text) => failures.push(format!(
                "{} on {:?}: expected a WARN/ERROR log line {:?}; new log lines:\n{}",
                server.role(),
                case.name,
                case.expect,
                tail(&text, 20)
            )),
        }
        if !server.is_running() {
            failures.push(format!(
                "{} died after {:?}:\n{}",
                server.role(),
                case.name,
                tail(&server.log(), 40)
            ));
            break;
        }
    }
    failures
}

fn bad_input_test(label: &str, victim_is_relay: bool) {
    if !require_tools(label, &["cmp"]) {
        return;
    }
    let mut cluster = Cluster::start(label);
    let busy = cluster.dir.join("busy.img");
    write_mixed_image(&busy, 48 * MIB, 0xbad1);
    let concurrent = cluster.agent("busy", &[("busy", &busy)]).spawn_once("agent-busy");

    let failures = if victim_is_relay {
        attack(&mut cluster.relay, Role::Agent)
    } else {
        attack(&mut cluster.target, Role::Relay)
    };
    cluster.relay.assert_running("after bad input");
    cluster.target.assert_running("after bad input");
    // Reaction failures are reported at the end, after the checks below also ran.

    let finished = concurrent.wait(AGENT_TIMEOUT);
    cluster.expect_agent_success("sync running while bad input arrived", finished);
    cluster.assert_replica_identical(&busy, "busy", "sync running while bad input arrived");

    // A restart replays whatever the server made durable: nothing from the bad connections
    // may be in there to stop it from starting or to poison a disk.
    let victim = if victim_is_relay { &mut cluster.relay } else { &mut cluster.target };
    if let Err(error) = victim.try_restart_after(Duration::ZERO) {
        panic!(
            "the {} does not start again after the bad input: it must have made a bad frame \
             durable (journal) instead of rejecting it before that\n{error}\n\
             other failures:\n  {}",
            victim.role(),
            failures.join("\n  ")
        );
    }
    if !victim_is_relay {
        let addr = cluster.target.addr();
        let probes: Vec<String> = (1..=HANDSHAKE_CASES)
            .filter_map(|index| {
                let disk = case_disk(index);
                probe_attach(addr, &disk).err().map(|error| format!("attach {disk}: {error}"))
            })
            .collect();
        assert!(
            probes.is_empty(),
            "after a restart, disks that received bad Writes are unusable:\n  {}\n{}",
            probes.join("\n  "),
            cluster.diagnostics()
        );
    }

    let after = cluster.dir.join("after.img");
    write_mixed_image(&after, 16 * MIB + 100, 0xbad2);
    let agent = cluster.agent("after", &[("after", &after)]);
    cluster.sync_once(&agent, "sync after bad input");
    cluster.assert_replica_identical(&after, "after", "sync after bad input");

    // The control path still answers.
    let status = cluster.status_json(if victim_is_relay {
        cluster.relay.addr()
    } else {
        cluster.target.addr()
    });
    assert!(status["role"].is_string(), "status after bad input: {status}");
    assert!(
        failures.is_empty(),
        "bad input handling failed (syncs during and after it, and the restart, were fine):\n  \
         {}\n{}",
        failures.join("\n  "),
        cluster.diagnostics()
    );
}

#[test]
fn relay_survives_bad_input() {
    bad_input_test("badinput-relay", true);
}

#[test]
fn target_survives_bad_input() {
    bad_input_test("badinput-target", false);
}

/// A cache written by a version with another record layout is refused at start, with the
/// way out, instead of being misread (cache format 1 had no `format` in cache.state).
#[test]
fn relay_refuses_a_cache_of_another_format() {
    let dir = TestDir::new("cache-format");
    let cache = dir.subdir("cache");
    std::fs::write(cache.join("cache.state"), r#"{"disks": []}"#).expect("write state");
    std::fs::write(cache.join("seg-0000000000000000.log"), b"").expect("write segment");
    let listen = loopback(free_port()).to_string();
    let target = loopback(free_port()).to_string();
    let cache_arg = cache.display().to_string();
    let finished = run_siterelay(
        &["relay", "--listen", &listen, "--target", &target, "--cache-dir", &cache_arg],
        &dir.subdir("logs"),
        COMMAND_TIMEOUT,
    );
    assert!(!finished.status.success(), "{}", finished.describe());
    assert!(
        finished.stderr.contains("written by another siterelay version")
            && finished.stderr.contains("remove the cache directory"),
        "{}",
        finished.describe()
    );
}
