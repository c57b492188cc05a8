//! Connection limits of relay and target: a peer that never finishes its Hello (silent, or
//! trickling one byte at a time) is dropped after 10 s with the reason logged, a flood of
//! connections beyond the cap is refused by name, and a client that asks without reading the
//! replies cannot grow the relay's memory; replication goes on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Waits until the server closes `stream`; how long it took.
fn closed_within(mut stream: TcpStream, trickle: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 4096];
    // A real Hello, sent one byte every half second and never its last byte.
    let mut hello = Vec::new();
    wire::Frame::Hello(wire::Hello::ours(wire::Role::Agent, "trickle", Vec::new()))
        .encode(&mut hello)
        .unwrap();
    hello.pop();
    let mut trickled = 0;
    loop {
        assert!(started.elapsed() < limit, "still open after {limit:?}");
        if trickle && trickled < hello.len() {
            if stream.write_all(&hello[trickled..=trickled]).is_err() {
                return started.elapsed();
            }
            trickled += 1;
        }
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return started.elapsed(),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The first frame the server sends on a fresh connection, if it is an Error: its message.
fn refusal(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = wire::FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        let received = stream.read(&mut buf).ok()?;
        if received == 0 {
            return None;
        }
        reader.feed(&buf[..received]);
        if let Ok(Some((raw, _))) = reader.peek() {
            return match raw.decode() {
                Ok(wire::Frame::Error { code, message }) if code == wire::error_code::LIMIT => {
                    Some(message.to_string())
                }
                _ => None,
            };
        }
    }
}

#[test]
fn silent_or_trickling_handshakes_time_out_and_floods_are_capped() {
    let cluster = Cluster::start("limits");
    let (relay, target) = (cluster.relay.addr(), cluster.target.addr());
    let waits: Vec<_> = [(relay, false), (relay, true), (target, false), (target, true)]
        .into_iter()
        .map(|(addr, trickle)| {
            let stream = TcpStream::connect(addr).unwrap();
            std::thread::spawn(move || closed_within(stream, trickle, Duration::from_secs(20)))
        })
        .collect();
    for wait in waits {
        let took = wait.join().unwrap();
        assert!(took >= Duration::from_secs(9), "closed after {took:?}, before the Hello deadline");
    }
    // The peer sees the close a moment before the server's log line is written.
    for server in [&cluster.relay, &cluster.target] {
        let logged = server.wait_log_since(0, Duration::from_secs(10), |log| {
            log.matches("no Hello within 10 s").count() >= 2
        });
        if let Err(log) = logged {
            let dropped = log.matches("no Hello within 10 s").count();
            panic!("{} logged {dropped} handshake timeouts:\n{}", server.role(), tail(&log, 20));
        }
    }

    // A flood: the target's cap is 256 connections, the relay's agents_max (default 256).
    for (addr, message) in [
        (target, "target serves at most 256 connections"),
        (relay, "relay serves at most 256 connections"),
    ] {
        let held: Vec<TcpStream> = (0..256).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(refusal(addr).as_deref(), Some(message), "connection 257 to {addr}");
        drop(held);
    }
    std::thread::sleep(Duration::from_secs(1));

    // A status client that never reads: the relay stops reading it once 8 MiB of replies
    // wait, instead of queueing a reply for every request.
    let rss_before = rss_kib(cluster.relay.pid());
    let mut greedy = TcpStream::connect(relay).unwrap();
    let mut requests = Vec::new();
    wire::Frame::Hello(wire::Hello::ours(wire::Role::Control, "greedy", Vec::new()))
        .encode(&mut requests)
        .unwrap();
    let mut one = Vec::new();
    wire::Frame::StatusRequest.encode(&mut one).unwrap();
    for _ in 0..65_536 {
        requests.extend_from_slice(&one);
    }
    greedy.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    let reason = "the peer does not read its replies (8 MiB queued)";
    while !cluster.relay.log().contains(reason) {
        assert!(
            Instant::now() < deadline,
            "after {sent} bytes of requests the relay still queues replies:\n{}",
            tail(&cluster.relay.log(), 10)
        );
        match greedy.write(&requests[sent % requests.len()..]) {
            Ok(written) => sent += written,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let grown = rss_kib(cluster.relay.pid()).saturating_sub(rss_before);
    assert!(
        grown < 48 << 10,
        "the relay grew by {grown} KiB answering {sent} bytes of unread status requests"
    );
    // The cut-off connection is released even though its peer still reads nothing.
    let released = closed_within(greedy, false, Duration::from_secs(20));
    assert!(released < Duration::from_secs(20));

    // Replication is unaffected.
    let source = cluster.dir.join("source.img");
    write_mixed_image(&source, 8 << 20, 0x1111_0009);
    let agent = cluster.agent("after-flood", &[("d0", &source)]);
    cluster.sync_once(&agent, "after the flood");
    cluster.assert_replica_identical(&source, "d0", "after the flood");
}
