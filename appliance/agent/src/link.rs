//! The agent's connection to its relay: handshake, a bounded window of unacknowledged frames
//! kept for retransmission, and reconnection. Acks from the relay free the window (the frames
//! are durable in the relay's cache); acks it relays from the target tell when a disk is
//! replicated. A reader thread turns incoming frames into events.

use std::collections::{HashMap, VecDeque};

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::{Frame, FrameReader, Generation, Role};

use crate::error::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Acknowledged frame buffers kept for reuse.
const SPARE_FRAMES_MAX: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct LinkDisk {
    pub(crate) name: String,
    pub(crate) generation: Generation,
    pub(crate) size_bytes: u64,
    pub(crate) take_over: bool,
    /// The generation has sent nothing yet (see `wire::DiskInfo::fresh`); cleared once
    /// connected, since frames may follow.
    pub(crate) fresh: bool,
}

#[derive(Debug, Default)]
struct DiskWindow {
    /// Next sequence number to assign.
    next_seq: u64,
    /// Highest sequence durable in the relay's cache.
    durable_seq: u64,
    /// Highest sequence durable at the target.
    replicated_seq: u64,
    unacked: VecDeque<(u64, Vec<u8>)>,
}

#[derive(Debug)]
enum Event {
    Ack(Vec<wire::AckEntry>),
    Checksums {
        request_id: u64,
        sums: Vec<u8>,
    },
    Error {
        code: u16,
        message: String,
    },
    Closed(String),
    /// A request of the relay (JSON), e.g. a consistency-group hold.
    Control(String),
}

#[derive(Debug)]
pub(crate) struct Link {
    addr: SocketAddr,
    node_id: String,
    disks: Vec<LinkDisk>,
    windows: Vec<DiskWindow>,
    window_bytes: usize,
    window_bytes_max: usize,
    reconnect_timeout: Duration,
    stream: Option<pki::stream::TransportWriter>,
    tls: Option<Arc<rustls::ClientConfig>>,
    events: Option<Receiver<Event>>,
    /// Checksum requests not yet answered, resent after a reconnect: (disk, encoded frame).
    open_requests: HashMap<u64, (usize, Vec<u8>)>,
    answers: HashMap<u64, Vec<u8>>,
    /// Requests the relay sent (consistency-group holds), for the replicator to act on.
    controls: Vec<String>,
    next_request_id: u64,
    spare_frames: Vec<Vec<u8>>,
    /// Set while connected; the write tap reads it to bypass the buffer while the relay is away.
    up: Arc<AtomicBool>,
    /// Set when the agent is shutting down: reconnecting stops.
    stop: Arc<AtomicBool>,
    /// Counts successful connections: a new one means the relay may have restarted and
    /// forgotten what it was told (disk states).
    connections: u64,
    resync_on_loss: bool,
    /// Disks whose acknowledged frames the relay lost, waiting for the caller to resync them.
    lost: Vec<usize>,
}

/// How a link behaves when the relay is away.
#[derive(Debug, Clone)]
pub(crate) struct LinkPolicy {
    pub(crate) window_bytes_max: usize,
    /// Give up reconnecting after this long (`Duration::MAX`: never).
    pub(crate) reconnect_timeout: Duration,
    pub(crate) up: Arc<AtomicBool>,
    pub(crate) stop: Arc<AtomicBool>,
    /// When the relay lost frames it had acknowledged (its cache was lost), drop them and
    /// report the disk through `take_lost` for a resync, instead of failing.
    pub(crate) resync_on_loss: bool,
    /// The registered credential, or `None` to connect plaintext.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Link {
    pub(crate) fn connect(
        addr: SocketAddr,
        node_id: String,
        disks: Vec<LinkDisk>,
        policy: LinkPolicy,
    ) -> Result<Link, AgentError> {
        let windows = disks.iter().map(|_| DiskWindow::default()).collect();
        let mut link = Link {
            addr,
            node_id,
            disks,
            windows,
            window_bytes: 0,
            window_bytes_max: policy.window_bytes_max,
            reconnect_timeout: policy.reconnect_timeout,
            stream: None,
            tls: policy.tls,
            events: None,
            open_requests: HashMap::new(),
            answers: HashMap::new(),
            controls: Vec::new(),
            next_request_id: 1,
            spare_frames: Vec::new(),
            up: policy.up,
            stop: policy.stop,
            connections: 0,
            resync_on_loss: policy.resync_on_loss,
            lost: Vec::new(),
        };
        link.reconnect()?;
        Ok(link)
    }

    /// (Re)establishes the connection, retrying until `reconnect_timeout` has passed.
    fn reconnect(&mut self) -> Result<(), AgentError> {
        self.up.store(false, Ordering::Relaxed);
        if let Some(stream) = self.stream.take() {
            let _ = stream.tcp().shutdown(Shutdown::Both);
        }
        self.events = None;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(AgentError::Stopped);
            }
            let error = match self.try_connect() {
                Ok(()) => {
                    self.up.store(true, Ordering::Relaxed);
                    self.connections += 1;
                    for disk in &mut self.disks {
                        disk.fresh = false;
                    }
                    return Ok(());
                }
                Err(error @ (AgentError::Refused(_) | AgentError::RelayLostData { .. })) => {
                    return Err(error)
                }
                Err(error) => error,
            };
            attempts += 1;
            if attempts == 1 || attempts.is_multiple_of(25) {
                log::warn!("relay {} not reachable ({error}); retrying", self.addr);
            }
            if started.elapsed() >= self.reconnect_timeout {
                return Err(AgentError::RelayUnreachable {
                    addr: self.addr,
                    seconds: self.reconnect_timeout.as_secs(),
                    last_error: error.to_string(),
                });
            }
            std::thread::sleep(RECONNECT_PAUSE);
        }
    }

    fn try_connect(&mut self) -> Result<(), AgentError> {
        let io = |source| AgentError::Protocol(format!("connect: {source}"));
        let tcp = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
        let transport = pki::Transport::client(tcp, self.tls.clone())
            .map_err(|error| AgentError::Protocol(format!("{}: {error}", self.addr)))?;
        transport.tcp().set_read_timeout(None).map_err(io)?;
        let (reader, mut stream) = transport.split().map_err(io)?;
        let disks: Vec<wire::DiskInfo<'_>> = self
            .disks
            .iter()
            .map(|disk| wire::DiskInfo {
                name: &disk.name,
                generation: disk.generation,
                size_bytes: disk.size_bytes,
                take_over: disk.take_over,
                fresh: disk.fresh,
            })
            .collect();
        let mut hello = Vec::new();
        Frame::Hello(wire::Hello::ours(Role::Agent, &self.node_id, disks)).encode(&mut hello)?;
        stream.write_all(&hello).map_err(io)?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("agent-link-reader".into())
            .spawn(move || read_events(reader, &sender))
            .map_err(io)?;
        // The relay answers Hello with Hello and then one Ack covering every disk.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let acks = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(remaining) {
                Ok(Event::Ack(entries)) => break entries,
                Ok(Event::Error { code, message }) if code == wire::error_code::BUSY => {
                    return Err(AgentError::Protocol(message))
                }
                Ok(Event::Error { code, message }) => {
                    return Err(AgentError::Refused(format!("{message} (code {code})")))
                }
                Ok(Event::Closed(reason)) => return Err(AgentError::Protocol(reason)),
                Ok(Event::Checksums { .. } | Event::Control(_)) => {}
                Err(_) => return Err(AgentError::Protocol("no handshake answer".into())),
            }
        };
        self.stream = Some(stream);
        self.events = Some(receiver);
        self.resume(&acks)
    }

    /// After a (re)connect: adopt the relay's positions and resend what it does not hold.
    fn resume(&mut self, acks: &[wire::AckEntry]) -> Result<(), AgentError> {
        for ack in acks {
            let index = ack.disk_id as usize;
            let Some(window) = self.windows.get_mut(index) else { continue };
            let first_needed = window.unacked.front().map_or(window.next_seq, |(seq, _)| *seq);
            if window.unacked.is_empty() && window.next_seq == 0 {
                // First contact: continue the relay's sequence for this generation.
                window.next_seq = ack.durable_seq + 1;
            } else if ack.durable_seq + 1 < first_needed && self.resync_on_loss {
                log::warn!(
                    "disk {}: the relay holds sequence {} but frames from {first_needed} were acknowledged: it lost its cache; resyncing the disk",
                    self.disks[index].name,
                    ack.durable_seq
                );
                let dropped: usize = window.unacked.drain(..).map(|(_, frame)| frame.len()).sum();
                self.window_bytes -= dropped;
                window.next_seq = ack.durable_seq + 1;
                window.durable_seq = ack.durable_seq;
                self.lost.push(index);
            } else if ack.durable_seq + 1 < first_needed {
                return Err(AgentError::RelayLostData {
                    disk: self.disks[index].name.clone(),
                    relay_seq: ack.durable_seq,
                    needed: first_needed,
                });
            }
            window.replicated_seq = window.replicated_seq.max(ack.replicated_seq);
        }
        self.on_ack(acks);
        let mut resend = Vec::new();
        for window in &self.windows {
            resend.extend(window.unacked.iter().map(|(_, frame)| frame.clone()));
        }
        resend.extend(self.open_requests.values().map(|(_, frame)| frame.clone()));
        for frame in resend {
            self.write_raw(&frame);
        }
        Ok(())
    }

    fn on_ack(&mut self, acks: &[wire::AckEntry]) {
        for ack in acks {
            let Some(window) = self.windows.get_mut(ack.disk_id as usize) else { continue };
            window.durable_seq = window.durable_seq.max(ack.durable_seq);
            window.replicated_seq = window.replicated_seq.max(ack.replicated_seq);
            while window.unacked.front().is_some_and(|(seq, _)| *seq <= window.durable_seq) {
                let (_, frame) = window.unacked.pop_front().expect("front checked");
                self.window_bytes -= frame.len();
                if self.spare_frames.len() < SPARE_FRAMES_MAX {
                    self.spare_frames.push(frame);
                }
            }
        }
    }

    /// Writes bytes; a failure only drops the connection, which the next wait repairs.
    fn write_raw(&mut self, bytes: &[u8]) {
        if let Some(stream) = self.stream.as_mut() {
            if let Err(error) = stream.write_all(bytes) {
                log::debug!("send failed: {error}");
                let _ = stream.tcp().shutdown(Shutdown::Both);
            }
        }
    }

    /// An empty buffer for the next frame, recycled from acknowledged ones: a fresh 1 MiB
    /// allocation per frame would map and fault in new pages every time.
    pub(crate) fn take_frame_buffer(&mut self) -> Vec<u8> {
        let mut buf = self.spare_frames.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    pub(crate) fn next_seq(&mut self, disk: usize) -> u64 {
        let window = &mut self.windows[disk];
        let seq = window.next_seq;
        window.next_seq += 1;
        seq
    }

    /// Sends a sequenced frame and keeps it until the relay acks it, waiting while the window
    /// is full.
    pub(crate) fn send_sequenced(
        &mut self,
        disk: usize,
        seq: u64,
        frame: Vec<u8>,
    ) -> Result<(), AgentError> {
        while self.window_bytes + frame.len() > self.window_bytes_max && self.window_bytes > 0 {
            self.wait_event(Duration::from_secs(1))?;
        }
        self.write_raw(&frame);
        self.window_bytes += frame.len();
        self.windows[disk].unacked.push_back((seq, frame));
        Ok(())
    }

    /// Sends an unsequenced frame that needs no retransmission (progress reports).
    pub(crate) fn send_unsequenced(&mut self, frame: &Frame<'_>) -> Result<(), AgentError> {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes)?;
        self.write_raw(&bytes);
        Ok(())
    }

    pub(crate) fn request_checksums(
        &mut self,
        disk: usize,
        offset: u64,
        block_bytes: u32,
        block_count: u32,
    ) -> Result<u64, AgentError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut bytes = Vec::new();
        Frame::ChecksumRequest(wire::ChecksumRequest {
            disk_id: disk as u32,
            request_id,
            offset,
            block_bytes,
            block_count,
        })
        .encode(&mut bytes)?;
        self.write_raw(&bytes);
        self.open_requests.insert(request_id, (disk, bytes));
        Ok(request_id)
    }

    /// Waits for the answer to a checksum request.
    /// Gives up like `wait_replicated` when nothing answers for `reconnect_timeout`: the
    /// answers come from the target, which may be down while the relay is up.
    pub(crate) fn take_checksums(&mut self, request_id: u64) -> Result<Vec<u8>, AgentError> {
        let asked = Instant::now();
        loop {
            if let Some(sums) = self.answers.remove(&request_id) {
                return Ok(sums);
            }
            if asked.elapsed() >= self.reconnect_timeout {
                return Err(AgentError::TargetSilent { seconds: self.reconnect_timeout.as_secs() });
            }
            self.wait_event(Duration::from_secs(1))?;
        }
    }

    /// Waits until every frame sent for every disk is durable at the target.
    /// Gives up, with the data safe in the relay's cache, when the target acknowledges nothing
    /// for `reconnect_timeout`: `--once` must end, not hang on an unreachable recovery site.
    pub(crate) fn wait_replicated(&mut self) -> Result<(), AgentError> {
        let replicated = |link: &Link| link.windows.iter().map(|w| w.replicated_seq).sum::<u64>();
        let mut last_progress = Instant::now();
        let mut seen = replicated(self);
        while self.windows.iter().any(|window| window.replicated_seq + 1 < window.next_seq) {
            self.wait_event(Duration::from_secs(1))?;
            let now_replicated = replicated(self);
            if now_replicated != seen {
                seen = now_replicated;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= self.reconnect_timeout {
                let pending: u64 = self
                    .windows
                    .iter()
                    .map(|window| {
                        window.next_seq.saturating_sub(1).saturating_sub(window.replicated_seq)
                    })
                    .sum();
                return Err(AgentError::TargetStalled {
                    frames: pending,
                    seconds: self.reconnect_timeout.as_secs(),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn replicated_seq(&self, disk: usize) -> u64 {
        self.windows[disk].replicated_seq
    }

    /// Disks the relay lost acknowledged frames of since the last call.
    pub(crate) fn take_lost(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.lost)
    }

    /// How many times the link connected (see `connections`).
    pub(crate) fn connections(&self) -> u64 {
        self.connections
    }

    /// Highest sequence durable in the relay's cache.
    pub(crate) fn durable_seq(&self, disk: usize) -> u64 {
        self.windows[disk].durable_seq
    }

    /// The sequence the next frame of `disk` will get.
    pub(crate) fn peek_next_seq(&self, disk: usize) -> u64 {
        self.windows[disk].next_seq
    }

    /// Handles every event already waiting, and waits up to `timeout` for the first.
    pub(crate) fn poll(&mut self, timeout: Duration) -> Result<(), AgentError> {
        self.wait_event(timeout)?;
        while let Some(event) = self.events.as_ref().and_then(|events| events.try_recv().ok()) {
            self.handle_event(event)?;
        }
        Ok(())
    }

    /// Handles at most one event, reconnecting if the connection dropped.
    fn wait_event(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let event = match self.events.as_ref() {
            Some(events) => match events.recv_timeout(timeout) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => Event::Closed("reader stopped".into()),
            },
            None => Event::Closed("not connected".into()),
        };
        self.handle_event(event)
    }

    fn handle_event(&mut self, event: Event) -> Result<(), AgentError> {
        match event {
            Event::Ack(entries) => self.on_ack(&entries),
            Event::Checksums { request_id, sums } => {
                if self.open_requests.remove(&request_id).is_some() {
                    self.answers.insert(request_id, sums);
                }
            }
            Event::Error { code, message } => {
                log::error!("relay reported error {code}: {message}");
                if code == wire::error_code::GENERATION || code == wire::error_code::LIMIT {
                    return Err(AgentError::Refused(message));
                }
            }
            Event::Closed(reason) => {
                log::warn!("connection to relay {} lost: {reason}; reconnecting", self.addr);
                self.reconnect()?;
            }
            Event::Control(json) => self.controls.push(json),
        }
        Ok(())
    }
}

impl Link {
    /// The relay's requests received since the last call.
    pub(crate) fn take_controls(&mut self) -> Vec<String> {
        std::mem::take(&mut self.controls)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = stream.tcp().shutdown(Shutdown::Both);
        }
    }
}

fn read_events(mut stream: pki::stream::TransportReader, events: &mpsc::Sender<Event>) {
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 << 10];
    let reason = loop {
        let received = match stream.read(&mut buf) {
            Ok(0) => break "closed by relay".to_string(),
            Ok(n) => n,
            Err(error) => break error.to_string(),
        };
        reader.feed(&buf[..received]);
        match forward_frames(&mut reader, events) {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => break error.to_string(),
        }
    };
    let _ = events.send(Event::Closed(reason));
}

/// Returns Ok(false) when the receiving side has gone away.
fn forward_frames(
    reader: &mut FrameReader,
    events: &mpsc::Sender<Event>,
) -> Result<bool, wire::WireError> {
    while let Some((raw, used)) = reader.peek()? {
        let event = match raw.decode()? {
            Frame::Ack(entries) => Some(Event::Ack(entries)),
            Frame::Checksums(sums) => {
                Some(Event::Checksums { request_id: sums.request_id, sums: sums.sums.to_vec() })
            }
            Frame::Error { code, message } => {
                Some(Event::Error { code, message: message.to_string() })
            }
            Frame::Control { json } => Some(Event::Control(json.to_string())),
            _ => None,
        };
        reader.consume(used);
        if let Some(event) = event {
            if events.send(event).is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
