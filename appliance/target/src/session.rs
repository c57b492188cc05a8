//! One connection from a relay (or an operator's `status`). Frames are handled in arrival order;
//! writes are staged and made durable together at the end of each read (group commit), before
//! anything that must observe them (a checksum request, a disk attach) and before the ack.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wire::{error_code, AckEntry, Frame, FrameReader, FrameType, RawFrame, Role, WireError};

use crate::error::TargetError;
use crate::replica::Replica;
use crate::Store;

const READ_BUFFER_BYTES: usize = 256 << 10;
const IDLE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A peer that has not completed its Hello this long after connecting is dropped: a
/// half-open or trickling handshake must not hold a connection (slowloris).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message}")]
    Protocol { code: u16, message: String },
}

struct Session<'a> {
    id: u64,
    store: &'a Arc<Store>,
    transport: pki::Transport,
    /// Who the peer is by its certificate, and so what it may do.
    access: pki::Access,
    peer: String,
    tls: Option<Arc<pki::Authority>>,
    out: Vec<u8>,
    greeted: bool,
    disks: HashMap<u32, Arc<Mutex<Replica>>>,
    refused: HashSet<u32>,
    /// Disks with records staged by this session.
    staged: BTreeSet<u32>,
    staged_bytes: usize,
    /// Staged bytes after which a flush happens even if more frames are buffered.
    staged_bytes_max: usize,
}

pub(crate) fn serve(
    id: u64,
    stream: TcpStream,
    store: &Arc<Store>,
    staged_bytes_max: usize,
    tls: Option<Arc<pki::Authority>>,
) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |addr| addr.to_string());
    log::debug!("connection {id} from {peer}");
    let result = run(id, stream, &peer, store, staged_bytes_max, tls);
    store.peers.lock().expect("peers lock").remove(&id);
    match result {
        Ok(()) => log::debug!("connection {id} from {peer} closed"),
        Err(SessionError::Io(error)) => log::warn!("connection {id} from {peer}: {error}"),
        // Logged with the peer's identity where it was decided (`Session::refuse`).
        Err(SessionError::Protocol { code: error_code::REFUSED, .. }) => {}
        Err(error) => log::error!("connection {id} from {peer}: {error}"),
    }
}

fn run(
    id: u64,
    stream: TcpStream,
    peer: &str,
    store: &Arc<Store>,
    staged_bytes_max: usize,
    tls: Option<Arc<pki::Authority>>,
) -> Result<(), SessionError> {
    stream.set_nodelay(true)?;
    // The handshake counts against the Hello deadline (a peer trickling it is dropped).
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let transport = match pki::Transport::server(stream, tls.as_ref().map(|a| a.server_config())) {
        Ok(transport) => transport,
        Err(error) => {
            log::warn!("connection {id} from {peer}: refused: {error}");
            return Ok(());
        }
    };
    transport.tcp().set_read_timeout(Some(IDLE_POLL_INTERVAL))?;
    let access = match &tls {
        None => pki::Access::Plaintext,
        Some(authority) => match authority.identify(transport.peer_certificates()) {
            Ok(peer) => pki::Access::Tls(peer),
            Err(reason) => {
                let mut transport = transport;
                log::warn!("connection {id} from {peer}: refused: {reason}");
                let mut out = Vec::new();
                let frame = Frame::Error { code: error_code::REFUSED, message: &reason };
                if frame.encode(&mut out).is_ok() {
                    let _ = transport.write_all(&out);
                }
                return Ok(());
            }
        },
    };
    let mut session = Session {
        id,
        store,
        transport,
        access,
        peer: peer.to_string(),
        tls,
        out: Vec::new(),
        greeted: false,
        disks: HashMap::new(),
        refused: HashSet::new(),
        staged: BTreeSet::new(),
        staged_bytes: 0,
        staged_bytes_max,
    };
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let accepted = std::time::Instant::now();
    loop {
        if !session.greeted && accepted.elapsed() > HELLO_TIMEOUT {
            let error = SessionError::Protocol {
                code: error_code::PROTOCOL,
                message: format!("no Hello within {} s", HELLO_TIMEOUT.as_secs()),
            };
            session.send_error(&error);
            return Err(error);
        }
        let received = match session.transport.read(&mut buf) {
            Ok(0) => {
                warn_if_mid_frame(&reader);
                return session.flush();
            }
            Ok(received) => received,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(error) => {
                // The peer is gone; still commit what it sent, so a retransmission finds it
                // durable (best effort: the ack cannot be delivered).
                let _ = session.flush();
                return Err(error.into());
            }
        };
        reader.feed(&buf[..received]);
        let result = drain_frames(&mut session, &mut reader)
            .and_then(|()| drain_queued(&mut session, &mut reader, &mut buf))
            .and_then(|open| session.flush().map(|()| open));
        match result {
            Ok(true) => {}
            Ok(false) => {
                warn_if_mid_frame(&reader);
                return Ok(());
            }
            Err(error) => {
                session.send_error(&error);
                return Err(error);
            }
        }
    }
}

fn warn_if_mid_frame(reader: &FrameReader) {
    if reader.buffered_len() > 0 {
        let pending = reader.buffered_len();
        log::warn!("peer closed mid-frame, {pending} bytes of an incomplete frame discarded");
    }
}

/// Handles everything the peer has already queued, so one group commit (one fdatasync) covers
/// as much as possible instead of one read's worth. Returns false when the peer closed.
fn drain_queued(
    session: &mut Session<'_>,
    reader: &mut FrameReader,
    buf: &mut [u8],
) -> Result<bool, SessionError> {
    while session.staged_bytes < session.staged_bytes_max {
        match session.transport.read_queued(buf) {
            Ok(0) => return Ok(false),
            Ok(received) => {
                reader.feed(&buf[..received]);
                drain_frames(session, reader)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(true)
}

fn drain_frames(session: &mut Session<'_>, reader: &mut FrameReader) -> Result<(), SessionError> {
    while let Some((raw, used)) = reader.peek()? {
        session.handle(raw)?;
        reader.consume(used);
    }
    Ok(())
}

impl Session<'_> {
    fn handle(&mut self, raw: RawFrame<'_>) -> Result<(), SessionError> {
        if !self.greeted && raw.frame_type != FrameType::Hello {
            return Err(protocol(
                error_code::PROTOCOL,
                format!("expected Hello, got {}", raw.frame_type.name()),
            ));
        }
        if let Err(reason) = self.access.check_frame(raw.frame_type) {
            return Err(self.refuse(reason));
        }
        match raw.decode()? {
            Frame::Hello(hello) => self.on_hello(&hello),
            Frame::Register(request) => self.on_register(&request),
            Frame::DiskAttach { disk_id, disk } => self.on_attach(disk_id, &disk),
            Frame::Writes(writes) => self.on_sequenced(writes.disk_id, writes.seq, raw),
            Frame::Marker(marker) => self.on_sequenced(marker.disk_id, marker.seq, raw),
            Frame::ChecksumRequest(request) => self.on_checksum_request(&request),
            Frame::StatusRequest => {
                let json = self.store.status_json(self.tls.is_none());
                self.push(&Frame::Status { json: &json })
            }
            Frame::Control { json } => match crate::control::handle(self.store, json) {
                Ok(reply) => self.push(&Frame::Status { json: &reply }),
                Err(message) => {
                    log::warn!("control request refused: {message}");
                    self.push(&Frame::Error { code: error_code::REFUSED, message: &message })
                }
            },
            // Answered so the relay can tell a live but idle target from a cut link.
            Frame::Heartbeat { time_unix_ms } => self.push(&Frame::Heartbeat { time_unix_ms }),
            Frame::Error { code, message } => {
                log::warn!("peer reported error {code}: {message}");
                Ok(())
            }
            other => Err(protocol(
                error_code::PROTOCOL,
                format!("unexpected {} frame", other.frame_type().name()),
            )),
        }
    }

    fn on_hello(&mut self, hello: &wire::Hello<'_>) -> Result<(), SessionError> {
        if self.greeted {
            return Err(protocol(error_code::PROTOCOL, "second Hello on one connection".into()));
        }
        wire::negotiate_version(hello.version_min, hello.version_max)?;
        if let Err(reason) = self.access.check_hello(hello.role) {
            return Err(self.refuse(reason));
        }
        self.greeted = true;
        if hello.role == Role::Relay {
            let identity = wire::Identity {
                product_version: hello.product_version.to_string(),
                site_id: hello.site_id.to_string(),
                node_id: hello.node_id.to_string(),
            };
            self.store.peers.lock().expect("peers lock").insert(self.id, identity);
        }
        log::info!(
            "{:?} {} (version {}) connected",
            hello.role,
            hello.node_id,
            hello.product_version
        );
        self.push(&Frame::Hello(wire::Hello::ours(Role::Target, "target", Vec::new())))
    }

    fn on_attach(&mut self, disk_id: u32, disk: &wire::DiskInfo<'_>) -> Result<(), SessionError> {
        self.flush()?;
        match self.store.attach(disk) {
            Ok(replica) => {
                let durable = replica.lock().expect("replica lock").durable_seq;
                self.disks.insert(disk_id, replica);
                self.refused.remove(&disk_id);
                self.push(&Frame::Ack(vec![AckEntry {
                    disk_id,
                    durable_seq: durable,
                    replicated_seq: durable,
                }]))
            }
            Err(
                error @ (TargetError::GenerationMismatch { .. }
                | TargetError::Broken { .. }
                | TargetError::FailedOver { .. }),
            ) => {
                // Other disks on this link keep replicating; this one's frames stay in the
                // relay's cache until an operator resolves the mismatch.
                log::error!("{error}");
                self.disks.remove(&disk_id);
                self.refused.insert(disk_id);
                let message = error.to_string();
                self.push(&Frame::Error { code: error_code::GENERATION, message: &message })
            }
            Err(error) => Err(error.into()),
        }
    }

    fn on_sequenced(
        &mut self,
        disk_id: u32,
        seq: u64,
        raw: RawFrame<'_>,
    ) -> Result<(), SessionError> {
        if self.refused.contains(&disk_id) {
            return Ok(());
        }
        let Some(replica) = self.disks.get(&disk_id) else {
            return Err(protocol(
                error_code::UNKNOWN_DISK,
                format!(
                    "{} for disk id {disk_id}, which was never attached",
                    raw.frame_type.name()
                ),
            ));
        };
        let mut replica = replica.lock().expect("replica lock");
        if let Some(record) = &replica.failover {
            // Failed over while this link was attached: nothing more is taken (or acked).
            let error = TargetError::FailedOver {
                disk: replica.name.clone(),
                point: record.point,
                phase: record.phase.as_str(),
            };
            drop(replica);
            log::warn!("{error}");
            self.refused.insert(disk_id);
            let message = error.to_string();
            return self.push(&Frame::Error { code: error_code::GENERATION, message: &message });
        }
        let expected = replica.staged_seq + 1;
        if seq < expected {
            // A retransmission after a reconnect. If an earlier session staged it but died
            // before its group commit, this session commits it, or it would never be acked.
            if seq > replica.durable_seq {
                self.staged.insert(disk_id);
            }
            return Ok(());
        }
        if seq > expected {
            let message =
                format!("disk {}: sequence gap, expected {expected}, got {seq}", replica.name);
            return Err(protocol(error_code::SEQUENCE, message));
        }
        replica.stage(raw.frame_type, raw.body, seq)?;
        let staged_data = replica.staged_data_bytes();
        drop(replica);
        self.staged_bytes += raw.body.len();
        self.staged.insert(disk_id);
        // Both bounds matter: journal bytes per fsync, and decompressed bytes held in memory.
        if self.staged_bytes.max(staged_data) >= self.staged_bytes_max {
            self.flush()?;
        }
        Ok(())
    }

    fn on_checksum_request(&mut self, request: &wire::ChecksumRequest) -> Result<(), SessionError> {
        self.flush()?;
        if self.refused.contains(&request.disk_id) {
            return Ok(());
        }
        let Some(replica) = self.disks.get(&request.disk_id) else {
            return Err(protocol(
                error_code::UNKNOWN_DISK,
                format!("checksum request for unattached disk id {}", request.disk_id),
            ));
        };
        let mut sums =
            Vec::with_capacity(request.block_count as usize * wire::limits::CHECKSUM_BYTES);
        replica.lock().expect("replica lock").checksums(
            request.offset,
            request.block_bytes,
            request.block_count,
            &mut sums,
        )?;
        self.push(&Frame::Checksums(wire::Checksums {
            disk_id: request.disk_id,
            request_id: request.request_id,
            offset: request.offset,
            block_bytes: request.block_bytes,
            sums: &sums,
        }))
    }

    /// Journal, fdatasync, ack: an ack means durable. Then, where a new point may let the
    /// base move (short retention), one pruning step right away, so a replica image with
    /// nothing to retain is current as soon as its writes are acked (and `cmp` right after
    /// `agent --once` compares what it should).
    fn flush(&mut self) -> Result<(), SessionError> {
        let staged = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        let mut acks = Vec::with_capacity(staged.len());
        let mut marked = Vec::new();
        for &disk_id in &staged {
            let mut replica = self.disks[&disk_id].lock().expect("replica lock");
            let consistent = replica.consistent;
            replica.flush_journal()?;
            if replica.consistent != consistent {
                marked.push(disk_id);
            }
            let durable = replica.durable_seq;
            acks.push(AckEntry { disk_id, durable_seq: durable, replicated_seq: durable });
        }
        if !acks.is_empty() {
            self.push(&Frame::Ack(acks))?;
        }
        self.send()?;
        for disk_id in marked {
            self.disks[&disk_id].lock().expect("replica lock").maintain(crate::now_unix_ms())?;
        }
        Ok(())
    }

    fn push(&mut self, frame: &Frame<'_>) -> Result<(), SessionError> {
        frame.encode(&mut self.out)?;
        Ok(())
    }

    fn send(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.transport.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// A refusal: logged here with the peer's identity, sent to the peer by `send_error`.
    fn refuse(&self, reason: String) -> SessionError {
        log::warn!(
            "connection {} from {} ({}): refused: {reason}",
            self.id,
            self.peer,
            self.access
        );
        protocol(error_code::REFUSED, reason)
    }

    /// Issues a certificate to a node that proves a passphrase of this target.
    fn on_register(&mut self, request: &wire::Register<'_>) -> Result<(), SessionError> {
        let authority = self.tls.clone().expect("Register is refused without TLS");
        let exporter = self.transport.exporter(pki::register::EXPORTER_LABEL)?;
        match authority.register(request, &exporter) {
            Ok(pki::Issued { ca, cert, proof }) => {
                log::info!(
                    "connection {} from {}: registered relay {:?}",
                    self.id,
                    self.peer,
                    request.name
                );
                self.push(&Frame::Registered { ca: &ca, cert: &cert, proof: &proof })
            }
            Err(reason) => {
                Err(self.refuse(format!("registration of {:?}: {reason}", request.name)))
            }
        }
    }

    /// Best effort: tell the peer why we close, so its log names the problem too.
    fn send_error(&mut self, error: &SessionError) {
        let code = match error {
            SessionError::Protocol { code, .. } => *code,
            SessionError::Wire(_) => error_code::PROTOCOL,
            _ => error_code::INTERNAL,
        };
        let mut message = error.to_string();
        message.truncate(wire::limits::TEXT_BYTES_MAX);
        self.out.clear();
        if (Frame::Error { code, message: &message }).encode(&mut self.out).is_ok() {
            let _ = self.send();
        }
    }
}

fn protocol(code: u16, message: String) -> SessionError {
    SessionError::Protocol { code, message }
}
