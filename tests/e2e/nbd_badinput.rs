//! Hostile NBD clients against the agent's write tap, over raw TCP: every malformed handshake
//! or request gets exactly the reply the protocol prescribes (an error reply on the same
//! connection when the stream is still in sync, a closed connection when it cannot be), other
//! connections are not disturbed, and afterwards the agent still runs, a real client
//! (`nbdinfo`) still works, the source holds exactly the acknowledged writes (nothing
//! rejected was applied, nothing acknowledged was lost) and the replica converges to it.
//!
//! Protocol numbers are written out here from the NBD specification rather than taken from
//! the `nbd` crate, so a wrong constant there cannot hide here.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The one disk the agent serves, and its size.
const DISK: &str = "d0";
const DISK_BYTES: u64 = 16 * MIB;
/// How long the tap may take to answer or to close a connection: a hang fails, not blocks.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the replica may take to converge after the hostile traffic.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

// Handshake.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const SERVER_FLAGS: u16 = 0x0003; // fixed newstyle, no zeroes
const CLIENT_FIXED_NEWSTYLE: u32 = 1;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_EXTENDED_HEADERS: u32 = 11;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
const INFO_EXPORT: u16 = 0;

const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_SEND_DF: u16 = 1 << 7;

// Transmission.
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_DF: u16 = 1 << 2;

const REPLY_FLAG_DONE: u16 = 1 << 0;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_ERROR: u16 = 0x8001;
const REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// The largest read or write the tap serves (the specification's always-allowed size).
const PAYLOAD_MAX: u32 = 32 << 20;
/// Option data the tap reads and discards (answering `NBD_REP_ERR_TOO_BIG`); longer closes.
const OPTION_DISCARD_MAX: u32 = 1 << 20;
/// Option data the tap parses; longer is too big.
const OPTION_DATA_MAX: u32 = 4096;

// ------------------------------------------------------------------------------------------
// Encoding and naming

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes(bytes[..2].try_into().expect("2 bytes"))
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for byte in bytes.iter().take(64) {
        let _ = write!(out, "{byte:02x}");
    }
    if bytes.len() > 64 {
        let _ = write!(out, "... ({} bytes)", bytes.len());
    }
    out
}

fn expected_greeting() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&SERVER_FLAGS.to_be_bytes());
    out
}

/// An option: IHAVEOPT, option number, data length, data.
fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    option_header(option, u32::try_from(data.len()).expect("option data fits u32"))
        .into_iter()
        .chain(data.iter().copied())
        .collect()
}

/// An option header announcing `length` bytes of data (which the caller may or may not send).
fn option_header(option: u32, length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

/// Data of NBD_OPT_GO / NBD_OPT_INFO: export name and no information requests.
fn info_request(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(name.len()).expect("name fits u32").to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// A 28-byte request header with any magic.
fn request_with_magic(
    magic: u32,
    flags: u16,
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

fn request(flags: u16, command: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
    request_with_magic(REQUEST_MAGIC, flags, command, handle, offset, length)
}

/// A write request with its payload.
fn write_request(flags: u16, handle: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("payload fits u32");
    let mut out = request(flags, CMD_WRITE, handle, offset, length);
    out.extend_from_slice(payload);
    out
}

/// A recognisable handle using all 64 bits, so an echo that drops or swaps bytes shows.
fn handle(n: u64) -> u64 {
    0xfeed_c0de_0000_0000 | (n << 8) | 0xa5
}

fn errno_name(errno: u32) -> String {
    let name = match errno {
        0 => "OK",
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "?",
    };
    format!("{errno} ({name})")
}

fn reply_type_name(reply_type: u32) -> String {
    let name = match reply_type {
        REP_ACK => "ACK",
        REP_SERVER => "SERVER",
        REP_INFO => "INFO",
        4 => "META_CONTEXT",
        REP_ERR_UNSUP => "ERR_UNSUP",
        0x8000_0002 => "ERR_POLICY",
        REP_ERR_INVALID => "ERR_INVALID",
        0x8000_0004 => "ERR_PLATFORM",
        REP_ERR_UNKNOWN => "ERR_UNKNOWN",
        0x8000_0007 => "ERR_SHUTDOWN",
        REP_ERR_TOO_BIG => "ERR_TOO_BIG",
        _ => "?",
    };
    format!("{reply_type:#x} ({name})")
}

/// Where two byte strings first differ, for failure messages.
fn first_difference(expected: &[u8], got: &[u8]) -> String {
    if expected.len() != got.len() {
        return format!("{} bytes instead of {}", got.len(), expected.len());
    }
    match expected.iter().zip(got).position(|(a, b)| a != b) {
        None => "identical".to_string(),
        Some(at) => {
            let end = (at + 16).min(expected.len());
            format!(
                "first difference at byte {at}: expected {}, got {}",
                hex(&expected[at..end]),
                hex(&got[at..end])
            )
        }
    }
}

// ------------------------------------------------------------------------------------------
// A raw client

/// What a reply to one request must be.
#[derive(Debug, Clone)]
enum Want {
    /// A simple reply with this error (0: success without data).
    Error(u32),
    /// A successful read: simple reply 0 followed by exactly these bytes.
    Data(Vec<u8>),
}

#[derive(Debug)]
struct OptionReply {
    option: u32,
    reply_type: u32,
    data: Vec<u8>,
}

/// One raw TCP connection to the tap, with timeouts on every read and write.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("read timeout: {e}"))?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("write timeout: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream })
    }

    /// Connects and checks the 18-byte greeting.
    fn greeted(addr: SocketAddr) -> Result<Conn, String> {
        let mut conn = Conn::connect(addr)?;
        let greeting = conn.recv(18, "the server greeting")?;
        let expected = expected_greeting();
        if greeting != expected {
            return Err(format!("greeting {} is not {}", hex(&greeting), hex(&expected)));
        }
        Ok(conn)
    }

    /// Greeted, then the client flags sent: ready for options.
    fn negotiating(addr: SocketAddr, flags: u32) -> Result<Conn, String> {
        let mut conn = Conn::greeted(addr)?;
        conn.send(&flags.to_be_bytes())?;
        Ok(conn)
    }

    /// Negotiated with NBD_OPT_GO on the default export: in transmission, simple replies.
    fn transmission(addr: SocketAddr) -> Result<Conn, String> {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.go(b"")?;
        Ok(conn)
    }

    /// Sends NBD_OPT_EXPORT_NAME for `name` and checks the reply (size, flags, and the 124
    /// zero bytes unless `no_zeroes`); returns the transmission flags.
    fn export_name(&mut self, name: &[u8], no_zeroes: bool) -> Result<u16, String> {
        self.send_option(OPT_EXPORT_NAME, name)?;
        let reply = self.recv(if no_zeroes { 10 } else { 134 }, "the reply to EXPORT_NAME")?;
        let size = be64(&reply);
        let flags = be16(&reply[8..]);
        if size != DISK_BYTES {
            return Err(format!("EXPORT_NAME: export size {size}, not {DISK_BYTES}"));
        }
        if flags & FLAG_HAS_FLAGS == 0 || flags & FLAG_READ_ONLY != 0 {
            return Err(format!("EXPORT_NAME: transmission flags {flags:#06x}"));
        }
        if reply[10..].iter().any(|&byte| byte != 0) {
            return Err(format!("EXPORT_NAME: the reserved bytes are {}", hex(&reply[10..])));
        }
        Ok(flags)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| format!("send {} bytes: {e}", bytes.len()))
    }

    /// Sends where the server may already have closed (a reset or broken pipe is expected).
    fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    fn recv(&mut self, len: usize, what: &str) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed by the server after {got} of the {len} bytes of \
                         {what} (received: {})",
                        hex(&buf[..got])
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!(
                        "no {what} within {IO_TIMEOUT:?} ({got} of {len} bytes): the server hangs"
                    ))
                }
                Err(e) => return Err(format!("receive {what}: {e} ({got} of {len} bytes)")),
            }
        }
        Ok(buf)
    }

    /// Waits for the server to close the connection (EOF or reset) and returns what it sent
    /// before. `Err` if it is still open after `IO_TIMEOUT`.
    fn wait_closed(&mut self) -> Result<Vec<u8>, String> {
        let _ = self.stream.set_read_timeout(Some(Duration::from_millis(100)));
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut received = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(received),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Ok(received), // reset: closed
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the server kept the connection open for {IO_TIMEOUT:?} (received {})",
                    hex(&received)
                ));
            }
        }
    }

    /// The server must close the connection without sending anything more.
    fn expect_closed_silently(&mut self) -> Result<(), String> {
        let received = self.wait_closed()?;
        if received.is_empty() {
            Ok(())
        } else {
            Err(format!("the server closed, but sent {} first", hex(&received)))
        }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), String> {
        self.send(&option_bytes(option, data))
    }

    fn option_reply(&mut self, what: &str) -> Result<OptionReply, String> {
        let header = self.recv(20, what)?;
        let magic = be64(&header[0..8]);
        if magic != OPT_REPLY_MAGIC {
            return Err(format!(
                "{what}: option reply magic {magic:#x} is not {OPT_REPLY_MAGIC:#x} (header {})",
                hex(&header)
            ));
        }
        let length = be32(&header[16..20]);
        if length > 65536 {
            return Err(format!("{what}: option reply announces {length} bytes of data"));
        }
        let data = self.recv(length as usize, what)?;
        Ok(OptionReply { option: be32(&header[8..12]), reply_type: be32(&header[12..16]), data })
    }

    /// The next option reply must answer `option` with `reply_type`.
    fn expect_option_reply(
        &mut self,
        option: u32,
        reply_type: u32,
        what: &str,
    ) -> Result<OptionReply, String> {
        let reply = self.option_reply(what)?;
        if reply.option != option || reply.reply_type != reply_type {
            return Err(format!(
                "{what}: expected {} to option {option}, got {} to option {} (data {:?})",
                reply_type_name(reply_type),
                reply_type_name(reply.reply_type),
                reply.option,
                String::from_utf8_lossy(&reply.data)
            ));
        }
        Ok(reply)
    }

    /// Sends NBD_OPT_GO for `name` and checks the export information and the ACK; returns
    /// the transmission flags.
    fn go(&mut self, name: &[u8]) -> Result<u16, String> {
        self.send_option(OPT_GO, &info_request(name))?;
        self.expect_export_info(OPT_GO)
    }

    /// Replies to a successful NBD_OPT_INFO / NBD_OPT_GO: NBD_INFO_EXPORT with the disk's
    /// size and writable flags (maybe other information too), then an empty ACK. Returns the
    /// transmission flags.
    fn expect_export_info(&mut self, option: u32) -> Result<u16, String> {
        let what = format!("the reply to option {option}");
        let mut export = None;
        for _ in 0..8 {
            let reply = self.option_reply(&what)?;
            if reply.option != option {
                return Err(format!("{what}: a reply names option {}", reply.option));
            }
            match reply.reply_type {
                REP_INFO if reply.data.len() >= 2 && be16(&reply.data) == INFO_EXPORT => {
                    if reply.data.len() != 12 {
                        return Err(format!(
                            "{what}: NBD_INFO_EXPORT has {} bytes, not 12",
                            reply.data.len()
                        ));
                    }
                    let flags = be16(&reply.data[10..12]);
                    if flags & FLAG_HAS_FLAGS == 0 || flags & FLAG_READ_ONLY != 0 {
                        return Err(format!("{what}: transmission flags {flags:#06x}"));
                    }
                    export = Some((be64(&reply.data[2..10]), flags));
                }
                REP_INFO => {}
                REP_ACK if reply.data.is_empty() => {
                    return match export {
                        Some((DISK_BYTES, flags)) => Ok(flags),
                        Some((other, _)) => {
                            Err(format!("{what}: export size {other}, not {DISK_BYTES}"))
                        }
                        None => Err(format!("{what}: ACK without NBD_INFO_EXPORT")),
                    };
                }
                other => {
                    return Err(format!(
                        "{what}: unexpected {} (data {:?})",
                        reply_type_name(other),
                        String::from_utf8_lossy(&reply.data)
                    ))
                }
            }
        }
        Err(format!("{what}: 8 replies without an ACK"))
    }

    /// Reads one simple reply header: (error, handle).
    fn simple_reply(&mut self, what: &str) -> Result<(u32, u64), String> {
        let header = self.recv(16, what)?;
        let magic = be32(&header[0..4]);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(format!(
                "{what}: reply magic {magic:#010x} is not the simple reply magic \
                 {SIMPLE_REPLY_MAGIC:#010x} (header {})",
                hex(&header)
            ));
        }
        Ok((be32(&header[4..8]), be64(&header[8..16])))
    }

    /// Reads one reply per `(handle, want)`, in any order (the protocol allows reordering).
    fn expect_replies(&mut self, wants: &[(u64, Want)], what: &str) -> Result<(), String> {
        let mut pending: Vec<&(u64, Want)> = wants.iter().collect();
        while !pending.is_empty() {
            let (error, got_handle) = self.simple_reply(what)?;
            let Some(index) = pending.iter().position(|(h, _)| *h == got_handle) else {
                return Err(format!(
                    "{what}: reply (error {}) with handle {got_handle:#018x}, expected one of {}",
                    errno_name(error),
                    pending
                        .iter()
                        .map(|(h, _)| format!("{h:#018x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let (_, want) = pending.remove(index);
            match want {
                Want::Error(expected) if error == *expected => {}
                Want::Error(expected) => {
                    return Err(format!(
                        "{what}: handle {got_handle:#018x} answered {}, expected {}",
                        errno_name(error),
                        errno_name(*expected)
                    ))
                }
                Want::Data(data) => {
                    if error != 0 {
                        return Err(format!(
                            "{what}: read with handle {got_handle:#018x} failed with {}",
                            errno_name(error)
                        ));
                    }
                    let got = self.recv(data.len(), what)?;
                    if got != *data {
                        return Err(format!(
                            "{what}: read with handle {got_handle:#018x} returned other data: {}",
                            first_difference(data, &got)
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn expect_reply(&mut self, handle: u64, want: Want, what: &str) -> Result<(), String> {
        self.expect_replies(&[(handle, want)], what)
    }

    /// Sends one request (with its payload, if any) and checks its reply.
    fn call(&mut self, bytes: &[u8], handle: u64, want: Want, what: &str) -> Result<(), String> {
        self.send(bytes)?;
        self.expect_reply(handle, want, what)
    }

    /// A read of `expected[offset..offset + len]` that must succeed with exactly those bytes.
    fn check_read(
        &mut self,
        handle: u64,
        expected: &[u8],
        offset: u64,
        len: u32,
        what: &str,
    ) -> Result<(), String> {
        let start = usize::try_from(offset).expect("offset fits usize");
        let data = expected[start..start + len as usize].to_vec();
        self.call(&request(0, CMD_READ, handle, offset, len), handle, Want::Data(data), what)
    }

    /// The structured reply chunks of one read, up to the one flagged DONE: the data, or the
    /// error value of an error chunk.
    fn structured_read(
        &mut self,
        handle: u64,
        offset: u64,
        len: usize,
        what: &str,
    ) -> Result<Result<Vec<u8>, u32>, String> {
        let mut data = vec![0u8; len];
        let mut covered = 0usize;
        let mut error = None;
        for _ in 0..4096 {
            let header = self.recv(20, what)?;
            let magic = be32(&header[0..4]);
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(format!(
                    "{what}: chunk magic {magic:#010x} is not {STRUCTURED_REPLY_MAGIC:#010x} \
                     (header {})",
                    hex(&header)
                ));
            }
            let flags = be16(&header[4..6]);
            let kind = be16(&header[6..8]);
            let got_handle = be64(&header[8..16]);
            let length = be32(&header[16..20]) as usize;
            if got_handle != handle {
                return Err(format!(
                    "{what}: chunk for handle {got_handle:#018x}, not {handle:#018x}"
                ));
            }
            if length > len + 65536 {
                return Err(format!("{what}: chunk of {length} bytes for a {len}-byte read"));
            }
            let payload = self.recv(length, what)?;
            match kind {
                REPLY_TYPE_NONE if length == 0 => {}
                REPLY_TYPE_OFFSET_DATA if length > 8 => {
                    let at = be64(&payload[..8]).checked_sub(offset).map(|at| at as usize);
                    let Some(at) =
                        at.filter(|at| at.checked_add(length - 8).is_some_and(|end| end <= len))
                    else {
                        return Err(format!("{what}: data chunk outside the request"));
                    };
                    data[at..at + length - 8].copy_from_slice(&payload[8..]);
                    covered += length - 8;
                }
                REPLY_TYPE_OFFSET_HOLE if length == 12 => {
                    let hole = be32(&payload[8..12]) as usize;
                    let at = be64(&payload[..8]).checked_sub(offset).map(|at| at as usize);
                    let Some(at) =
                        at.filter(|at| at.checked_add(hole).is_some_and(|end| end <= len))
                    else {
                        return Err(format!("{what}: hole chunk outside the request"));
                    };
                    data[at..at + hole].fill(0);
                    covered += hole;
                }
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET if length >= 6 => {
                    let message_len = usize::from(be16(&payload[4..6]));
                    let extra = if kind == REPLY_TYPE_ERROR_OFFSET { 8 } else { 0 };
                    if 6 + message_len + extra != length {
                        return Err(format!(
                            "{what}: error chunk of {length} bytes with a {message_len}-byte \
                             message"
                        ));
                    }
                    error = Some(be32(&payload[..4]));
                }
                _ => {
                    return Err(format!(
                        "{what}: malformed chunk type {kind:#06x} of {length} bytes: {}",
                        hex(&payload)
                    ))
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return match error {
                    Some(errno) => Ok(Err(errno)),
                    None if covered == len => Ok(Ok(data)),
                    None => Err(format!("{what}: chunks cover {covered} of {len} bytes")),
                };
            }
        }
        Err(format!("{what}: 4096 chunks without DONE"))
    }
}

// ------------------------------------------------------------------------------------------
// Test setup and the end checks

/// A cluster, an agent serving `d0` through its tap, and what `d0` must hold.
struct Setup {
    // Field order is drop order: the agent stops before the cluster removes its directory.
    agent: Server,
    cluster: Cluster,
    source: PathBuf,
    /// The source as it must be: its initial data plus every acknowledged write.
    expected: Vec<u8>,
}

impl Setup {
    fn start(label: &str, seed: u64) -> Setup {
        let cluster = Cluster::start(label);
        let source = cluster.dir.join("d0.img");
        let expected = make_source(&source, seed);
        let mut agent = Server::agent_tap(
            cluster.relay.addr(),
            &[(DISK, &source)],
            &cluster.dir.join("agent-state"),
            &cluster.dir.subdir("logs"),
            &[],
        );
        agent.start();
        cluster.wait_disk_state(DISK, "protected", Duration::from_secs(60));
        agent.assert_running("after the initial sync");
        Setup { agent, cluster, source, expected }
    }

    fn addr(&self) -> SocketAddr {
        self.agent.addr()
    }

    /// The end of every test: the agent still runs, `nbdinfo` works, the source holds exactly
    /// the acknowledged writes, the replica converges to it, and the agent stops cleanly.
    /// Panics with every case failure and the agent log.
    fn finish(&mut self, mut failures: Vec<String>, context: &str) {
        if self.agent.is_running() {
            if let Err(error) = self.nbdinfo_size() {
                failures.push(format!("nbdinfo after the hostile clients: {error}"));
            }
            if let Err(error) = self.source_as_expected() {
                failures.push(format!("source after the hostile clients: {error}"));
            }
            if let Err(error) = self.replica_converges() {
                failures.push(format!("replica after the hostile clients: {error}"));
            }
        } else {
            failures.push(format!("the agent is not running: {}", self.agent.liveness()));
        }
        if !failures.is_empty() {
            panic!(
                "{context}: {} failure(s):\n  - {}\n  agent ({}) log:\n{}\n{}",
                failures.len(),
                failures.join("\n  - "),
                self.agent.liveness(),
                tail(&self.agent.log(), 60),
                self.cluster.diagnostics()
            );
        }
        match self.agent.terminate(Duration::from_secs(30)) {
            Ok(status) if status.success() => {}
            Ok(status) => panic!(
                "{context}: the agent exited with {status} on SIGTERM after the hostile \
                 clients\n  log:\n{}",
                tail(&self.agent.log(), 60)
            ),
            Err(error) => panic!("{context}: {error}"),
        }
    }

    /// `nbdinfo --size nbd://ADDR` must print the disk size.
    fn nbdinfo_size(&self) -> Result<(), String> {
        let args: Vec<OsString> = vec!["--size".into(), format!("nbd://{}", self.addr()).into()];
        let logs = self.cluster.dir.subdir("logs");
        let finished = Running::spawn_program(&tool("nbdinfo"), &args, &logs, "nbdinfo")
            .wait(Duration::from_secs(60))?;
        if !finished.status.success() || finished.stdout.trim() != DISK_BYTES.to_string() {
            return Err(format!("expected it to print {DISK_BYTES}\n{}", finished.describe()));
        }
        Ok(())
    }

    fn source_as_expected(&self) -> Result<(), String> {
        let data = fs::read(&self.source).map_err(|e| format!("read source: {e}"))?;
        if data == self.expected {
            Ok(())
        } else {
            Err(format!(
                "it does not hold exactly the acknowledged writes: {}",
                first_difference(&self.expected, &data)
            ))
        }
    }

    fn replica_converges(&self) -> Result<(), String> {
        let replica = self.cluster.replica(DISK);
        crate::harness::replica_converges(&self.source, &replica, CONVERGE_TIMEOUT).map_err(
            |error| format!("not identical to the source after {CONVERGE_TIMEOUT:?}: {error}"),
        )
    }
}

/// Creates the 16 MiB source (sparse, with random data at the start, in the middle and at
/// the end, so a rejected write near the end would show) and returns its contents.
fn make_source(path: &Path, seed: u64) -> Vec<u8> {
    let mut expected = vec![0u8; DISK_BYTES as usize];
    let mut rng = Rng::new(seed);
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(DISK_BYTES).expect("set_len");
    drop(file);
    for (start, len) in [(0, MIB), (8 * MIB, 256 * KIB), (DISK_BYTES - 64 * KIB, 64 * KIB)] {
        let range = start as usize..(start + len) as usize;
        rng.fill(&mut expected[range.clone()]);
        write_at(path, start, &expected[range]);
    }
    expected
}

/// Runs cases one after another, collecting failures so every case runs before the test
/// fails; stops once the agent has died.
struct Cases<'a> {
    agent: &'a mut Server,
    failures: Vec<String>,
}

impl Cases<'_> {
    fn run(&mut self, name: &str, case: impl FnOnce() -> Result<(), String>) {
        if !self.agent.is_running() {
            return;
        }
        let started = Instant::now();
        match case() {
            Ok(()) => eprintln!("ok   {name} ({:.2?})", started.elapsed()),
            Err(error) => {
                eprintln!("FAIL {name}: {error}");
                self.failures.push(format!("{name}: {error}"));
            }
        }
        // Give a crash caused by the case a moment to show.
        std::thread::sleep(Duration::from_millis(10));
        if !self.agent.is_running() {
            self.failures
                .push(format!("the agent died during {name:?}: {}", self.agent.liveness()));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Handshake phase

#[test]
fn tap_survives_bad_handshakes() {
    if !require_tools("tap_survives_bad_handshakes", &["cmp", "nbdinfo"]) {
        return;
    }
    let mut setup = Setup::start("nbd-badhandshake", 0x4e42_0001);
    let addr = setup.addr();
    let expected = setup.expected.clone();
    // A client that connected and never said anything: it must not block anyone.
    let idle = Conn::connect(addr).expect("idle connection");
    // A client in transmission across all cases: the others must not disturb it.
    let mut bystander = Conn::transmission(addr).unwrap_or_else(|e| {
        panic!(
            "a valid GO before the hostile clients failed: {e}\n{}",
            tail(&setup.agent.log(), 60)
        )
    });
    let mut cases = Cases { agent: &mut setup.agent, failures: Vec::new() };

    for flags in [0u32, CLIENT_NO_ZEROES, 0x8000_0001, 0x0000_0005, 0xffff_ffff] {
        cases.run(&format!("client flags {flags:#010x} are refused by closing"), || {
            let mut conn = Conn::negotiating(addr, flags)?;
            conn.expect_closed_silently()
        });
    }
    cases.run("an HTTP request instead of client flags is refused by closing", || {
        let mut conn = Conn::greeted(addr)?;
        conn.send_lenient(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        conn.expect_closed_silently()
    });
    cases.run("a bad option magic closes the connection", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE)?;
        let mut bytes = b"IHAVEOPX".to_vec();
        bytes.extend_from_slice(&OPT_GO.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        conn.send_lenient(&bytes);
        conn.expect_closed_silently()
    });
    cases.run("a transmission request before GO closes the connection", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.send_lenient(&request(0, CMD_READ, handle(1), 0, 512));
        conn.expect_closed_silently()
    });
    cases.run("unknown options get ERR_UNSUP, then GO works on the same connection", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        let mut junk = vec![0u8; OPTION_DATA_MAX as usize];
        Rng::new(0x0b7).fill(&mut junk);
        conn.send_option(OPT_EXTENDED_HEADERS, &[])?;
        conn.expect_option_reply(OPT_EXTENDED_HEADERS, REP_ERR_UNSUP, "NBD_OPT_EXTENDED_HEADERS")?;
        conn.send_option(0x1234, &junk[..100])?;
        conn.expect_option_reply(0x1234, REP_ERR_UNSUP, "option 0x1234 with 100 bytes")?;
        // Exactly at the data limit: read and answered as unknown, not as too big.
        conn.send_option(0xffff_ffff, &junk)?;
        conn.expect_option_reply(0xffff_ffff, REP_ERR_UNSUP, "option 0xffffffff, 4096 bytes")?;
        conn.go(b"")?;
        conn.check_read(handle(2), &expected, 0, 4096, "read after GO")
    });
    cases.run("malformed option data gets ERR_INVALID, the connection continues", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.send_option(OPT_LIST, b"x")?;
        conn.expect_option_reply(OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST with data")?;
        // The name length points past the end of the data.
        conn.send_option(OPT_GO, b"\0\0\0\x09d0\0\0")?;
        conn.expect_option_reply(OPT_GO, REP_ERR_INVALID, "GO with a truncated name")?;
        // A trailing byte after the information requests.
        conn.send_option(OPT_GO, b"\0\0\0\0\0\0!")?;
        conn.expect_option_reply(OPT_GO, REP_ERR_INVALID, "GO with a trailing byte")?;
        conn.send_option(OPT_LIST, &[])?;
        let server = conn.expect_option_reply(OPT_LIST, REP_SERVER, "NBD_OPT_LIST")?;
        if server.data != [&2u32.to_be_bytes()[..], DISK.as_bytes()].concat() {
            return Err(format!("NBD_OPT_LIST lists {}", hex(&server.data)));
        }
        conn.expect_option_reply(OPT_LIST, REP_ACK, "end of NBD_OPT_LIST")?;
        conn.go(b"")?;
        conn.check_read(handle(3), &expected, 512, 512, "read after GO")
    });
    cases.run("oversize option data gets ERR_TOO_BIG, the connection continues", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        let mut big = vec![0u8; OPTION_DISCARD_MAX as usize];
        Rng::new(0xb16).fill(&mut big);
        conn.send_option(OPT_GO, &big[..OPTION_DATA_MAX as usize + 1])?;
        conn.expect_option_reply(OPT_GO, REP_ERR_TOO_BIG, "GO with 4097 bytes of data")?;
        // Exactly the most the server discards.
        conn.send_option(0x1234, &big)?;
        conn.expect_option_reply(0x1234, REP_ERR_TOO_BIG, "option 0x1234 with 1 MiB of data")?;
        conn.go(b"")?;
        conn.check_read(handle(4), &expected, DISK_BYTES - 4096, 4096, "read after GO")
    });
    for length in [OPTION_DISCARD_MAX + 1, u32::MAX] {
        cases.run(&format!("option data of {length} bytes closes the connection"), || {
            let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
            conn.send_lenient(&option_header(OPT_GO, length));
            conn.send_lenient(&vec![0x5a; 64 * 1024]);
            conn.expect_closed_silently()
        });
    }
    cases.run("GO and INFO on an unknown export get ERR_UNKNOWN, the connection continues", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.send_option(OPT_GO, &info_request(b"nosuchdisk"))?;
        conn.expect_option_reply(OPT_GO, REP_ERR_UNKNOWN, "GO nosuchdisk")?;
        conn.send_option(OPT_INFO, &info_request(b"d0\0"))?;
        conn.expect_option_reply(OPT_INFO, REP_ERR_UNKNOWN, "INFO \"d0\\0\"")?;
        conn.send_option(OPT_INFO, &info_request(DISK.as_bytes()))?;
        conn.expect_export_info(OPT_INFO)?;
        conn.go(DISK.as_bytes())?;
        conn.check_read(handle(5), &expected, 8 * MIB, 65536, "read after GO d0")
    });
    for no_zeroes in [true, false] {
        cases.run(&format!("EXPORT_NAME d0 (no zeroes: {no_zeroes}) enters transmission"), || {
            let flags = if no_zeroes {
                CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES
            } else {
                CLIENT_FIXED_NEWSTYLE
            };
            let mut conn = Conn::negotiating(addr, flags)?;
            conn.export_name(DISK.as_bytes(), no_zeroes)?;
            conn.check_read(handle(11), &expected, 4096, 4096, "read after EXPORT_NAME")
        });
    }
    cases.run("NBD_FLAG_SEND_DF is advertised only with structured replies", || {
        // Specification, transmission flags: the server "MUST leave this flag clear if
        // structured replies have not been negotiated".
        let mut go = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        let go_flags = go.go(b"")?;
        let mut old = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        let old_flags = old.export_name(b"", true)?;
        let mut problems = Vec::new();
        if go_flags & FLAG_SEND_DF != 0 {
            problems.push(format!("GO without structured replies: flags {go_flags:#06x}"));
        }
        if old_flags & FLAG_SEND_DF != 0 {
            problems
                .push(format!("EXPORT_NAME without structured replies: flags {old_flags:#06x}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "NBD_FLAG_SEND_DF ({FLAG_SEND_DF:#06x}) is set although structured replies \
                 were not negotiated ({})",
                problems.join("; ")
            ))
        }
    });
    cases.run("EXPORT_NAME of an unknown export closes the connection", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.send_lenient(&option_bytes(OPT_EXPORT_NAME, b"nosuchdisk"));
        conn.expect_closed_silently()
    });
    cases.run("ABORT is acknowledged, then the connection is closed", || {
        let mut conn = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        conn.send_option(OPT_ABORT, &[])?;
        conn.expect_option_reply(OPT_ABORT, REP_ACK, "ABORT")?;
        conn.expect_closed_silently()
    });
    cases.run("clients vanishing mid-handshake disturb no one", || {
        for _ in 0..10 {
            drop(Conn::connect(addr)?); // before reading the greeting
        }
        let mut two = Conn::greeted(addr)?;
        two.send(&[0, 0])?;
        drop(two);
        let mut half_header = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE)?;
        half_header.send(&IHAVEOPT.to_be_bytes())?;
        drop(half_header);
        let mut half_data = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE)?;
        half_data.send(&option_header(OPT_GO, 100))?;
        half_data.send(&[0; 10])?;
        let _ = half_data.stream.shutdown(Shutdown::Write);
        half_data.expect_closed_silently()?;
        let mut half_request = Conn::transmission(addr)?;
        half_request.send(&request(0, CMD_READ, handle(6), 0, 512)[..10])?;
        drop(half_request);
        bystander.check_read(handle(7), &expected, 4096, 4096, "read on the bystander")?;
        let mut fresh = Conn::transmission(addr)?;
        fresh.check_read(handle(8), &expected, 0, 512, "read on a new connection")
    });
    cases.run("40 refused clients in a row leave no connection slot taken", || {
        for n in 0..40 {
            let mut conn =
                Conn::negotiating(addr, 0xdead_beef).map_err(|e| format!("client {n}: {e}"))?;
            conn.expect_closed_silently().map_err(|e| format!("client {n}: {e}"))?;
        }
        let mut fresh = Conn::transmission(addr)?;
        fresh.check_read(handle(9), &expected, 0, 4096, "read on a new connection")
    });
    cases.run("the bystander connection still works", || {
        bystander.check_read(handle(10), &expected, 0, 65536, "read on the bystander")
    });
    let failures = cases.failures;
    setup.finish(failures, "tap_survives_bad_handshakes");
    drop(idle);
}

// ------------------------------------------------------------------------------------------
// Transmission phase

#[test]
fn tap_survives_bad_requests() {
    if !require_tools("tap_survives_bad_requests", &["cmp", "nbdinfo"]) {
        return;
    }
    let mut setup = Setup::start("nbd-badrequest", 0x4e42_0002);
    let addr = setup.addr();
    let mut expected = setup.expected.clone();
    let end = DISK_BYTES;
    let mut rng = Rng::new(0x4e42_0003);
    let mut cases = Cases { agent: &mut setup.agent, failures: Vec::new() };

    let mut conn = match Conn::transmission(addr) {
        Ok(conn) => conn,
        Err(error) => {
            cases.failures.push(format!("a valid GO failed: {error}"));
            let failures = cases.failures;
            setup.finish(failures, "tap_survives_bad_requests");
            return;
        }
    };
    cases.run("reads past the end get EINVAL, the connection continues", || {
        conn.call(
            &request(0, CMD_READ, handle(1), end - 512, 1024),
            handle(1),
            Want::Error(EINVAL),
            "read across the end",
        )?;
        conn.call(
            &request(0, CMD_READ, handle(2), end, 1),
            handle(2),
            Want::Error(EINVAL),
            "read at the end",
        )?;
        conn.call(
            &request(0, CMD_READ, handle(3), u64::MAX - 511, 1024),
            handle(3),
            Want::Error(EINVAL),
            "read wrapping past 2^64",
        )?;
        // No data may have followed the errors: the next reply is read right after them.
        conn.check_read(handle(4), &expected, end - 512, 512, "read of the last 512 bytes")
    });
    cases.run("writes past the end get ENOSPC, their payload is skipped", || {
        let mut payload = vec![0u8; 1024];
        rng.fill(&mut payload);
        conn.call(
            &write_request(0, handle(11), end - 512, &payload),
            handle(11),
            Want::Error(ENOSPC),
            "write across the end",
        )?;
        conn.call(
            &write_request(CMD_FLAG_FUA, handle(12), end, &payload[..1]),
            handle(12),
            Want::Error(ENOSPC),
            "write at the end",
        )?;
        conn.call(
            &write_request(0, handle(13), u64::MAX - 511, &payload),
            handle(13),
            Want::Error(ENOSPC),
            "write wrapping past 2^64",
        )?;
        conn.call(
            &request(0, CMD_WRITE_ZEROES, handle(14), end - 512, 1024),
            handle(14),
            Want::Error(ENOSPC),
            "write-zeroes across the end",
        )?;
        conn.call(
            &request(0, CMD_TRIM, handle(15), end - 512, 1024),
            handle(15),
            Want::Error(EINVAL),
            "trim across the end",
        )?;
        // Nothing of the refused writes reached the disk, and the stream is still in sync.
        conn.check_read(handle(16), &expected, end - 8192, 8192, "read of the last 8 KiB")
    });
    cases.run("zero-length reads and writes get EINVAL", || {
        conn.call(
            &request(0, CMD_WRITE, handle(21), 0, 0),
            handle(21),
            Want::Error(EINVAL),
            "zero-length write",
        )?;
        conn.call(
            &request(0, CMD_READ, handle(22), 0, 0),
            handle(22),
            Want::Error(EINVAL),
            "zero-length read",
        )?;
        conn.check_read(handle(23), &expected, 0, 512, "read after them")
    });
    cases.run("unknown commands and flags get EINVAL", || {
        conn.call(
            &request(0, 99, handle(31), 0, 0),
            handle(31),
            Want::Error(EINVAL),
            "command 99",
        )?;
        conn.call(
            &request(0, 0xffff, handle(32), 0, 0),
            handle(32),
            Want::Error(EINVAL),
            "command 0xffff",
        )?;
        conn.call(
            &request(1 << 9, CMD_READ, handle(33), 0, 512),
            handle(33),
            Want::Error(EINVAL),
            "read with flag bit 9",
        )?;
        // DF means something only with structured replies, which were not negotiated.
        conn.call(
            &request(CMD_FLAG_DF, CMD_READ, handle(34), 0, 512),
            handle(34),
            Want::Error(EINVAL),
            "read with DF, simple replies",
        )?;
        let mut payload = vec![0u8; 4096];
        rng.fill(&mut payload);
        conn.call(
            &write_request(1 << 9, handle(35), 12288, &payload),
            handle(35),
            Want::Error(EINVAL),
            "write with flag bit 9",
        )?;
        // Without a negotiated meta context there is nothing to report.
        conn.call(
            &request(0, CMD_BLOCK_STATUS, handle(36), 0, 4096),
            handle(36),
            Want::Error(EINVAL),
            "block status without a meta context",
        )?;
        conn.check_read(handle(37), &expected, 8192, 8192, "read after them")
    });
    cases.run("reads over 32 MiB get EINVAL", || {
        conn.call(
            &request(0, CMD_READ, handle(41), 0, 64 << 20),
            handle(41),
            Want::Error(EINVAL),
            "read of 64 MiB",
        )?;
        conn.call(
            &request(0, CMD_READ, handle(42), 0, PAYLOAD_MAX + 1),
            handle(42),
            Want::Error(EINVAL),
            "read of 32 MiB + 1",
        )?;
        conn.call(
            &request(0, CMD_READ, handle(43), 0, u32::MAX),
            handle(43),
            Want::Error(EINVAL),
            "read of 4 GiB - 1",
        )?;
        conn.check_read(handle(44), &expected, 0, 4096, "read after them")
    });
    cases.run("valid writes are applied and read back", || {
        let mut pattern = vec![0u8; 8192];
        rng.fill(&mut pattern);
        conn.call(
            &write_request(CMD_FLAG_FUA, handle(51), 4096, &pattern),
            handle(51),
            Want::Error(0),
            "FUA write of 8 KiB at 4096",
        )?;
        expected[4096..4096 + 8192].copy_from_slice(&pattern);
        conn.check_read(handle(52), &expected, 4096, 8192, "read back at 4096")?;
        let mut last = vec![0u8; 512];
        rng.fill(&mut last);
        let at = (end - 512) as usize;
        conn.call(
            &write_request(0, handle(53), end - 512, &last),
            handle(53),
            Want::Error(0),
            "write of the last 512 bytes",
        )?;
        expected[at..].copy_from_slice(&last);
        conn.call(
            &request(0, CMD_WRITE_ZEROES, handle(54), 8 * MIB + 4096, 65536),
            handle(54),
            Want::Error(0),
            "write-zeroes of 64 KiB at 8 MiB + 4096",
        )?;
        let zeroed = (8 * MIB + 4096) as usize;
        expected[zeroed..zeroed + 65536].fill(0);
        conn.call(&request(0, CMD_FLUSH, handle(55), 0, 0), handle(55), Want::Error(0), "flush")?;
        conn.call(
            &request(0, CMD_CACHE, handle(56), 0, 4096),
            handle(56),
            Want::Error(0),
            "cache",
        )?;
        conn.check_read(handle(57), &expected, end - 4096, 4096, "read back the end")?;
        conn.check_read(handle(58), &expected, 8 * MIB, 128 * 1024, "read back the zeroed range")
    });
    cases.run("pipelined good and bad requests each get their own reply", || {
        let mut pattern = vec![0u8; 5000];
        rng.fill(&mut pattern);
        let at = 2 * MIB + 100;
        let mut overflow = vec![0u8; 2048];
        rng.fill(&mut overflow);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&request(0, CMD_READ, handle(61), end, 512));
        bytes.extend_from_slice(&write_request(0, handle(62), at, &pattern));
        bytes.extend_from_slice(&write_request(0, handle(63), end - 1024, &overflow));
        bytes.extend_from_slice(&request(0, 99, handle(64), 0, 0));
        bytes.extend_from_slice(&request(0, CMD_WRITE, handle(65), 0, 0));
        bytes.extend_from_slice(&request(0, CMD_FLUSH, handle(66), 0, 0));
        bytes.extend_from_slice(&request(0, CMD_READ, handle(67), at, 5000));
        conn.send(&bytes)?;
        conn.expect_replies(
            &[
                (handle(61), Want::Error(EINVAL)),
                (handle(62), Want::Error(0)),
                (handle(63), Want::Error(ENOSPC)),
                (handle(64), Want::Error(EINVAL)),
                (handle(65), Want::Error(EINVAL)),
                (handle(66), Want::Error(0)),
                (handle(67), Want::Data(pattern.clone())),
            ],
            "pipelined requests",
        )?;
        let start = at as usize;
        expected[start..start + pattern.len()].copy_from_slice(&pattern);
        Ok(())
    });
    cases.run("structured replies: a read past the end gets an error chunk", || {
        let mut sr = Conn::negotiating(addr, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)?;
        sr.send_option(OPT_STRUCTURED_REPLY, &[])?;
        sr.expect_option_reply(OPT_STRUCTURED_REPLY, REP_ACK, "STRUCTURED_REPLY")?;
        sr.go(b"")?;
        for (n, offset, len) in [(71, end - 512, 1024u32), (72, 0, 64 << 20), (73, 0, 0)] {
            sr.send(&request(0, CMD_READ, handle(n), offset, len))?;
            let what = format!("structured read of {len} bytes at {offset}");
            match sr.structured_read(handle(n), offset, len as usize, &what)? {
                Err(EINVAL) => {}
                Err(errno) => {
                    return Err(format!("{what}: error {}, expected EINVAL", errno_name(errno)))
                }
                Ok(_) => return Err(format!("{what}: succeeded, expected EINVAL")),
            }
        }
        sr.send(&request(CMD_FLAG_DF, CMD_READ, handle(74), 4096, 16384))?;
        let want = &expected[4096..4096 + 16384];
        match sr.structured_read(handle(74), 4096, 16384, "structured read with DF")? {
            Ok(data) if data == want => Ok(()),
            Ok(data) => Err(format!(
                "structured read returned other data: {}",
                first_difference(want, &data)
            )),
            Err(errno) => Err(format!("structured read failed with {}", errno_name(errno))),
        }
    });
    cases.run("the first connection still works after all that", || {
        conn.check_read(handle(81), &expected, 0, 1 << 20, "read of the first MiB")
    });

    // Cases that end their connection.
    for length in [64u32 << 20, u32::MAX] {
        cases.run(&format!("a write header claiming {length} bytes closes the connection"), || {
            let mut bad = Conn::transmission(addr)?;
            bad.send_lenient(&request(0, CMD_WRITE, handle(91), 0, length));
            let received = bad.wait_closed()?;
            // Closing at once is what the tap does; an error reply before closing is also
            // correct. Anything else is not.
            if received.is_empty()
                || (received.len() == 16
                    && be32(&received) == SIMPLE_REPLY_MAGIC
                    && be32(&received[4..]) != 0
                    && be64(&received[8..]) == handle(91))
            {
                Ok(())
            } else {
                Err(format!("the server closed, but sent {} first", hex(&received)))
            }
        });
    }
    let bad_magics: [(&str, Vec<u8>); 4] = [
        (
            "request magic 0x25609514",
            request_with_magic(REQUEST_MAGIC + 1, 0, CMD_READ, handle(92), 0, 512),
        ),
        ("an all-zero request", vec![0; 28]),
        (
            "the simple reply magic",
            request_with_magic(SIMPLE_REPLY_MAGIC, 0, CMD_READ, handle(93), 0, 512),
        ),
        ("an option after GO", option_bytes(OPT_GO, &info_request(b"").repeat(2))),
    ];
    for (name, bytes) in bad_magics {
        cases.run(&format!("{name} closes the connection"), || {
            let mut bad = Conn::transmission(addr)?;
            bad.send_lenient(&bytes);
            bad.expect_closed_silently()
        });
    }
    cases.run("NBD_CMD_DISC closes the connection without a reply", || {
        let mut bye = Conn::transmission(addr)?;
        bye.send(&request(0, CMD_DISC, handle(94), 0, 0))?;
        bye.expect_closed_silently()
    });
    cases.run("a write whose client vanishes mid-payload is not applied", || {
        let mut cut = Conn::transmission(addr)?;
        let mut bytes = request(0, CMD_WRITE, handle(95), 65536, 4096);
        bytes.extend_from_slice(&[0xee; 100]);
        cut.send(&bytes)?;
        let _ = cut.stream.shutdown(Shutdown::Write);
        cut.expect_closed_silently()?;
        // `expected` is unchanged there: the final source check covers it.
        conn.check_read(handle(96), &expected, 65536, 4096, "read of the cut write's range")
    });
    cases.run("a new connection still works", || {
        let mut fresh = Conn::transmission(addr)?;
        fresh.check_read(handle(97), &expected, 0, 1 << 20, "read of the first MiB")?;
        conn.check_read(handle(98), &expected, 4096, 8192, "read on the first connection")
    });
    let failures = cases.failures;
    drop(conn);
    setup.expected = expected;
    setup.finish(failures, "tap_survives_bad_requests");
}
