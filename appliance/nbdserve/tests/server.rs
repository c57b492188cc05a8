//! Drives the server with hand-built NBD requests over socket pairs and real listeners,
//! against an in-memory backend.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nbd::consts::*;
use nbdserve::{Backend, ListenAddr, ServeError, Server};

const SIZE: usize = 1 << 20;
const BLOCK: usize = 4096;

#[derive(Debug)]
struct MemExport {
    name: String,
    writable: bool,
    data: Mutex<Vec<u8>>,
}

/// Exports held in memory; counts flushes and FUA syncs.
#[derive(Debug)]
struct Mem {
    exports: Vec<MemExport>,
    flushes: AtomicUsize,
    syncs: AtomicUsize,
}

impl Mem {
    fn new(exports: &[(&str, bool)]) -> Arc<Mem> {
        Arc::new(Mem {
            exports: exports
                .iter()
                .map(|&(name, writable)| MemExport {
                    name: name.to_string(),
                    writable,
                    data: Mutex::new(vec![0; SIZE]),
                })
                .collect(),
            flushes: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
        })
    }

    fn bytes(&self, export: usize, offset: usize, len: usize) -> Vec<u8> {
        self.exports[export].data.lock().unwrap()[offset..offset + len].to_vec()
    }

    fn fill(&self, export: usize, offset: usize, bytes: &[u8]) {
        self.exports[export].data.lock().unwrap()[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
    }
}

impl Backend for Mem {
    fn export_count(&self) -> usize {
        self.exports.len()
    }

    fn export_name(&self, export: usize) -> &str {
        &self.exports[export].name
    }

    fn export_size(&self, _export: usize) -> u64 {
        SIZE as u64
    }

    fn writable(&self, export: usize) -> bool {
        self.exports[export].writable
    }

    fn read(&self, export: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = offset as usize;
        buf.copy_from_slice(&self.exports[export].data.lock().unwrap()[offset..][..buf.len()]);
        Ok(())
    }

    fn write(&self, export: usize, offset: u64, data: Vec<u8>) -> io::Result<()> {
        assert!(self.exports[export].writable, "the server let a write reach a read-only export");
        self.fill(export, offset as usize, &data);
        Ok(())
    }

    fn zero(&self, export: usize, offset: u64, len: u64) -> io::Result<()> {
        assert!(self.exports[export].writable, "the server let a zero reach a read-only export");
        self.fill(export, offset as usize, &vec![0; len as usize]);
        Ok(())
    }

    fn flush(&self, _export: usize) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn sync_data(&self, _export: usize) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Data where a 4 KiB block holds a non-zero byte.
    fn data_ranges(
        &self,
        export: usize,
        offset: u64,
        len: u64,
        ranges_max: usize,
    ) -> io::Result<Vec<(u64, u64)>> {
        let data = self.exports[export].data.lock().unwrap();
        let end = (offset + len).min(SIZE as u64);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut block = offset / BLOCK as u64 * BLOCK as u64;
        while block < end {
            let start = block.max(offset);
            let stop = (block + BLOCK as u64).min(end);
            if data[start as usize..stop as usize].iter().any(|&b| b != 0) {
                let full = ranges.len() == ranges_max;
                match ranges.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += stop - start,
                    _ if full => break,
                    _ => ranges.push((start, stop - start)),
                }
            }
            block += BLOCK as u64;
        }
        Ok(ranges)
    }
}

// ---- the client side, built from the specification's byte layouts ----

fn start_pair(backend: &Arc<Mem>) -> (UnixStream, JoinHandle<Result<(), ServeError>>) {
    let (client, mut server) = UnixStream::pair().unwrap();
    let backend = Arc::clone(backend);
    let thread =
        std::thread::spawn(move || nbdserve::serve_connection(&mut server, &*backend, "test"));
    (client, thread)
}

fn read_array<const N: usize>(s: &mut impl Read) -> [u8; N] {
    let mut out = [0; N];
    s.read_exact(&mut out).unwrap();
    out
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Reads the greeting and answers fixed newstyle, no zeroes.
fn greet(s: &mut (impl Read + Write)) {
    let greeting: [u8; 18] = read_array(s);
    assert_eq!(u64_at(&greeting, 0), NBDMAGIC);
    assert_eq!(u64_at(&greeting, 8), IHAVEOPT);
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).unwrap();
}

fn send_option(s: &mut impl Write, option: u32, data: &[u8]) {
    let mut out = Vec::new();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out).unwrap();
}

/// (reply type, data) of one option reply to `option`.
fn option_reply(s: &mut impl Read, option: u32) -> (u32, Vec<u8>) {
    let header: [u8; 20] = read_array(s);
    assert_eq!(u64_at(&header, 0), REPLY_MAGIC_OPT);
    assert_eq!(u32_at(&header, 8), option);
    let mut data = vec![0; u32_at(&header, 16) as usize];
    s.read_exact(&mut data).unwrap();
    (u32_at(&header, 12), data)
}

fn name_and_infos(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        data.extend_from_slice(&info.to_be_bytes());
    }
    data
}

/// `NBD_OPT_GO`: the export's (size, transmission flags), or the error reply type.
fn go(s: &mut (impl Read + Write), name: &str) -> Result<(u64, u16), u32> {
    send_option(s, OPT_GO, &name_and_infos(name, &[INFO_BLOCK_SIZE]));
    let mut export = None;
    loop {
        let (reply, data) = option_reply(s, OPT_GO);
        match reply {
            REP_ACK => return Ok(export.expect("an INFO_EXPORT before the ACK")),
            REP_INFO if u16_at(&data, 0) == INFO_EXPORT => {
                export = Some((u64_at(&data, 2), u16_at(&data, 10)));
            }
            REP_INFO => {}
            error => return Err(error),
        }
    }
}

fn structured_with_allocation(s: &mut (impl Read + Write), name: &str) {
    send_option(s, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(option_reply(s, OPT_STRUCTURED_REPLY).0, REP_ACK);
    let mut data = Vec::new();
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    data.extend_from_slice(BASE_ALLOCATION.as_bytes());
    send_option(s, OPT_SET_META_CONTEXT, &data);
    let (reply, context) = option_reply(s, OPT_SET_META_CONTEXT);
    assert_eq!(reply, REP_META_CONTEXT);
    assert_eq!(&context[4..], BASE_ALLOCATION.as_bytes());
    assert_eq!(option_reply(s, OPT_SET_META_CONTEXT).0, REP_ACK);
}

fn request(s: &mut impl Write, flags: u16, command: u16, handle: u64, offset: u64, len: u32) {
    let mut out = Vec::new();
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    s.write_all(&out).unwrap();
}

/// A simple reply's error value, checking the handle.
fn simple_reply(s: &mut impl Read, handle: u64) -> u32 {
    let reply: [u8; 16] = read_array(s);
    assert_eq!(u32_at(&reply, 0), SIMPLE_REPLY_MAGIC);
    assert_eq!(u64_at(&reply, 8), handle);
    u32_at(&reply, 4)
}

fn write(s: &mut (impl Read + Write), flags: u16, handle: u64, offset: u64, data: &[u8]) -> u32 {
    request(s, flags, CMD_WRITE, handle, offset, data.len() as u32);
    s.write_all(data).unwrap();
    simple_reply(s, handle)
}

fn read(s: &mut (impl Read + Write), handle: u64, offset: u64, len: u32) -> Vec<u8> {
    request(s, 0, CMD_READ, handle, offset, len);
    assert_eq!(simple_reply(s, handle), 0);
    let mut data = vec![0; len as usize];
    s.read_exact(&mut data).unwrap();
    data
}

fn disconnect(mut s: UnixStream, server: JoinHandle<Result<(), ServeError>>) {
    request(&mut s, 0, CMD_DISC, 0, 0, 0);
    server.join().unwrap().expect("a clean disconnect");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

#[test]
fn go_read_write_flush_and_fua() {
    let mem = Mem::new(&[("d0", true), ("d1", true)]);
    mem.fill(1, 0, &pattern(8192, 7));
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    let (size, flags) = go(&mut s, "d1").unwrap();
    assert_eq!(size, SIZE as u64);
    let expected = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN
        | FLAG_SEND_CACHE;
    assert_eq!(flags, expected, "flags {flags:#x}");

    assert_eq!(read(&mut s, 1, 0, 8192), pattern(8192, 7));
    let data = pattern(5000, 3);
    assert_eq!(write(&mut s, 0, 2, 12345, &data), 0);
    assert_eq!(mem.bytes(1, 12345, 5000), data);
    assert_eq!(mem.bytes(0, 12345, 5000), vec![0; 5000], "export 0 untouched");
    assert_eq!(read(&mut s, 3, 12345, 5000), data);
    assert_eq!(mem.syncs.load(Ordering::SeqCst), 0);
    assert_eq!(write(&mut s, CMD_FLAG_FUA, 4, 0, &data), 0);
    assert_eq!(mem.syncs.load(Ordering::SeqCst), 1, "FUA syncs");

    request(&mut s, 0, CMD_WRITE_ZEROES, 5, 12345, 100);
    assert_eq!(simple_reply(&mut s, 5), 0);
    assert_eq!(mem.bytes(1, 12345, 100), vec![0; 100]);

    request(&mut s, 0, CMD_FLUSH, 6, 0, 0);
    assert_eq!(simple_reply(&mut s, 6), 0);
    assert_eq!(mem.flushes.load(Ordering::SeqCst), 1);
    disconnect(s, server);
}

#[test]
fn empty_name_selects_the_first_export_and_list_names_all() {
    let mem = Mem::new(&[("d0", true), ("d1", false)]);
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    send_option(&mut s, OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (reply, data) = option_reply(&mut s, OPT_LIST);
        if reply == REP_ACK {
            break;
        }
        assert_eq!(reply, REP_SERVER);
        names.push(String::from_utf8(data[4..].to_vec()).unwrap());
    }
    assert_eq!(names, ["d0", "d1"]);
    let (_, flags) = go(&mut s, "").unwrap();
    assert_eq!(flags & FLAG_READ_ONLY, 0, "export 0 is writable");
    disconnect(s, server);
}

#[test]
fn block_status_reports_holes_and_data() {
    let mem = Mem::new(&[("d0", true)]);
    mem.fill(0, 3 * BLOCK, &pattern(2 * BLOCK, 1));
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    structured_with_allocation(&mut s, "d0");
    let (_, flags) = go(&mut s, "d0").unwrap();
    assert_ne!(flags & FLAG_SEND_DF, 0, "DF with structured replies");

    request(&mut s, 0, CMD_BLOCK_STATUS, 9, 0, 8 * BLOCK as u32);
    let header: [u8; 20] = read_array(&mut s);
    assert_eq!(u32_at(&header, 0), STRUCTURED_REPLY_MAGIC);
    assert_eq!(u16_at(&header, 4), REPLY_FLAG_DONE);
    assert_eq!(u16_at(&header, 6), REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(u64_at(&header, 8), 9);
    let mut payload = vec![0; u32_at(&header, 16) as usize];
    s.read_exact(&mut payload).unwrap();
    assert_eq!(u32_at(&payload, 0), 1, "the base:allocation context id");
    let extents: Vec<(u32, u32)> =
        payload[4..].chunks(8).map(|extent| (u32_at(extent, 0), u32_at(extent, 4))).collect();
    let hole = STATE_HOLE | STATE_ZERO;
    let block = BLOCK as u32;
    assert_eq!(extents, [(3 * block, hole), (2 * block, 0), (3 * block, hole)]);

    // A structured read: one data chunk with the offset.
    request(&mut s, 0, CMD_READ, 10, 3 * BLOCK as u64, 16);
    let header: [u8; 20] = read_array(&mut s);
    assert_eq!(u16_at(&header, 6), REPLY_TYPE_OFFSET_DATA);
    let mut chunk = vec![0; u32_at(&header, 16) as usize];
    s.read_exact(&mut chunk).unwrap();
    assert_eq!(u64_at(&chunk, 0), 3 * BLOCK as u64);
    assert_eq!(chunk[8..], pattern(16, 1));
    disconnect(s, server);
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mem = Mem::new(&[("point", false)]);
    mem.fill(0, 0, &pattern(4096, 5));
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    let (_, flags) = go(&mut s, "point").unwrap();
    assert_ne!(flags & FLAG_READ_ONLY, 0, "flags {flags:#x}");
    assert_eq!(flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0, "flags {flags:#x}");
    assert_ne!(flags & FLAG_CAN_MULTI_CONN, 0);

    // The payload is read and dropped, so the connection stays in sync.
    assert_eq!(write(&mut s, 0, 1, 0, &[0xEE; 4096]), EPERM);
    request(&mut s, 0, CMD_TRIM, 2, 0, 4096);
    assert_eq!(simple_reply(&mut s, 2), EPERM);
    request(&mut s, 0, CMD_WRITE_ZEROES, 3, 0, 4096);
    assert_eq!(simple_reply(&mut s, 3), EPERM);
    assert_eq!(read(&mut s, 4, 0, 4096), pattern(4096, 5));
    assert_eq!(mem.bytes(0, 0, 4096), pattern(4096, 5));
    request(&mut s, 0, CMD_FLUSH, 5, 0, 0);
    assert_eq!(simple_reply(&mut s, 5), 0);
    disconnect(s, server);
}

#[test]
fn write_past_the_end_is_enospc_and_the_connection_goes_on() {
    let mem = Mem::new(&[("d0", true)]);
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    go(&mut s, "d0").unwrap();
    assert_eq!(write(&mut s, 0, 1, SIZE as u64 - 10, &[1; 20]), ENOSPC);
    assert_eq!(write(&mut s, 0, 2, 0, &[1; 20]), 0);
    disconnect(s, server);
}

#[test]
fn oversize_write_closes_the_connection() {
    let mem = Mem::new(&[("d0", true)]);
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    go(&mut s, "d0").unwrap();
    request(&mut s, 0, CMD_WRITE, 1, 0, nbd::limits::PAYLOAD_BYTES_MAX + 1);
    let result = server.join().unwrap();
    assert!(matches!(result, Err(ServeError::Refused(_))), "{result:?}");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no reply to an unreadable write: {rest:?}");
}

#[test]
fn unknown_export_name() {
    let mem = Mem::new(&[("d0", true)]);
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    assert_eq!(go(&mut s, "nope"), Err(REP_ERR_UNKNOWN));
    send_option(&mut s, OPT_INFO, &name_and_infos("nope", &[]));
    assert_eq!(option_reply(&mut s, OPT_INFO).0, REP_ERR_UNKNOWN);
    assert!(go(&mut s, "d0").is_ok(), "negotiation goes on after an unknown name");
    disconnect(s, server);

    // NBD_OPT_EXPORT_NAME has no error reply: the server closes.
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    send_option(&mut s, OPT_EXPORT_NAME, b"nope");
    let result = server.join().unwrap();
    assert!(matches!(result, Err(ServeError::Refused(_))), "{result:?}");
}

#[test]
fn export_name_option_on_a_read_only_export() {
    let mem = Mem::new(&[("point", false)]);
    let (mut s, server) = start_pair(&mem);
    greet(&mut s);
    send_option(&mut s, OPT_EXPORT_NAME, b"point");
    let reply: [u8; 10] = read_array(&mut s);
    assert_eq!(u64_at(&reply, 0), SIZE as u64);
    assert_ne!(u16_at(&reply, 8) & FLAG_READ_ONLY, 0);
    assert_eq!(write(&mut s, 0, 1, 0, &[1; 8]), EPERM);
    disconnect(s, server);
}

fn temp_socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("nbdserve-{}-{name}.sock", std::process::id()))
}

#[test]
fn unix_server_serves_and_stops() {
    let mem = Mem::new(&[("d0", true)]);
    let path = temp_socket("unix");
    let server = Server::bind(&ListenAddr::Unix(path.clone()), Arc::clone(&mem), 4).unwrap();
    assert_eq!(server.local_addr(), &ListenAddr::Unix(path.clone()));
    let running = server.spawn().unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    greet(&mut s);
    go(&mut s, "d0").unwrap();
    assert_eq!(write(&mut s, 0, 1, 4096, &pattern(70000, 9)), 0);
    assert_eq!(read(&mut s, 2, 4096, 70000), pattern(70000, 9));

    running.stop();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "stop closes open connections");
    assert!(!path.exists(), "stop removes the socket file");
    assert!(UnixStream::connect(&path).is_err());
    running.stop(); // idempotent
}

#[test]
fn tcp_server_limits_connections_and_serve_returns_on_stop() {
    let mem = Mem::new(&[("d0", true)]);
    let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(&addr, Arc::clone(&mem), 1).unwrap();
    let ListenAddr::Tcp(bound) = *server.local_addr() else { panic!("a TCP address") };
    assert_ne!(bound.port(), 0);
    let stopper = server.stopper();
    let serving = std::thread::spawn(move || server.serve());

    let mut first = std::net::TcpStream::connect(bound).unwrap();
    greet(&mut first);
    go(&mut first, "d0").unwrap();
    // Over the limit: closed at once, before any greeting.
    let mut second = std::net::TcpStream::connect(bound).unwrap();
    let mut rest = Vec::new();
    let _ = second.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a connection over the limit gets nothing");
    assert_eq!(read(&mut first, 1, 0, 512), vec![0; 512]);

    assert!(!stopper.is_stopped());
    stopper.stop();
    serving.join().unwrap();
    assert!(stopper.is_stopped());
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    assert!(rest.is_empty(), "stop closes open connections");
    assert!(std::net::TcpStream::connect(bound).is_err(), "the listener is closed");
}
