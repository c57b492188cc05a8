//! Accepts NBD clients on TCP or a unix socket, one thread per connection, up to a limit.
//! Stopping shuts the listener and every open connection down, so their threads end.

use std::collections::HashMap;
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::capture::Capture;
use crate::continuous::TapAddr;
use crate::error::AgentError;
use crate::tap::{ConnectionSlots, Duplex, READ_BUFFER_BYTES};
use std::io;

/// A way to shut down one open connection from another thread.
enum Handle {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Handle {
    fn shutdown(&self) {
        let _ = match self {
            Handle::Tcp(stream) => stream.shutdown(Shutdown::Both),
            Handle::Unix(stream) => stream.shutdown(Shutdown::Both),
        };
    }
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

pub(crate) struct TapServer {
    stopping: Arc<AtomicBool>,
    fd: std::os::fd::RawFd,
    open: Arc<Mutex<HashMap<u64, Handle>>>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    unix_path: Option<PathBuf>,
}

impl std::fmt::Debug for TapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapServer").field("fd", &self.fd).finish_non_exhaustive()
    }
}

impl TapServer {
    pub(crate) fn start(
        addr: &TapAddr,
        capture: Arc<Capture>,
        connections_max: usize,
    ) -> Result<TapServer, AgentError> {
        let tap_error =
            |error: std::io::Error| AgentError::Tap(format!("listen on {addr}: {error}"));
        let socket = match addr {
            TapAddr::Tcp(addr) => Socket::Tcp(fsio::bind_listener(*addr).map_err(tap_error)?),
            TapAddr::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                Socket::Unix(UnixListener::bind(path).map_err(tap_error)?, path.clone())
            }
        };
        let (fd, unix_path) = match &socket {
            Socket::Tcp(listener) => (listener.as_raw_fd(), None),
            Socket::Unix(listener, path) => (listener.as_raw_fd(), Some(path.clone())),
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::new()));
        let accept_thread = {
            let stopping = Arc::clone(&stopping);
            let open = Arc::clone(&open);
            std::thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || accept_loop(socket, capture, connections_max, &stopping, &open))
                .map_err(|error| AgentError::Tap(format!("start accept thread: {error}")))?
        };
        Ok(TapServer {
            stopping,
            fd,
            open,
            accept_thread: Mutex::new(Some(accept_thread)),
            unix_path,
        })
    }

    /// Stops accepting and closes every client connection (idempotent).
    pub(crate) fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Shutting a listening socket down wakes a blocked accept() with an error (Linux).
        // SAFETY: `fd` is the listener owned by the accept thread, which only closes it after
        // leaving its loop, and it leaves only after `stopping` is set, which happens here.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        for handle in self.open.lock().expect("open lock").values() {
            handle.shutdown();
        }
        if let Some(thread) = self.accept_thread.lock().expect("thread lock").take() {
            let _ = thread.join();
        }
        // A connection thread may be inside a write: let it finish, so the shutdown that
        // follows sees every write the source received.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.open.lock().expect("open lock").is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for TapServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    socket: Socket,
    capture: Arc<Capture>,
    connections_max: usize,
    stopping: &AtomicBool,
    open: &Arc<Mutex<HashMap<u64, Handle>>>,
) {
    let slots = Arc::new(ConnectionSlots::default());
    let next_id = AtomicU64::new(0);
    loop {
        let accepted = match &socket {
            Socket::Tcp(listener) => listener.accept().map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                (Connection::Tcp(stream), peer.to_string())
            }),
            Socket::Unix(listener, path) => listener
                .accept()
                .map(|(stream, _)| (Connection::Unix(stream), path.display().to_string())),
        };
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let (connection, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                log::warn!("nbd accept failed: {error}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = slots.try_take(connections_max) else {
            log::warn!("nbd {peer}: refused, {connections_max} connections already open");
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        match connection.handle() {
            Ok(handle) => {
                open.lock().expect("open lock").insert(id, handle);
            }
            Err(error) => {
                log::warn!("nbd {peer}: {error}");
                continue;
            }
        }
        let capture = Arc::clone(&capture);
        let open_for_thread = Arc::clone(open);
        let spawned = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
            let _slot = slot;
            let result = match connection {
                Connection::Tcp(stream) => {
                    let reader = io::BufReader::with_capacity(READ_BUFFER_BYTES, &stream);
                    let mut duplex = Duplex { reader, writer: &stream };
                    crate::tap::serve(&mut duplex, &capture, &peer)
                }
                Connection::Unix(stream) => {
                    let reader = io::BufReader::with_capacity(READ_BUFFER_BYTES, &stream);
                    let mut duplex = Duplex { reader, writer: &stream };
                    crate::tap::serve(&mut duplex, &capture, &peer)
                }
            };
            match result {
                Ok(()) => log::debug!("nbd {peer}: disconnected"),
                Err(error) => log::warn!("nbd {peer}: connection closed: {error}"),
            }
            open_for_thread.lock().expect("open lock").remove(&id);
        });
        if let Err(error) = spawned {
            log::error!("nbd: cannot start a connection thread: {error}");
            open.lock().expect("open lock").remove(&id);
        }
    }
}

enum Connection {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Connection {
    fn handle(&self) -> std::io::Result<Handle> {
        Ok(match self {
            Connection::Tcp(stream) => Handle::Tcp(stream.try_clone()?),
            Connection::Unix(stream) => Handle::Unix(stream.try_clone()?),
        })
    }
}
