//! A blocking connection that is either plain TCP or TLS over it, for the thread-per-
//! connection sides (target sessions, agents, operator commands). The relay's io_uring loop
//! drives `rustls::Connection` itself.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

#[derive(Debug)]
pub struct TlsStream {
    conn: rustls::Connection,
    tcp: TcpStream,
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}"))
}

impl Transport {
    /// Connects as a TLS client (handshake done when this returns) or plain with `None`.
    pub fn client(
        tcp: TcpStream,
        config: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Transport> {
        let Some(config) = config else { return Ok(Transport::Plain(tcp)) };
        let conn =
            rustls::ClientConnection::new(config, crate::server_name()).map_err(tls_error)?;
        let mut stream = TlsStream { conn: conn.into(), tcp };
        stream.handshake()?;
        Ok(Transport::Tls(Box::new(stream)))
    }

    /// Accepts as a TLS server (handshake done when this returns) or plain with `None`.
    pub fn server(
        tcp: TcpStream,
        config: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Transport> {
        let Some(config) = config else { return Ok(Transport::Plain(tcp)) };
        let conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsStream { conn: conn.into(), tcp };
        stream.handshake()?;
        Ok(Transport::Tls(Box::new(stream)))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(stream) => &stream.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The peer's certificate chain (TLS with a client certificate only).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(stream) => stream.conn.peer_certificates(),
        }
    }

    /// 32 bytes of key material exported from this TLS session under `label`.
    pub fn exporter(&self, label: &[u8]) -> io::Result<[u8; 32]> {
        match self {
            Transport::Plain(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "not a TLS connection"))
            }
            Transport::Tls(stream) => {
                stream.conn.export_keying_material([0u8; 32], label, None).map_err(tls_error)
            }
        }
    }

    /// Blocks for at least one byte (bounded by the socket's read timeout); 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(stream) => stream.read(buf, false),
        }
    }

    /// What has already arrived, without waiting: `WouldBlock` when nothing has.
    pub fn read_queued(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => fsio::recv_queued(tcp, buf),
            Transport::Tls(stream) => stream.read(buf, true),
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.write_all(bytes),
            Transport::Tls(stream) => {
                stream.conn.writer().write_all(bytes)?;
                stream.flush_tls()
            }
        }
    }
}

/// Reads only what has already arrived (one `recv` with `MSG_DONTWAIT`).
struct Queued<'a>(&'a TcpStream);

impl Read for Queued<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        fsio::recv_queued(self.0, buf)
    }
}

impl TlsStream {
    fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.flush_tls()?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.conn.read_tls(&mut self.tcp)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
            self.process()?;
        }
        self.flush_tls()
    }

    /// Decrypts what was read; on a TLS error sends the alert first.
    fn process(&mut self) -> io::Result<()> {
        if let Err(error) = self.conn.process_new_packets() {
            let _ = self.flush_tls();
            return Err(tls_error(error));
        }
        Ok(())
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tcp)?;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], queued_only: bool) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an end like any other here.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            let received = if queued_only {
                self.conn.read_tls(&mut Queued(&self.tcp))?
            } else {
                self.conn.read_tls(&mut self.tcp)?
            };
            if received == 0 {
                return Ok(0);
            }
            self.process()?;
            // Key updates and session tickets may want an answer.
            self.flush_tls()?;
        }
    }
}

impl Transport {
    /// Splits the connection for a reader thread and a writer. The reader never writes and
    /// the writer never reads, and neither waits on the socket while holding the TLS state,
    /// so a writer blocked by a peer that stopped reading never stops the reader (which is
    /// what lets the peer read again).
    pub fn split(self) -> io::Result<(TransportReader, TransportWriter)> {
        match self {
            Transport::Plain(tcp) => {
                let reader = tcp.try_clone()?;
                Ok((TransportReader::Plain(reader), TransportWriter::Plain(tcp)))
            }
            Transport::Tls(stream) => {
                let TlsStream { mut conn, tcp } = *stream;
                // Whole frames are encrypted at once; the caller bounds what it sends.
                conn.set_buffer_limit(None);
                let shared = Arc::new(std::sync::Mutex::new(conn));
                let reader = TransportReader::Tls {
                    conn: shared.clone(),
                    tcp: tcp.try_clone()?,
                    pending: Vec::new(),
                    used: 0,
                };
                Ok((reader, TransportWriter::Tls { conn: shared, tcp }))
            }
        }
    }
}

#[derive(Debug)]
pub enum TransportReader {
    Plain(TcpStream),
    Tls {
        conn: Arc<std::sync::Mutex<rustls::Connection>>,
        tcp: TcpStream,
        /// Ciphertext read from the socket and not yet handed to rustls.
        pending: Vec<u8>,
        used: usize,
    },
}

impl TransportReader {
    /// Blocks for at least one byte; 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let TransportReader::Tls { conn, tcp, pending, used } = self else {
            let TransportReader::Plain(tcp) = self else { unreachable!() };
            return tcp.read(buf);
        };
        loop {
            {
                let mut conn = conn.lock().expect("TLS state lock");
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(error) => return Err(error),
                }
                if *used < pending.len() {
                    let mut rest = &pending[*used..];
                    let taken = conn.read_tls(&mut rest)?;
                    *used += taken;
                    conn.process_new_packets().map_err(tls_error)?;
                    continue;
                }
            }
            pending.resize(64 << 10, 0);
            let received = tcp.read(pending)?;
            pending.truncate(received);
            *used = 0;
            if received == 0 {
                return Ok(0);
            }
        }
    }
}

#[derive(Debug)]
pub enum TransportWriter {
    Plain(TcpStream),
    Tls { conn: Arc<std::sync::Mutex<rustls::Connection>>, tcp: TcpStream },
}

impl TransportWriter {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            TransportWriter::Plain(tcp) => tcp.write_all(bytes),
            TransportWriter::Tls { conn, tcp } => {
                let mut sealed = Vec::with_capacity(bytes.len() + 256);
                {
                    let mut conn = conn.lock().expect("TLS state lock");
                    conn.writer().write_all(bytes)?;
                    while conn.wants_write() {
                        conn.write_tls(&mut sealed)?;
                    }
                }
                tcp.write_all(&sealed)
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            TransportWriter::Plain(tcp) | TransportWriter::Tls { tcp, .. } => tcp,
        }
    }
}
