//! The relay's single-threaded io_uring event loop. Every operation carries a tag (`kind` in
//! the top byte, a connection id below); completions drive small state machines: connection
//! buffers, the group commit of the cache, the forward cursor, and the target link.

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use uring::{Completion, Op, Ring};
use wire::{
    error_code, AckEntry, Compression, DiskInfo, DiskStateKind, Frame, FrameReader, FrameType,
    RawFrame, Role, WireError,
};

use crate::cache::Cache;
use crate::disks::Disks;
use crate::error::{io_error, RelayError};
use crate::pool::{Done, Job, Pool};
use crate::RelayOptions;

const RECV_BUFFER_BYTES: usize = 256 << 10;
/// Forwarded bytes queued for the target beyond which the forwarder pauses: bounds memory
/// whatever the backlog, since the cache on disk holds the rest.
const TARGET_QUEUE_BYTES_MAX: usize = 4 << 20;
const FORWARD_READ_BYTES: usize = 2 << 20;
const TICK_INTERVAL: Duration = Duration::from_millis(250);
const TARGET_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Heartbeat intervals a target may stay silent before its link is dropped and redialled.
const HEARTBEATS_MISSED_MAX: u32 = 3;
/// A peer that has not completed its Hello this long after connecting is dropped: a
/// half-open or trickling handshake must not hold a connection slot (slowloris).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies queued for a peer that does not read them, after which the relay stops reading
/// that peer's requests until they drain: each connection's memory stays bounded (a client
/// asking for status in a loop without reading cannot grow the relay).
const CONN_QUEUE_BYTES_MAX: usize = 8 << 20;
/// A closing connection whose last send does not complete (the peer does not read) is shut
/// down after this long instead of holding its buffers.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_CACHE_WRITE: u64 = 4;
const KIND_CACHE_SYNC: u64 = 5;
const KIND_CACHE_READ: u64 = 6;
const KIND_TICK: u64 = 7;
const KIND_CONNECT: u64 = 8;
const KIND_WAKE: u64 = 9;

/// A journal record ready to stage, waiting for its ticket's turn.
#[derive(Debug)]
struct Ready {
    disk: usize,
    seq: Option<u64>,
    record: Vec<u8>,
    stored_payload_bytes: usize,
}

fn tag(kind: u64, id: u64) -> u64 {
    debug_assert!(id < 1 << 56);
    (kind << 56) | id
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnRole {
    New,
    Agent,
    Control,
    Target { greeted: bool },
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    peer: String,
    role: ConnRole,
    reader: FrameReader,
    /// Bytes queued and not yet handed to the kernel.
    outbox: Vec<u8>,
    /// A send buffer back from the kernel, reused for the next send.
    spare: Vec<u8>,
    /// `Some` while no receive is in flight.
    recv_buf: Option<Vec<u8>>,
    send_in_flight: usize,
    /// Agent's `disk_id` → index into `Disks`.
    agent_disks: Vec<usize>,
    closing: bool,
    /// Hello answered, resume positions not sent yet (see `on_hello`).
    positions_pending: bool,
    /// Who the peer said it is in its Hello (version, site, node), for update ordering.
    pub(crate) peer_identity: Option<wire::Identity>,
    /// When bytes last arrived: a peer silent for several heartbeats is presumed gone (a cut
    /// link can leave TCP waiting for hours).
    last_heard: Instant,
    /// When the connection was accepted (the Hello deadline counts from here).
    accepted: Instant,
    /// When the event loop first saw it closing (for `CLOSE_GRACE`).
    closing_seen: Option<Instant>,
    /// TLS state: ciphertext goes through it between the socket and `reader` / `outbox`.
    tls: Option<rustls::Connection>,
    /// What the peer may do; `None` until its TLS handshake is done.
    access: Option<pki::Access>,
}

impl Conn {
    fn new(stream: TcpStream, role: ConnRole) -> Conn {
        let peer = stream.peer_addr().map_or_else(|_| "?".into(), |addr| addr.to_string());
        Conn {
            stream,
            peer,
            role,
            reader: FrameReader::new(),
            outbox: Vec::new(),
            spare: Vec::new(),
            recv_buf: Some(Vec::with_capacity(RECV_BUFFER_BYTES)),
            send_in_flight: 0,
            agent_disks: Vec::new(),
            closing: false,
            positions_pending: false,
            peer_identity: None,
            last_heard: Instant::now(),
            accepted: Instant::now(),
            closing_seen: None,
            tls: None,
            access: Some(pki::Access::Plaintext),
        }
    }

    /// Runs received ciphertext through TLS into `reader`. Err: the TLS error to log (the
    /// alert for the peer is queued in the TLS state).
    fn receive_tls(&mut self, mut bytes: &[u8], scratch: &mut [u8]) -> Result<(), String> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        while !bytes.is_empty() {
            tls.read_tls(&mut bytes).map_err(|error| format!("TLS: {error}"))?;
            tls.process_new_packets().map_err(|error| format!("TLS: {error}"))?;
            loop {
                match std::io::Read::read(&mut tls.reader(), scratch) {
                    Ok(0) => {
                        self.closing = true;
                        return Ok(());
                    }
                    Ok(n) => self.reader.feed(&scratch[..n]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(format!("TLS: {error}")),
                }
            }
        }
        Ok(())
    }

    /// Moves queued plaintext into TLS and returns what to send, if anything.
    fn seal(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        let Some(tls) = self.tls.as_mut() else {
            return std::mem::replace(&mut self.outbox, out);
        };
        if !self.outbox.is_empty() && !tls.is_handshaking() {
            std::io::Write::write_all(&mut tls.writer(), &self.outbox)
                .expect("TLS buffers are unlimited");
            self.outbox.clear();
        }
        while tls.wants_write() {
            if tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    fn wants_send(&self) -> bool {
        match &self.tls {
            None => !self.outbox.is_empty(),
            Some(tls) => tls.wants_write() || (!self.outbox.is_empty() && !tls.is_handshaking()),
        }
    }

    fn push(&mut self, frame: &Frame<'_>) {
        frame.encode(&mut self.outbox).expect("relay builds only frames within the limits");
    }

    /// Reply bytes waiting for the peer to take them.
    fn queued(&self) -> usize {
        self.outbox.len() + self.send_in_flight
    }

    fn idle(&self) -> bool {
        self.recv_buf.is_some() && self.send_in_flight == 0
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{message}")]
    Protocol { code: u16, message: String },
}

fn protocol(code: u16, message: String) -> ConnError {
    ConnError::Protocol { code, message }
}

#[derive(Debug)]
struct Flush {
    seqs: HashMap<usize, u64>,
    bytes: u64,
    segment: u64,
    offset: u64,
    /// The written records, kept until the sync so a caught-up forwarder can send them from
    /// memory instead of reading them back.
    buf: Vec<u8>,
}

#[derive(Debug, Default)]
struct Forward {
    segment: u64,
    offset: u64,
    read_in_flight: bool,
    /// A record larger than a normal read was found: read at least this much next time.
    want_bytes: usize,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct TargetLink {
    conn: Option<u64>,
    connecting: Option<OwnedFd>,
    retry_at: Instant,
    failures: u32,
    /// Disks announced on the current link, with the identity announced.
    attached: HashMap<usize, (wire::Generation, u64)>,
}

/// A bound relay with its cache recovered, ready to `serve`.
#[derive(Debug)]
pub struct Relay {
    /// An error met where only a connection's error can be returned, that must still stop
    /// the relay (a cache state write that failed); `serve` returns it.
    fatal: Option<RelayError>,
    options: RelayOptions,
    ring: Ring,
    listener: TcpListener,
    conns: HashMap<u64, Conn>,
    next_conn_id: u64,
    pub(crate) disks: Disks,
    pub(crate) cache: Cache,
    flush: Option<Flush>,
    forward: Forward,
    target: TargetLink,
    compress_scratch: Vec<u8>,
    /// Decrypted bytes on their way from TLS into a connection's frame reader.
    scratch: Vec<u8>,
    /// A cache record's body decrypted for forwarding.
    open_scratch: Vec<u8>,
    pool: Pool,
    /// Tickets order records between the pool and the cache: `next_ticket` is handed out on
    /// arrival, `stage_ticket` is the next one to stage; finished ones wait in `ready`.
    next_ticket: u64,
    stage_ticket: u64,
    ready: BTreeMap<u64, Ready>,
    pool_jobs_max: usize,
    next_heartbeat: Instant,
    /// Intake is paused because the cache reached `cache_bytes_max` (logged on each change).
    cache_full: bool,
    pub(crate) started: Instant,
    pub(crate) groups: Vec<crate::groups::Group>,
}

impl Relay {
    /// Probes io_uring, recovers the cache and binds the listener.
    pub fn bind(options: RelayOptions) -> Result<Relay, RelayError> {
        let groups = options
            .groups
            .iter()
            .map(|group| crate::groups::Group::new(group.clone(), Instant::now()))
            .collect();
        let ring = Ring::new(options.queue_depth)?;
        let threads = match options.compression_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        };
        let pool = Pool::start(threads, options.compression_level, options.at_rest.clone())
            .map_err(io_error("start compression threads for", &options.cache_dir))?;
        let mut disks = Disks::default();
        let cache = Cache::open(
            &options.cache_dir,
            options.segment_bytes,
            options.cache_bytes_max,
            &mut disks,
            options.at_rest.clone(),
        )?;
        let listener = fsio::bind_listener(options.listen)
            .map_err(|source| RelayError::Listen { addr: options.listen, source })?;
        let forward = Forward {
            segment: cache.segments.front().map_or(0, |segment| segment.index),
            ..Forward::default()
        };
        Ok(Relay {
            options,
            ring,
            listener,
            conns: HashMap::new(),
            next_conn_id: 1,
            disks,
            cache,
            flush: None,
            forward,
            target: TargetLink {
                conn: None,
                connecting: None,
                retry_at: Instant::now(),
                failures: 0,
                attached: HashMap::new(),
            },
            compress_scratch: Vec::new(),
            scratch: vec![0u8; 64 << 10],
            open_scratch: Vec::new(),
            pool,
            next_ticket: 0,
            fatal: None,
            stage_ticket: 0,
            ready: BTreeMap::new(),
            pool_jobs_max: threads + 1,
            next_heartbeat: Instant::now(),
            cache_full: false,
            started: Instant::now(),
            groups,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Runs the event loop. Returns only on a fatal error (a failed cache write or fsync: the
    /// relay stops rather than ack what it could not make durable).
    pub fn serve(mut self) -> Result<(), RelayError> {
        log::info!(
            "listening on {} ({}; cache {}, target {})",
            self.local_addr(),
            if self.options.tls.is_some() { "TLS 1.3, mutual" } else { "PLAINTEXT" },
            self.options.cache_dir.display(),
            self.options.target
        );
        if self.options.tls.is_none() {
            log::warn!("running without TLS ([security] plaintext = true): anyone who reaches the port can replicate into this relay and read its status");
        }
        self.ring.submit(tag(KIND_ACCEPT, 0), Op::Accept { fd: self.listener.as_raw_fd() })?;
        self.ring.submit(tag(KIND_TICK, 0), uring::timeout(TICK_INTERVAL))?;
        self.arm_wake(vec![0u8; 8])?;
        self.connect_target()?;
        let mut completions = Vec::with_capacity(256);
        loop {
            self.ring.complete(1, &mut completions)?;
            for completion in completions.drain(..) {
                self.on_completion(completion)?;
            }
            if let Some(error) = self.fatal.take() {
                return Err(error);
            }
            self.start_flush()?;
            self.forward_more()?;
            self.send_acks();
            self.pump_conns()?;
        }
    }

    fn on_completion(&mut self, completion: Completion) -> Result<(), RelayError> {
        let id = completion.tag & ((1 << 56) - 1);
        match completion.tag >> 56 {
            KIND_ACCEPT => self.on_accept(&completion),
            KIND_RECV => {
                self.on_recv(id, completion);
                Ok(())
            }
            KIND_SEND => self.on_send(id, completion),
            KIND_CACHE_WRITE => self.on_cache_write(completion),
            KIND_CACHE_SYNC => self.on_cache_sync(&completion),
            KIND_CACHE_READ => self.on_cache_read(id, completion),
            KIND_TICK => self.on_tick(),
            KIND_CONNECT => self.on_connect(&completion),
            KIND_WAKE => self.on_wake(completion),
            other => unreachable!("unknown completion kind {other}"),
        }
    }

    fn new_conn_id(&mut self) -> u64 {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        id
    }

    fn on_accept(&mut self, completion: &Completion) -> Result<(), RelayError> {
        self.ring.submit(tag(KIND_ACCEPT, 0), Op::Accept { fd: self.listener.as_raw_fd() })?;
        let stream = match uring::accepted_stream(completion.result) {
            Ok(stream) => stream,
            Err(error) => {
                log::warn!("accept failed: {error}");
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        let id = self.new_conn_id();
        let mut conn = Conn::new(stream, ConnRole::New);
        log::debug!("connection {id} from {}", conn.peer);
        if let Some(authority) = &self.options.tls {
            match rustls::ServerConnection::new(authority.server_config()) {
                Ok(mut tls) => {
                    tls.set_buffer_limit(None);
                    conn.tls = Some(tls.into());
                    conn.access = None;
                }
                Err(error) => {
                    log::error!("connection {id}: TLS: {error}");
                    conn.closing = true;
                }
            }
        }
        let peers = self
            .conns
            .values()
            .filter(|conn| conn.role != (ConnRole::Target { greeted: true }))
            .count();
        if peers >= self.options.agents_max {
            let message = format!("relay serves at most {} connections", self.options.agents_max);
            log::warn!("connection {id} from {}: refused: {message}", conn.peer);
            conn.push(&Frame::Error { code: error_code::LIMIT, message: &message });
            conn.closing = true;
        }
        self.conns.insert(id, conn);
        Ok(())
    }

    fn on_recv(&mut self, id: u64, completion: Completion) {
        let Op::Recv { buf, .. } = completion.op else { unreachable!("recv tag on another op") };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if completion.result <= 0 {
            if conn.reader.buffered_len() > 0 && !conn.closing {
                let pending = conn.reader.buffered_len();
                log::warn!(
                    "connection {id} from {}: closed mid-frame, {pending} bytes of an incomplete frame discarded",
                    conn.peer
                );
            }
            if completion.result < 0 && !conn.closing {
                log::debug!(
                    "connection {id} from {}: receive failed: {}",
                    conn.peer,
                    std::io::Error::from_raw_os_error(-completion.result)
                );
            }
            conn.closing = true;
            conn.recv_buf = Some(buf);
            return;
        }
        conn.last_heard = Instant::now();
        if conn.tls.is_none() {
            conn.reader.feed(&buf);
        } else if let Err(error) = conn.receive_tls(&buf, &mut self.scratch) {
            log::warn!("connection {id} from {}: refused: {error}", conn.peer);
            conn.reader = FrameReader::new();
            conn.closing = true;
        }
        let mut buf = buf;
        buf.clear();
        conn.recv_buf = Some(buf);
        if conn.access.is_none() && conn.tls.as_ref().is_some_and(|tls| !tls.is_handshaking()) {
            self.identify(id);
        }
        self.process_frames(id);
    }

    fn process_frames(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let mut reader = std::mem::take(&mut conn.reader);
        let result = loop {
            match reader.peek() {
                Ok(None) => break Ok(()),
                Ok(Some((raw, used))) => {
                    let result = self.on_frame(id, raw);
                    reader.consume(used);
                    if result.is_err() || self.conns.get(&id).is_none_or(|conn| conn.closing) {
                        break result;
                    }
                    // An operator client asking faster than it reads (a burst of requests in
                    // one receive) is cut off at the bound instead of queueing every reply.
                    if self.conns.get(&id).is_some_and(|conn| {
                        conn.role == ConnRole::Control && conn.queued() > CONN_QUEUE_BYTES_MAX
                    }) {
                        let mib = CONN_QUEUE_BYTES_MAX >> 20;
                        break Err(protocol(
                            error_code::LIMIT,
                            format!("the peer does not read its replies ({mib} MiB queued)"),
                        ));
                    }
                }
                Err(error) => break Err(ConnError::Wire(error)),
            }
        };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.reader = reader;
        if let Err(error) = result {
            self.fail_conn(id, &error);
        }
    }

    /// Logs why a connection is closed, tells the peer, and closes it once that is sent.
    fn fail_conn(&mut self, id: u64, error: &ConnError) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let code = match error {
            ConnError::Protocol { code, .. } => *code,
            ConnError::Wire(_) => error_code::PROTOCOL,
        };
        let what =
            if matches!(conn.role, ConnRole::Target { .. }) { "target link" } else { "connection" };
        // A refusal was logged with the peer's identity where it was decided.
        if code != error_code::REFUSED {
            log::error!("{what} {id} from {}: {error}", conn.peer);
        }
        let mut message = error.to_string();
        message.truncate(wire::limits::TEXT_BYTES_MAX);
        conn.reader = FrameReader::new();
        conn.push(&Frame::Error { code, message: &message });
        conn.closing = true;
    }

    /// Names a TLS peer from its certificate once its handshake is done.
    fn identify(&mut self, id: u64) {
        let authority = self.options.tls.clone();
        let conn = self.conns.get_mut(&id).expect("live connection");
        let Some(tls) = conn.tls.as_ref() else { return };
        if matches!(conn.role, ConnRole::Target { .. }) {
            conn.access = Some(pki::Access::Plaintext);
            return;
        }
        let authority = authority.expect("an accepted TLS connection has the relay's CA");
        match authority.identify(tls.peer_certificates()) {
            Ok(peer) => {
                log::debug!("connection {id} from {}: {peer}", conn.peer);
                conn.access = Some(pki::Access::Tls(peer));
            }
            Err(reason) => {
                log::warn!("connection {id} from {}: refused: {reason}", conn.peer);
                conn.access = Some(pki::Access::Tls(pki::Peer::Anonymous));
                conn.reader = FrameReader::new();
                conn.push(&Frame::Error { code: error_code::REFUSED, message: &reason });
                conn.closing = true;
            }
        }
    }

    /// A refusal: logged with the peer's identity, then sent to it by `fail_conn`.
    fn refuse(&self, id: u64, reason: String) -> ConnError {
        let conn = &self.conns[&id];
        let who = conn.access.as_ref().map_or_else(|| "TLS handshake".into(), |a| a.to_string());
        log::warn!("connection {id} from {} ({who}): refused: {reason}", conn.peer);
        protocol(error_code::REFUSED, reason)
    }

    /// Issues an agent certificate to a node that proves a passphrase of this relay.
    fn on_register(&mut self, id: u64, request: &wire::Register<'_>) -> Result<(), ConnError> {
        let authority = self.options.tls.clone().expect("Register is refused without TLS");
        let conn = self.conns.get_mut(&id).expect("live connection");
        let tls = conn.tls.as_ref().expect("a TLS connection");
        let exporter =
            tls.export_keying_material([0u8; 32], pki::register::EXPORTER_LABEL, None)
                .map_err(|error| protocol(error_code::INTERNAL, format!("TLS export: {error}")))?;
        match authority.register(request, &exporter) {
            Ok(pki::Issued { ca, cert, proof }) => {
                log::info!(
                    "connection {id} from {}: registered agent {:?}",
                    conn.peer,
                    request.name
                );
                conn.push(&Frame::Registered { ca: &ca, cert: &cert, proof: &proof });
                Ok(())
            }
            Err(reason) => {
                Err(self.refuse(id, format!("registration of {:?}: {reason}", request.name)))
            }
        }
    }

    fn on_frame(&mut self, id: u64, raw: RawFrame<'_>) -> Result<(), ConnError> {
        let role = self.conns[&id].role;
        let access = self.conns[&id].access.clone().unwrap_or(pki::Access::Plaintext);
        if role != ConnRole::New || raw.frame_type != FrameType::Hello {
            if let Err(reason) = access.check_frame(raw.frame_type) {
                return Err(self.refuse(id, reason));
            }
        }
        let frame = raw.decode()?;
        if let Frame::Register(request) = &frame {
            return self.on_register(id, request);
        }
        match (role, frame) {
            (ConnRole::New, Frame::Hello(hello)) => self.on_hello(id, &hello),
            (ConnRole::New, other) => Err(protocol(
                error_code::PROTOCOL,
                format!("expected Hello, got {}", other.frame_type().name()),
            )),
            (ConnRole::Agent, Frame::Writes(writes)) => self.on_writes(id, &writes, raw.body),
            (ConnRole::Agent, Frame::Marker(marker)) => {
                let disk = self.agent_disk(id, marker.disk_id)?;
                self.stage_sequenced(disk, marker.seq, FrameType::Marker, raw.body)
            }
            (ConnRole::Agent, Frame::ChecksumRequest(request)) => {
                let disk = self.agent_disk(id, request.disk_id)?;
                self.stage_record(disk, None, FrameType::ChecksumRequest, raw.body, 0);
                Ok(())
            }
            (ConnRole::Agent, Frame::DiskState(state)) => {
                let disk = self.agent_disk(id, state.disk_id)?;
                self.disks.list[disk].reported_state =
                    Some((state.state, state.done_bytes, state.total_bytes));
                Ok(())
            }
            (ConnRole::Agent | ConnRole::Control, Frame::StatusRequest) => {
                let json = crate::status::status_json(self);
                self.conns
                    .get_mut(&id)
                    .expect("live connection")
                    .push(&Frame::Status { json: &json });
                Ok(())
            }
            (_, Frame::Heartbeat { .. }) => Ok(()),
            (ConnRole::Agent, Frame::Control { json }) => {
                self.on_agent_answer(id, json);
                Ok(())
            }
            (ConnRole::Target { .. }, frame) => {
                self.on_target_frame(id, frame);
                Ok(())
            }
            (_, Frame::Error { code, message }) => {
                log::warn!("connection {id} reported error {code}: {message}");
                Ok(())
            }
            (_, other) => Err(protocol(
                error_code::PROTOCOL,
                format!("unexpected {} frame", other.frame_type().name()),
            )),
        }
    }

    fn on_hello(&mut self, id: u64, hello: &wire::Hello<'_>) -> Result<(), ConnError> {
        wire::negotiate_version(hello.version_min, hello.version_max)?;
        let access = self.conns[&id].access.clone().unwrap_or(pki::Access::Plaintext);
        if let Err(reason) = access.check_hello(hello.role) {
            return Err(self.refuse(id, reason));
        }
        if access == pki::Access::Tls(pki::Peer::Anonymous) {
            // Only a registration may follow; the connection stays `New`.
            return Ok(());
        }
        let role = match hello.role {
            Role::Agent => ConnRole::Agent,
            Role::Control => ConnRole::Control,
            other => {
                return Err(protocol(
                    error_code::PROTOCOL,
                    format!("a {other:?} cannot connect to a relay"),
                ))
            }
        };
        let mut agent_disks = Vec::with_capacity(hello.disks.len());
        for (local, info) in hello.disks.iter().enumerate() {
            agent_disks.push(self.register_disk(id, local as u32, info)?);
        }
        if role == ConnRole::Agent {
            let conn = &self.conns[&id];
            let who = match conn.access.as_ref().and_then(|access| access.node_name()) {
                Some(name) => format!("{name} (host {})", hello.node_id),
                None => hello.node_id.to_string(),
            };
            log::info!("agent {who} ({}) connected with {} disk(s)", conn.peer, agent_disks.len());
        }
        let conn = self.conns.get_mut(&id).expect("live connection");
        conn.role = role;
        conn.agent_disks = agent_disks;
        conn.peer_identity = Some(identity_of(hello));
        conn.push(&Frame::Hello(wire::Hello::ours(Role::Relay, "relay", Vec::new())));
        // The first Ack tells the agent where to resume; it waits until frames of an earlier
        // connection for these disks are durable, or the agent would reuse their sequences.
        conn.positions_pending = role == ConnRole::Agent;
        Ok(())
    }

    /// The resume positions of an agent connection, once none of its disks has frames still
    /// waiting for a group commit.
    fn resume_positions(&self, conn: &Conn) -> Option<Vec<AckEntry>> {
        let disks = conn.agent_disks.iter().map(|&disk| &self.disks.list[disk]);
        if disks.clone().any(|disk| disk.received_seq != disk.cache_seq || !disk.position_known) {
            return None;
        }
        let entries = disks.enumerate().map(|(local, disk)| AckEntry {
            disk_id: local as u32,
            durable_seq: disk.cache_seq,
            replicated_seq: disk.replicated_seq,
        });
        Some(entries.collect())
    }

    fn register_disk(
        &mut self,
        conn_id: u64,
        local: u32,
        info: &DiskInfo<'_>,
    ) -> Result<usize, ConnError> {
        if let Err(reason) = check_disk_name(info.name) {
            return Err(protocol(
                error_code::PROTOCOL,
                format!("disk name {:?}: {reason}", info.name),
            ));
        }
        if let (Some(authority), Some(agent)) =
            (&self.options.tls, self.conns[&conn_id].access.as_ref().and_then(|a| a.node_name()))
        {
            if let Err(reason) = authority.claim_disk(info.name, agent) {
                return Err(self.refuse(conn_id, reason));
            }
        }
        let disk = match self.disks.find(info.name) {
            Some(disk) => disk,
            None if self.disks.list.len() >= self.options.disks_max => {
                return Err(protocol(
                    error_code::LIMIT,
                    format!("relay serves at most {} disks", self.options.disks_max),
                ));
            }
            None => {
                let disk = self.disks.insert(info.name, info.generation, info.size_bytes, 0);
                // An agent taking a replica over that this relay never saw (a reprotect into
                // an adopted image): the target must hear it, or it refuses the generation.
                self.disks.list[disk].take_over = info.take_over;
                // A generation that never sent a frame starts at 0; any other may have a
                // history at the target that this relay lost with its cache.
                if !info.fresh {
                    self.disks.list[disk].position_known = false;
                    log::info!(
                        "disk {}: no record of it in this relay's cache; asking the target where it stands before accepting writes",
                        info.name
                    );
                }
                disk
            }
        };
        if self.disks.list[disk].generation != info.generation {
            self.take_over_disk(disk, info)?;
        }
        let entry = &mut self.disks.list[disk];
        if entry.size_bytes != info.size_bytes {
            log::warn!(
                "disk {}: size changes from {} to {} bytes",
                info.name,
                entry.size_bytes,
                info.size_bytes
            );
            entry.size_bytes = info.size_bytes;
        }
        if let Some((previous, _)) = entry.agent.replace((conn_id, local)) {
            if previous != conn_id {
                log::info!(
                    "disk {}: connection {conn_id} takes over from connection {previous}",
                    info.name
                );
            }
        }
        Ok(disk)
    }

    fn agent_disk(&self, conn_id: u64, disk_id: u32) -> Result<usize, ConnError> {
        let conn = &self.conns[&conn_id];
        let Some(&disk) = conn.agent_disks.get(disk_id as usize) else {
            return Err(protocol(
                error_code::UNKNOWN_DISK,
                format!("disk id {disk_id} was not announced in Hello"),
            ));
        };
        if self.disks.list[disk].agent != Some((conn_id, disk_id)) {
            return Err(protocol(
                error_code::PROTOCOL,
                format!(
                    "disk {} is now replicated by another connection",
                    self.disks.list[disk].name
                ),
            ));
        }
        Ok(disk)
    }

    fn on_writes(
        &mut self,
        conn_id: u64,
        writes: &wire::Writes<'_>,
        body: &[u8],
    ) -> Result<(), ConnError> {
        let disk = self.agent_disk(conn_id, writes.disk_id)?;
        let size_bytes = self.disks.list[disk].size_bytes;
        for extent in &writes.extents {
            let end = extent.offset + u64::from(extent.len);
            if end > size_bytes {
                return Err(protocol(
                    error_code::LIMIT,
                    format!(
                        "disk {}: write ends at byte {end}, past the disk size {size_bytes}",
                        self.disks.list[disk].name
                    ),
                ));
            }
        }
        if !self.check_sequence(disk, writes.seq)? {
            return Ok(());
        }
        if writes.compression == Compression::Zstd {
            // Verify now: a batch that does not decompress would poison the cache.
            self.compress_scratch.clear();
            wire::append_writes_data(writes, &mut self.compress_scratch)?;
        }
        // Nothing below fails: a ticket taken must always become ready, or staging stalls.
        let entry = &mut self.disks.list[disk];
        entry.bytes_received += u64::from(writes.data_len);
        entry.received_seq = writes.seq;
        if writes.compression == Compression::None
            && writes.data_len > 0
            && self.options.compression_level > 0
        {
            let ticket = self.take_ticket();
            let stored_prefix = self.stored_prefix(disk);
            let mut job_body = self.pool.buffers.take();
            job_body.extend_from_slice(body);
            self.pool.submit(Job { ticket, disk, seq: writes.seq, stored_prefix, body: job_body });
            return Ok(());
        }
        let payload_bytes = writes.payload.len();
        self.stage_record(disk, Some(writes.seq), FrameType::Writes, body, payload_bytes);
        Ok(())
    }

    /// A generation mismatch: refused (invariant 5), unless the operator asked the agent to take
    /// the disk over and nothing of the old generation is still on its way to the target.
    /// Then the disk restarts at sequence 0 under the new generation; the old generation's
    /// records left in the cache are skipped from now on (and by the recovery scan).
    fn take_over_disk(&mut self, disk: usize, info: &DiskInfo<'_>) -> Result<(), ConnError> {
        let entry = &self.disks.list[disk];
        let ours = wire::generation_to_hex(&entry.generation);
        let theirs = wire::generation_to_hex(&info.generation);
        if !info.take_over {
            return Err(protocol(
                error_code::GENERATION,
                format!(
                    "disk {}: agent generation {theirs} differs from generation {ours} replicated through this relay; refusing to mix histories (if this source is the one to keep, run the agent with --take-over: the replica is then resynced to it)",
                    info.name
                ),
            ));
        }
        let backlog = entry.cache_seq.saturating_sub(entry.replicated_seq)
            + entry.received_seq.saturating_sub(entry.cache_seq);
        if backlog > 0 {
            return Err(protocol(
                error_code::BUSY,
                format!(
                    "disk {}: {backlog} frame(s) of generation {ours} are still on their way to the target; the take-over waits until they are delivered",
                    info.name
                ),
            ));
        }
        log::warn!(
            "disk {}: generation {theirs} takes over from {ours} (agent --take-over)",
            info.name
        );
        let entry = &mut self.disks.list[disk];
        entry.generation = info.generation;
        entry.take_over = true;
        entry.received_seq = 0;
        entry.cache_seq = 0;
        entry.replicated_seq = 0;
        entry.reported_state = None;
        for segment in self.cache.segments.iter_mut() {
            segment.max_seq.remove(&disk);
        }
        self.target.attached.remove(&disk);
        // Durable before anything of the new generation is acked: a restart must not read
        // the new records as the old generation's.
        if let Err(error) = self.cache.store_state(&self.disks) {
            let message = format!("cannot record the take-over: {error}");
            self.fatal = Some(error);
            return Err(protocol(error_code::INTERNAL, message));
        }
        Ok(())
    }

    /// The disk's identity as stored in front of each of its cache records.
    fn stored_prefix(&self, disk: usize) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(128);
        wire::encode_stored(&self.disks.list[disk].info(), &[], &mut prefix)
            .expect("registered disk names are valid");
        prefix
    }

    fn take_ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Stages finished records in ticket order, so the journal keeps arrival order.
    /// Stops at the group-commit size: what does not fit waits in `ready` for the next group,
    /// so the commit buffers never grow past one group plus one record.
    fn stage_in_order(&mut self) {
        while self.cache.pending.len() < self.options.group_commit_bytes_max {
            let Some(ready) = self.ready.remove(&self.stage_ticket) else { break };
            self.cache.stage(ready.disk, ready.seq, &ready.record);
            self.disks.list[ready.disk].bytes_stored += ready.stored_payload_bytes as u64;
            self.pool.buffers.give(ready.record);
            self.stage_ticket += 1;
        }
    }

    fn arm_wake(&mut self, buf: Vec<u8>) -> Result<(), RelayError> {
        let fd = self.pool.wake_fd();
        let op = Op::Read { fd, buf, offset: uring::EventFd::READ_OFFSET };
        self.ring.submit(tag(KIND_WAKE, 0), op)?;
        Ok(())
    }

    /// Compression workers finished something: stage what is now in order.
    fn on_wake(&mut self, completion: Completion) -> Result<(), RelayError> {
        let Op::Read { buf, .. } = completion.op else { unreachable!("wake tag on another op") };
        let mut finished = Vec::new();
        self.pool.drain(&mut finished);
        for Done { ticket, disk, seq, record, stored_payload_bytes } in finished {
            self.ready.insert(ticket, Ready { disk, seq: Some(seq), record, stored_payload_bytes });
        }
        self.stage_in_order();
        self.arm_wake(buf)
    }

    /// `Ok(false)` for a duplicate (a retransmission of something already received).
    fn check_sequence(&self, disk: usize, seq: u64) -> Result<bool, ConnError> {
        let entry = &self.disks.list[disk];
        if seq <= entry.received_seq {
            return Ok(false);
        }
        if seq != entry.received_seq + 1 {
            return Err(protocol(
                error_code::SEQUENCE,
                format!(
                    "disk {}: sequence gap, expected {}, got {seq}",
                    entry.name,
                    entry.received_seq + 1
                ),
            ));
        }
        Ok(true)
    }

    fn stage_sequenced(
        &mut self,
        disk: usize,
        seq: u64,
        frame_type: FrameType,
        body: &[u8],
    ) -> Result<(), ConnError> {
        if !self.check_sequence(disk, seq)? {
            return Ok(());
        }
        self.disks.list[disk].received_seq = seq;
        self.stage_record(disk, Some(seq), frame_type, body, 0);
        Ok(())
    }

    /// Queues a record that needs no compression (checked frames only: it cannot fail).
    fn stage_record(
        &mut self,
        disk: usize,
        seq: Option<u64>,
        frame_type: FrameType,
        body: &[u8],
        stored_payload_bytes: usize,
    ) {
        let prefix = self.stored_prefix(disk);
        let mut record = self.pool.buffers.take();
        let start = journal::begin_record(frame_type as u8, &mut record);
        record.extend_from_slice(&prefix);
        record.extend_from_slice(body);
        if let Some(key) = &self.options.at_rest {
            key.encrypt_body(&mut record, start);
        }
        journal::seal_record(&mut record, start).expect("a frame body fits a journal record");
        let ticket = self.take_ticket();
        self.ready.insert(ticket, Ready { disk, seq, record, stored_payload_bytes });
        self.stage_in_order();
    }

    /// Group commit: everything staged since the last commit goes in one write and one
    /// fdatasync. Acks wait for the fdatasync.
    fn start_flush(&mut self) -> Result<(), RelayError> {
        self.stage_in_order();
        if self.flush.is_some() || self.cache.pending.is_empty() {
            return Ok(());
        }
        let spare = std::mem::take(&mut self.cache.spare);
        let buf = std::mem::replace(&mut self.cache.pending, spare);
        let seqs = std::mem::take(&mut self.cache.pending_seqs);
        let active = self.cache.active();
        for (&disk, &seq) in &seqs {
            let slot = active.max_seq.entry(disk).or_insert(0);
            *slot = (*slot).max(seq);
        }
        let offset = active.len;
        active.len += buf.len() as u64;
        let fd = active.file.as_raw_fd();
        let segment = active.index;
        self.flush =
            Some(Flush { seqs, bytes: buf.len() as u64, segment, offset, buf: Vec::new() });
        self.ring.submit(tag(KIND_CACHE_WRITE, 0), Op::Write { fd, buf, start: 0, offset })?;
        // Records held back because the last group was full can start the next one.
        self.stage_in_order();
        Ok(())
    }

    fn on_cache_write(&mut self, completion: Completion) -> Result<(), RelayError> {
        let Op::Write { fd, buf, start, offset } = completion.op else {
            unreachable!("write tag on another op")
        };
        let path =
            self.cache.segment_path(self.cache.segments.back().expect("active segment").index);
        let written = usize::try_from(completion.result).map_err(|_| RelayError::CacheWrite {
            path: path.clone(),
            source: std::io::Error::from_raw_os_error(-completion.result),
        })?;
        if written == 0 {
            return Err(RelayError::CacheWrite {
                path,
                source: std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote 0 bytes"),
            });
        }
        if start + written < buf.len() {
            let op = Op::Write { fd, buf, start: start + written, offset: offset + written as u64 };
            self.ring.submit(tag(KIND_CACHE_WRITE, 0), op)?;
            return Ok(());
        }
        self.flush.as_mut().expect("a write belongs to a flush").buf = buf;
        self.ring.submit(tag(KIND_CACHE_SYNC, 0), Op::Fsync { fd, data_only: true })?;
        Ok(())
    }

    fn on_cache_sync(&mut self, completion: &Completion) -> Result<(), RelayError> {
        let active = self.cache.segments.back().expect("active segment").index;
        if let Err(source) = completion.io_result() {
            return Err(RelayError::CacheWrite { path: self.cache.segment_path(active), source });
        }
        let flush = self.flush.take().expect("a sync completes a flush");
        let segment = self.cache.active();
        segment.durable_len += flush.bytes;
        assert!(segment.durable_len <= segment.len, "durable bytes never exceed written bytes");
        for (disk, seq) in flush.seqs {
            let entry = &mut self.disks.list[disk];
            assert!(seq > entry.cache_seq || seq == 0, "cache sequence only grows");
            entry.cache_seq = seq;
            entry.ack_due = true;
        }
        let mut buf = flush.buf;
        if let Some(link_id) = self.forwarder_waits_at(flush.segment, flush.offset) {
            let path = self.cache.segment_path(flush.segment);
            // Whatever does not fit the target queue now is read back from the cache later.
            let consumed = self.forward_records(link_id, &buf, flush.offset, &path)?;
            self.forward.offset += consumed as u64;
        }
        // Two buffers alternate between staging and writing; neither is reallocated.
        buf.clear();
        self.cache.spare = buf;
        self.cache.rotate_if_full()
    }

    /// The target link, if the forwarder is idle exactly at `(segment, offset)` and the link
    /// has room: then freshly durable records can go straight from memory.
    fn forwarder_waits_at(&self, segment: u64, offset: u64) -> Option<u64> {
        let link_id = self.target.conn?;
        let link = self.conns.get(&link_id)?;
        let ready = link.role == (ConnRole::Target { greeted: true })
            && !link.closing
            && link.outbox.len() + link.send_in_flight < TARGET_QUEUE_BYTES_MAX;
        let at = !self.forward.read_in_flight
            && self.forward.segment == segment
            && self.forward.offset == offset;
        (ready && at).then_some(link_id)
    }

    fn send_acks(&mut self) {
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.positions_pending)
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            if let Some(positions) = self.resume_positions(&self.conns[&id]) {
                let conn = self.conns.get_mut(&id).expect("listed above");
                conn.push(&Frame::Ack(positions));
                conn.positions_pending = false;
            }
        }
        let mut per_conn: HashMap<u64, Vec<AckEntry>> = HashMap::new();
        for disk in self.disks.list.iter_mut().filter(|disk| disk.ack_due) {
            disk.ack_due = false;
            if let Some((conn, disk_id)) = disk.agent {
                per_conn.entry(conn).or_default().push(AckEntry {
                    disk_id,
                    durable_seq: disk.cache_seq,
                    replicated_seq: disk.replicated_seq,
                });
            }
        }
        for (conn_id, entries) in per_conn {
            let conn = self.conns.get_mut(&conn_id);
            if let Some(conn) = conn.filter(|conn| !conn.closing && !conn.positions_pending) {
                conn.push(&Frame::Ack(entries));
            }
        }
    }

    fn forward_more(&mut self) -> Result<(), RelayError> {
        let Some(link_id) = self.target.conn else { return Ok(()) };
        let Some(link) = self.conns.get(&link_id) else { return Ok(()) };
        if link.role != (ConnRole::Target { greeted: true })
            || link.closing
            || self.forward.read_in_flight
        {
            return Ok(());
        }
        if link.outbox.len() + link.send_in_flight >= TARGET_QUEUE_BYTES_MAX {
            return Ok(());
        }
        self.ask_positions(link_id);
        loop {
            let Some(segment) =
                self.cache.segments.iter().find(|segment| segment.index >= self.forward.segment)
            else {
                return Ok(());
            };
            if segment.index != self.forward.segment {
                self.forward.segment = segment.index;
                self.forward.offset = 0;
            }
            if self.forward.offset < segment.durable_len {
                let len = (segment.durable_len - self.forward.offset)
                    .min(FORWARD_READ_BYTES.max(self.forward.want_bytes) as u64);
                let mut buf = std::mem::take(&mut self.forward.buf);
                buf.resize(len as usize, 0);
                let op =
                    Op::Read { fd: segment.file.as_raw_fd(), buf, offset: self.forward.offset };
                self.ring.submit(tag(KIND_CACHE_READ, link_id), op)?;
                self.forward.read_in_flight = true;
                return Ok(());
            }
            let is_active =
                self.cache.segments.back().is_some_and(|last| last.index == segment.index);
            if is_active {
                return Ok(());
            }
            self.forward.segment += 1;
            self.forward.offset = 0;
        }
    }

    /// Attaches disks without a known position, so the target acks where each stands.
    fn ask_positions(&mut self, link_id: u64) {
        for (disk, entry) in self.disks.list.iter().enumerate() {
            if entry.position_known || self.target.attached.contains_key(&disk) {
                continue;
            }
            let link = self.conns.get_mut(&link_id).expect("checked by the caller");
            link.push(&Frame::DiskAttach { disk_id: disk as u32, disk: entry.info() });
            self.target.attached.insert(disk, (entry.generation, entry.size_bytes));
        }
    }

    fn on_cache_read(&mut self, link_id: u64, completion: Completion) -> Result<(), RelayError> {
        self.forward.read_in_flight = false;
        let result = completion.io_result();
        let Op::Read { buf, offset, .. } = completion.op else {
            unreachable!("read tag on another op")
        };
        let path = self.cache.segment_path(self.forward.segment);
        let read = result.map_err(io_error("read", &path))?;
        let stale = self.target.conn != Some(link_id) || offset != self.forward.offset;
        if !stale {
            let consumed = self.forward_records(link_id, &buf[..read], offset, &path)?;
            self.forward.offset += consumed as u64;
        }
        self.forward.buf = buf;
        Ok(())
    }

    /// Forwards every whole record in `bytes`; returns the bytes consumed.
    fn forward_records(
        &mut self,
        link_id: u64,
        bytes: &[u8],
        offset: u64,
        path: &std::path::Path,
    ) -> Result<usize, RelayError> {
        let mut consumed = 0;
        loop {
            if consumed > 0 && !self.target_has_room(link_id) {
                return Ok(consumed);
            }
            match journal::decode_record(&bytes[consumed..], offset + consumed as u64) {
                Ok(Some((record, used))) => {
                    self.forward_record(link_id, record, path, offset + consumed as u64)?;
                    consumed += used;
                    self.forward.want_bytes = 0;
                }
                Ok(None) => {
                    if consumed == 0 {
                        let rest = &bytes[consumed..];
                        let body_len = rest.get(8..12).map_or(0, |len| {
                            u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize
                        });
                        self.forward.want_bytes = journal::encoded_len(body_len);
                    }
                    return Ok(consumed);
                }
                Err(source) => {
                    return Err(RelayError::Journal { path: path.to_path_buf(), source })
                }
            }
        }
    }

    /// The target queue is below its bound: the forwarder may add a record. Bounds the relay's
    /// memory whatever the backlog, since the cache on disk holds the rest.
    fn target_has_room(&self, link_id: u64) -> bool {
        self.conns
            .get(&link_id)
            .is_some_and(|link| link.outbox.len() + link.send_in_flight < TARGET_QUEUE_BYTES_MAX)
    }

    fn forward_record(
        &mut self,
        link_id: u64,
        record: journal::RecordRef<'_>,
        path: &std::path::Path,
        offset: u64,
    ) -> Result<(), RelayError> {
        let record_error = |source| RelayError::Record { path: path.to_path_buf(), offset, source };
        let frame_type = FrameType::from_u8(record.kind).map_err(record_error)?;
        let mut plain = std::mem::take(&mut self.open_scratch);
        let key = self.options.at_rest.clone();
        let result = crate::cache::open_record(key.as_deref(), record, &mut plain, path, offset)
            .and_then(|record| self.forward_plain(link_id, frame_type, record.body, path, offset));
        self.open_scratch = plain;
        result
    }

    fn forward_plain(
        &mut self,
        link_id: u64,
        frame_type: FrameType,
        stored: &[u8],
        path: &std::path::Path,
        offset: u64,
    ) -> Result<(), RelayError> {
        let record_error = |source| RelayError::Record { path: path.to_path_buf(), offset, source };
        let (info, body) = wire::decode_stored(stored).map_err(record_error)?;
        let disk = self.disks.insert(info.name, info.generation, info.size_bytes, 0);
        if self.disks.list[disk].generation != info.generation {
            return Ok(()); // a generation that was taken over: delivered, and replaced
        }
        if matches!(frame_type, FrameType::Writes | FrameType::Marker) {
            let (_, seq) = wire::disk_scoped_prefix(body).map_err(record_error)?;
            if seq <= self.disks.list[disk].replicated_seq {
                return Ok(());
            }
        }
        let link = self.conns.get_mut(&link_id).expect("forwarding needs a live link");
        let identity = (info.generation, info.size_bytes);
        if self.target.attached.get(&disk) != Some(&identity) {
            link.push(&Frame::DiskAttach { disk_id: disk as u32, disk: info });
            self.target.attached.insert(disk, identity);
        }
        // Exact growth: doubling a multi-MiB buffer would hold memory it never uses.
        link.outbox.reserve_exact(wire::limits::FRAME_HEADER_BYTES + body.len());
        wire::encode_raw_frame(frame_type, Some(disk as u32), body, &mut link.outbox)
            .map_err(record_error)?;
        self.disks.list[disk].bytes_forwarded += body.len() as u64;
        Ok(())
    }

    fn on_target_frame(&mut self, link_id: u64, frame: Frame<'_>) {
        match frame {
            Frame::Hello(hello) => {
                if let Err(error) = wire::negotiate_version(hello.version_min, hello.version_max) {
                    self.fail_conn(link_id, &ConnError::Wire(error));
                    return;
                }
                log::info!(
                    "connected to target {} (version {})",
                    self.options.target,
                    hello.product_version
                );
                self.target.failures = 0;
                if let Some(conn) = self.conns.get_mut(&link_id) {
                    conn.role = ConnRole::Target { greeted: true };
                    conn.peer_identity = Some(identity_of(&hello));
                }
            }
            Frame::Ack(entries) => {
                for entry in entries {
                    let Some(disk) = self.disks.list.get_mut(entry.disk_id as usize) else {
                        continue;
                    };
                    if !disk.position_known {
                        // Nothing was accepted for this disk yet: continue the target's count.
                        if entry.durable_seq > 0 {
                            log::warn!(
                                "disk {}: the target holds sequence {}, which this relay had no record of (a lost or new cache); continuing from there",
                                disk.name,
                                entry.durable_seq
                            );
                        }
                        disk.received_seq = entry.durable_seq;
                        disk.cache_seq = entry.durable_seq;
                        disk.replicated_seq = entry.durable_seq;
                        disk.position_known = true;
                        continue;
                    }
                    if entry.durable_seq > disk.replicated_seq {
                        disk.replicated_seq =
                            entry.durable_seq.min(disk.cache_seq.max(disk.replicated_seq));
                        disk.ack_due = true;
                    }
                }
                self.free_segments();
            }
            Frame::Checksums(sums) => {
                let Some(disk) = self.disks.list.get(sums.disk_id as usize) else { return };
                let Some((conn_id, disk_id)) = disk.agent else { return };
                if let Some(conn) = self.conns.get_mut(&conn_id).filter(|conn| !conn.closing) {
                    conn.push(&Frame::Checksums(wire::Checksums { disk_id, ..sums }));
                }
            }
            Frame::Error { code, message } => {
                log::error!("target reported error {code}: {message}")
            }
            // The target's answer to a group confirmation.
            Frame::Status { .. } => {}
            other => {
                let error = protocol(
                    error_code::PROTOCOL,
                    format!("unexpected {} frame from target", other.frame_type().name()),
                );
                self.fail_conn(link_id, &error);
            }
        }
    }

    fn free_segments(&mut self) {
        match self.cache.free_replicated(&self.disks, self.forward.segment) {
            Ok(0) => {}
            Ok(bytes) => log::debug!("freed {bytes} bytes of cache"),
            Err(error) => log::error!("cannot free cache segments: {error}"),
        }
    }

    /// Starts due consistency-group rounds and ends overdue ones.
    fn coordinate_groups(&mut self, now: Instant) {
        let now_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let mut out = Vec::new();
        let (disks, conns) = (&self.disks, &self.conns);
        let owner = |name: &str| {
            let disk = &disks.list[disks.find(name)?];
            let (conn, _) = disk.agent?;
            conns.get(&conn).filter(|conn| !conn.closing).map(|_| conn)
        };
        for group in &mut self.groups {
            group.tick(now, now_unix_ms, owner, &mut out);
        }
        self.send_group_messages(out);
    }

    /// An agent's answer to a group hold.
    fn on_agent_answer(&mut self, id: u64, json: &str) {
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(json) else {
            log::warn!("connection {id}: malformed answer {json}");
            return;
        };
        let (Some("group-held"), Some(name), Some(marker_id)) =
            (answer["op"].as_str(), answer["group"].as_str(), answer["marker_id"].as_u64())
        else {
            log::warn!("connection {id}: unexpected answer {json}");
            return;
        };
        let ok = answer["ok"].as_bool() == Some(true);
        let mut out = Vec::new();
        if let Some(group) = self.groups.iter_mut().find(|group| group.options.name == name) {
            group.on_held(id, marker_id, ok, &mut out);
        }
        self.send_group_messages(out);
    }

    fn send_group_messages(&mut self, out: Vec<crate::groups::Outgoing>) {
        for message in out {
            let conn = message.conn.or(self.target.conn);
            match conn.and_then(|conn| self.conns.get_mut(&conn)).filter(|conn| !conn.closing) {
                Some(conn) => conn.push(&Frame::Control { json: &message.json }),
                None if message.conn.is_none() => log::warn!(
                    "the target is not connected: a group point stays unconfirmed ({})",
                    message.json
                ),
                None => {}
            }
        }
    }

    fn on_tick(&mut self) -> Result<(), RelayError> {
        self.ring.submit(tag(KIND_TICK, 0), uring::timeout(TICK_INTERVAL))?;
        let now = Instant::now();
        self.coordinate_groups(now);
        self.drop_silent_handshakes(now);
        if now >= self.next_heartbeat {
            self.heartbeat(now);
        }
        if self.target.conn.is_none()
            && self.target.connecting.is_none()
            && Instant::now() >= self.target.retry_at
        {
            self.connect_target()?;
        }
        Ok(())
    }

    /// Closes connections that did not complete their Hello within `HELLO_TIMEOUT`.
    fn drop_silent_handshakes(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                conn.role == ConnRole::New
                    && !conn.closing
                    && now.duration_since(conn.accepted) > HELLO_TIMEOUT
            })
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let seconds = HELLO_TIMEOUT.as_secs();
            let error = protocol(error_code::PROTOCOL, format!("no Hello within {seconds} s"));
            self.fail_conn(id, &error);
        }
    }

    /// Sends a heartbeat on every connection and closes the target link if the target has been
    /// silent for `HEARTBEATS_MISSED_MAX` intervals (it answers each heartbeat).
    fn heartbeat(&mut self, now: Instant) {
        let interval = Duration::from_secs(self.options.heartbeat_secs.max(1));
        self.next_heartbeat = now + interval;
        let time_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let mut silent = None;
        for (&id, conn) in self.conns.iter_mut().filter(|(_, conn)| !conn.closing) {
            conn.push(&Frame::Heartbeat { time_unix_ms });
            let is_target = matches!(conn.role, ConnRole::Target { .. });
            if is_target && now.duration_since(conn.last_heard) > interval * HEARTBEATS_MISSED_MAX {
                silent = Some(id);
            }
        }
        if let Some(id) = silent {
            let seconds = (interval * HEARTBEATS_MISSED_MAX).as_secs();
            let error = protocol(error_code::PROTOCOL, format!("target silent for {seconds} s"));
            self.fail_conn(id, &error);
        }
    }

    fn connect_target(&mut self) -> Result<(), RelayError> {
        let addr = self.options.target;
        let socket = uring::tcp_socket(&addr)
            .map_err(io_error("create a socket for", std::path::Path::new("target")))?;
        let fd = socket.as_raw_fd();
        self.target.connecting = Some(socket);
        self.ring
            .submit(tag(KIND_CONNECT, 0), Op::Connect { fd, addr: uring::SockAddr::new(addr) })?;
        Ok(())
    }

    fn on_connect(&mut self, completion: &Completion) -> Result<(), RelayError> {
        let socket =
            self.target.connecting.take().expect("a connect completes a connecting socket");
        if let Err(error) = completion.io_result() {
            self.target.failures += 1;
            if self.target.failures == 1 || self.target.failures.is_multiple_of(30) {
                log::warn!(
                    "target {} unreachable: {error}; retrying every {} s",
                    self.options.target,
                    TARGET_RETRY_INTERVAL.as_secs()
                );
            }
            self.target.retry_at = Instant::now() + TARGET_RETRY_INTERVAL;
            return Ok(());
        }
        let stream = TcpStream::from(socket);
        let _ = stream.set_nodelay(true);
        let id = self.new_conn_id();
        let mut conn = Conn::new(stream, ConnRole::Target { greeted: false });
        if let Some(config) = &self.options.upstream_tls {
            match rustls::ClientConnection::new(config.clone(), pki::server_name()) {
                Ok(mut tls) => {
                    tls.set_buffer_limit(None);
                    conn.tls = Some(tls.into());
                }
                Err(error) => log::error!("target link: TLS: {error}"),
            }
        }
        conn.push(&Frame::Hello(wire::Hello::ours(Role::Relay, "relay", Vec::new())));
        self.conns.insert(id, conn);
        self.target.conn = Some(id);
        self.target.attached.clear();
        // Resend everything still cached; the target drops what it already holds.
        self.forward.segment = self.cache.segments.front().map_or(0, |segment| segment.index);
        self.forward.offset = 0;
        self.forward.want_bytes = 0;
        Ok(())
    }

    fn on_send(&mut self, id: u64, completion: Completion) -> Result<(), RelayError> {
        let result = completion.io_result();
        let Op::Send { fd, buf, start } = completion.op else {
            unreachable!("send tag on another op")
        };
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        match result {
            Ok(sent) if sent > 0 && start + sent < buf.len() => {
                conn.send_in_flight = buf.len() - start - sent;
                self.ring.submit(tag(KIND_SEND, id), Op::Send { fd, buf, start: start + sent })?;
            }
            Ok(sent) if sent > 0 => {
                conn.send_in_flight = 0;
                let mut buf = buf;
                buf.clear();
                conn.spare = buf;
            }
            result => {
                if !conn.closing {
                    log::debug!("connection {id} from {}: send failed: {result:?}", conn.peer);
                }
                conn.send_in_flight = 0;
                conn.outbox.clear();
                conn.closing = true;
            }
        }
        Ok(())
    }

    /// Arms receives and sends, applies backpressure, and retires closed connections.
    fn pump_conns(&mut self) -> Result<(), RelayError> {
        let cache_full = self.cache.bytes_used() >= self.cache.bytes_max;
        if cache_full != self.cache_full {
            self.cache_full = cache_full;
            let (used, max) = (self.cache.bytes_used(), self.cache.bytes_max);
            if cache_full {
                log::warn!("cache full ({used} of {max} bytes): agents wait until the target acknowledges and segments are freed");
            } else {
                log::info!("cache has room again ({used} of {max} bytes): agents resume");
            }
        }
        let throttled = self.cache.pending.len() >= self.options.group_commit_bytes_max
            || self.pool.in_flight + self.ready.len() >= self.pool_jobs_max
            || cache_full;
        let mut retired = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            if conn.send_in_flight == 0 && conn.wants_send() {
                let spare = std::mem::take(&mut conn.spare);
                let buf = conn.seal(spare);
                if buf.is_empty() {
                    conn.spare = buf;
                } else {
                    conn.send_in_flight = buf.len();
                    self.ring.submit(
                        tag(KIND_SEND, id),
                        Op::Send { fd: conn.stream.as_raw_fd(), buf, start: 0 },
                    )?;
                }
            }
            if conn.closing {
                let since = *conn.closing_seen.get_or_insert_with(Instant::now);
                if conn.send_in_flight == 0 || since.elapsed() > CLOSE_GRACE {
                    // Wakes an in-flight receive (and fails a send the peer never takes) so
                    // the connection can be retired.
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    if conn.idle() {
                        retired.push(id);
                    }
                }
                continue;
            }
            let backlogged = !matches!(conn.role, ConnRole::Target { .. })
                && conn.queued() >= CONN_QUEUE_BYTES_MAX;
            let paused = (conn.role == ConnRole::Agent && throttled) || backlogged;
            if !paused {
                if let Some(buf) = conn.recv_buf.take() {
                    self.ring.submit(
                        tag(KIND_RECV, id),
                        Op::Recv { fd: conn.stream.as_raw_fd(), buf },
                    )?;
                }
            }
        }
        for id in retired {
            self.retire(id);
        }
        Ok(())
    }

    fn retire(&mut self, id: u64) {
        let conn = self.conns.remove(&id).expect("retiring a live connection");
        let mut out = Vec::new();
        for group in &mut self.groups {
            group.on_closed(id, &mut out);
        }
        self.send_group_messages(out);
        for disk in self.disks.list.iter_mut() {
            if disk.agent.is_some_and(|(owner, _)| owner == id) {
                disk.agent = None;
                // A capturing agent that vanished may be writing into its bitmap or have
                // crashed (a resync follows): never keep claiming protection for it.
                if let Some((state, done, total)) = disk.reported_state {
                    if matches!(
                        state,
                        DiskStateKind::Protected
                            | DiskStateKind::Resyncing
                            | DiskStateKind::InitialSync
                    ) {
                        disk.reported_state = Some((DiskStateKind::Disconnected, done, total));
                    }
                }
            }
        }
        if self.target.conn == Some(id) {
            log::warn!("target link {} closed; reconnecting", conn.peer);
            self.target.conn = None;
            self.target.retry_at = Instant::now() + TARGET_RETRY_INTERVAL;
        } else {
            log::debug!("connection {id} from {} closed", conn.peer);
        }
    }
}

fn identity_of(hello: &wire::Hello<'_>) -> wire::Identity {
    wire::Identity {
        product_version: hello.product_version.to_string(),
        site_id: hello.site_id.to_string(),
        node_id: hello.node_id.to_string(),
    }
}

fn check_disk_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.starts_with('.') {
        return Err("must not be empty or start with '.'");
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        return Err("may only use A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

impl Relay {
    pub(crate) fn target_address(&self) -> std::net::SocketAddr {
        self.options.target
    }

    /// The target's identity from its Hello, while connected.
    pub(crate) fn target_identity(&self) -> Option<&wire::Identity> {
        self.target.conn.and_then(|id| self.conns.get(&id)).and_then(|c| c.peer_identity.as_ref())
    }

    /// The identities of the connected agents.
    pub(crate) fn agent_identities(&self) -> Vec<&wire::Identity> {
        self.conns
            .values()
            .filter(|conn| conn.role == ConnRole::Agent)
            .filter_map(|conn| conn.peer_identity.as_ref())
            .collect()
    }

    /// Runs without TLS towards its agents (`[security] plaintext`).
    pub(crate) fn plaintext(&self) -> bool {
        self.options.tls.is_none()
    }

    pub(crate) fn target_connected(&self) -> bool {
        self.target.conn.is_some_and(|id| {
            self.conns.get(&id).is_some_and(|conn| conn.role == ConnRole::Target { greeted: true })
        })
    }
}
