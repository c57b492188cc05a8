//! Accepts NBD clients on TCP or a unix socket, one thread per connection, up to a limit.
//! Stopping shuts the listener and every open connection down, so their threads end.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::connection::{serve_connection, Duplex, READ_BUFFER_BYTES};
use crate::Backend;

/// How long a stopped server waits for connection threads still inside a request.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Where a server listens: `IP:PORT`, or a unix socket path (anything containing a `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenAddr, String> {
        if text.contains('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(text)));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("{text:?} is neither IP:port (e.g. 127.0.0.1:10809) nor a unix socket path")
        })
    }
}

/// The NBD URI a client connects to.
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "nbd://{addr}"),
            ListenAddr::Unix(path) => write!(f, "nbd+unix:///?socket={}", path.display()),
        }
    }
}

/// A bound NBD server. [`Server::serve`] runs it on the calling thread until a [`Stopper`]
/// stops it; [`Server::spawn`] runs it on a thread of its own.
pub struct Server<B: ?Sized> {
    listener: Listener,
    local: ListenAddr,
    backend: Arc<B>,
    connections_max: usize,
    control: Arc<Control>,
}

impl<B: ?Sized> std::fmt::Debug for Server<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .field("connections_max", &self.connections_max)
            .finish_non_exhaustive()
    }
}

impl<B: Backend + ?Sized + 'static> Server<B> {
    /// Listens on `addr` (TCP port 0 picks a free port: see [`Server::local_addr`]; a stale
    /// socket file at a unix path is replaced, and the file is removed when the server ends).
    /// At most `connections_max` clients are served at once; more are closed on accept.
    pub fn bind(addr: &ListenAddr, backend: Arc<B>, connections_max: usize) -> io::Result<Self> {
        let (listener, local) = match addr {
            ListenAddr::Tcp(addr) => {
                let listener = fsio::bind_listener(*addr)?;
                let local = ListenAddr::Tcp(listener.local_addr()?);
                (Listener::Tcp(listener), local)
            }
            ListenAddr::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path)?;
                (Listener::Unix(listener, SocketFile(path.clone())), addr.clone())
            }
        };
        let duplicate: OwnedFd = match &listener {
            Listener::Tcp(listener) => listener.try_clone()?.into(),
            Listener::Unix(listener, _) => listener.try_clone()?.into(),
        };
        let control = Arc::new(Control {
            stopping: AtomicBool::new(false),
            listener: Mutex::new(Some(duplicate)),
            open: Mutex::new(HashMap::new()),
        });
        Ok(Server { listener, local, backend, connections_max, control })
    }

    /// The address clients connect to (for TCP, with the port actually bound).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local
    }

    /// A handle that stops this server from any thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.control))
    }

    /// Runs the server on a new thread (named `nbd-accept`).
    pub fn spawn(self) -> io::Result<Running> {
        let stopper = self.stopper();
        let local = self.local.clone();
        let thread =
            std::thread::Builder::new().name("nbd-accept".into()).spawn(move || self.serve())?;
        Ok(Running { stopper, local, thread: Mutex::new(Some(thread)) })
    }

    /// Accepts clients, each served on its own thread (named `nbd-conn`), until stopped. Then
    /// waits (up to 10 s) for connection threads still inside a request, so a caller that
    /// saw `serve` return also sees every write the backend was handed; removes the unix
    /// socket file and returns.
    pub fn serve(self) {
        let control = &self.control;
        let slots = Arc::new(ConnectionSlots::default());
        let mut next_id = 0u64;
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(listener) => listener.accept().map(|(stream, peer)| {
                    let _ = stream.set_nodelay(true);
                    (Connection::Tcp(stream), peer.to_string())
                }),
                Listener::Unix(listener, path) => listener
                    .accept()
                    .map(|(stream, _)| (Connection::Unix(stream), path.0.display().to_string())),
            };
            if control.stopping.load(Ordering::Acquire) {
                break;
            }
            let (connection, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    log::warn!("nbd accept failed: {error}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let connections_max = self.connections_max;
            let Some(slot) = slots.try_take(connections_max) else {
                log::warn!("nbd {peer}: refused, {connections_max} connections already open");
                continue;
            };
            let id = next_id;
            next_id += 1;
            let handle = match connection.handle() {
                Ok(handle) => handle,
                Err(error) => {
                    log::warn!("nbd {peer}: {error}");
                    continue;
                }
            };
            {
                let mut open = control.open.lock().expect("open lock");
                // `stop` sets the flag, then shuts down what is in `open` under this lock: a
                // connection is either shut down by it or never served.
                if control.stopping.load(Ordering::Acquire) {
                    break;
                }
                open.insert(id, handle);
            }
            let backend = Arc::clone(&self.backend);
            let control_for_thread = Arc::clone(control);
            let spawned = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
                let _slot = slot;
                let result = match connection {
                    Connection::Tcp(stream) => {
                        let reader = io::BufReader::with_capacity(READ_BUFFER_BYTES, &stream);
                        let mut duplex = Duplex { reader, writer: &stream };
                        serve_connection(&mut duplex, &*backend, &peer)
                    }
                    Connection::Unix(stream) => {
                        let reader = io::BufReader::with_capacity(READ_BUFFER_BYTES, &stream);
                        let mut duplex = Duplex { reader, writer: &stream };
                        serve_connection(&mut duplex, &*backend, &peer)
                    }
                };
                match result {
                    Ok(()) => log::debug!("nbd {peer}: disconnected"),
                    Err(error) => log::warn!("nbd {peer}: connection closed: {error}"),
                }
                control_for_thread.open.lock().expect("open lock").remove(&id);
            });
            if let Err(error) = spawned {
                log::error!("nbd: cannot start a connection thread: {error}");
                control.open.lock().expect("open lock").remove(&id);
            }
        }
        // A connection thread may be inside a write: let it finish, so whoever stopped the
        // server sees every write the backend received.
        let deadline = Instant::now() + STOP_WAIT;
        while !control.open.lock().expect("open lock").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Dropping the server closes the listener and removes the unix socket file.
    }
}

impl<B: ?Sized> Drop for Server<B> {
    fn drop(&mut self) {
        // Without its duplicate the socket really closes (a TCP port is free again).
        self.control.listener.lock().expect("listener lock").take();
    }
}

/// Stops a [`Server`] from any thread; clones stop the same server.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Control>);

impl Stopper {
    /// Closes the listener and shuts every open connection down (idempotent; returns at
    /// once). [`Server::serve`] then waits for the connection threads and returns.
    pub fn stop(&self) {
        let control = &self.0;
        if control.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Shutting a listening socket down wakes a blocked accept() with an error (Linux).
        if let Some(listener) = &*control.listener.lock().expect("listener lock") {
            let fd = listener.as_raw_fd();
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
        for handle in control.open.lock().expect("open lock").values() {
            handle.shutdown();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopping.load(Ordering::Acquire)
    }
}

/// A server running on its own thread ([`Server::spawn`]); dropping it stops it.
#[derive(Debug)]
pub struct Running {
    stopper: Stopper,
    local: ListenAddr,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops accepting, closes every client connection and waits until the server thread
    /// is done (see [`Server::serve`]). Idempotent.
    pub fn stop(&self) {
        self.stopper.stop();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `stop` needs to reach from another thread.
#[derive(Debug)]
struct Control {
    stopping: AtomicBool,
    /// A duplicate of the listening socket's descriptor (the socket is shared), until the
    /// server is dropped.
    listener: Mutex<Option<OwnedFd>>,
    /// A duplicate of each open connection, by id, to shut it down.
    open: Mutex<HashMap<u64, Handle>>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// A unix socket's path, removed when the server is done with it.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    fn handle(&self) -> io::Result<Handle> {
        Ok(match self {
            Connection::Tcp(stream) => Handle::Tcp(stream.try_clone()?),
            Connection::Unix(stream) => Handle::Unix(stream.try_clone()?),
        })
    }
}

/// A way to shut down one open connection from another thread.
#[derive(Debug)]
enum Handle {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Handle {
    fn shutdown(&self) {
        let _ = match self {
            Handle::Tcp(stream) => stream.shutdown(Shutdown::Both),
            Handle::Unix(stream) => stream.shutdown(Shutdown::Both),
        };
    }
}

/// Counts connections so the server can refuse more than its limit.
#[derive(Debug, Default)]
struct ConnectionSlots {
    open: AtomicUsize,
}

impl ConnectionSlots {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<SlotGuard> {
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard(Arc::clone(self)))
    }
}

#[derive(Debug)]
struct SlotGuard(Arc<ConnectionSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let tcp: ListenAddr = "127.0.0.1:10809".parse().unwrap();
        assert_eq!(tcp.to_string(), "nbd://127.0.0.1:10809");
        let unix: ListenAddr = "/run/sr/tap.sock".parse().unwrap();
        assert_eq!(unix, ListenAddr::Unix(PathBuf::from("/run/sr/tap.sock")));
        assert_eq!(unix.to_string(), "nbd+unix:///?socket=/run/sr/tap.sock");
        let error = "localhost:10809".parse::<ListenAddr>().unwrap_err();
        assert!(error.contains("neither IP:port"), "{error}");
    }

    #[test]
    fn slots_refuse_over_the_limit_and_free_on_drop() {
        let slots = Arc::new(ConnectionSlots::default());
        let first = slots.try_take(1).expect("a free slot");
        assert!(slots.try_take(1).is_none());
        drop(first);
        assert!(slots.try_take(1).is_some());
    }
}
