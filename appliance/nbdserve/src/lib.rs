//! An NBD server over any storage [`Backend`]: fixed newstyle handshake, simple and structured
//! replies, the `base:allocation` metadata context, and a TCP or unix-socket listener with a
//! thread per connection up to a limit. The protocol's bytes come from the pure `nbd` crate;
//! this crate adds the sockets and threads.
//!
//! The agent's write tap serves the protected disks through it (its `Capture` is the
//! backend); the recovery-site target can serve recovery points the same way.
//!
//! A request is read, handed to the backend and answered before the connection's next
//! request is read, so the backend sees one request at a time per connection (and any number
//! of connections at once). Every export is advertised with multi-conn: a backend's `flush`
//! must make the writes completed on *all* connections durable.
//!
//! ```no_run
//! # fn demo<B: nbdserve::Backend + 'static>(backend: std::sync::Arc<B>) -> std::io::Result<()> {
//! let addr: nbdserve::ListenAddr = "127.0.0.1:0".parse().expect("an address");
//! let server = nbdserve::Server::bind(&addr, backend, 16)?;
//! println!("serving on {}", server.local_addr());
//! let running = server.spawn()?; // or `server.serve()` on this thread, stopped by a `Stopper`
//! running.stop(); // closes the listener and every connection, waits for them
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)] // sockets and threads through std and nix only

mod connection;
mod server;

use std::io;

pub use connection::{serve_connection, ServeError};
pub use server::{ListenAddr, Running, Server, Stopper};

/// The storage an NBD server exports. Exports are numbered `0..export_count()`; the number is
/// fixed for the server's life (a client that names an export gets its index at handshake).
///
/// Calls come from the connection threads concurrently, with ranges already checked against
/// [`Backend::export_size`] and `nbd::limits::PAYLOAD_BYTES_MAX`.
pub trait Backend: Send + Sync {
    fn export_count(&self) -> usize;

    /// The name a client asks for. The empty name selects export 0.
    fn export_name(&self, export: usize) -> &str;

    /// Size in bytes, read once per connection at handshake.
    fn export_size(&self, export: usize) -> u64;

    /// False: the export is advertised read-only (`NBD_FLAG_READ_ONLY`, no trim or
    /// write-zeroes) and writes, trims and write-zeroes are refused with `EPERM` without
    /// reaching the backend.
    fn writable(&self, _export: usize) -> bool {
        true
    }

    /// Fills `buf` from `offset`.
    fn read(&self, export: usize, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// A buffer of exactly `len` bytes that the next write's payload is read into (contents
    /// unspecified: the server overwrites all of it). A backend that keeps write buffers can
    /// hand recycled ones out here.
    fn take_buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    /// Applies a write (the buffer came from [`Backend::take_buffer`]).
    fn write(&self, export: usize, offset: u64, data: Vec<u8>) -> io::Result<()>;

    /// Trim and write-zeroes: the range reads as zeros afterwards.
    fn zero(&self, export: usize, offset: u64, len: u64) -> io::Result<()>;

    /// The client's FLUSH: every write completed before it, on any connection, is durable
    /// when this returns. Also called for read-only exports.
    fn flush(&self, export: usize) -> io::Result<()>;

    /// Makes the data of a write just applied durable (a request with the FUA flag).
    fn sync_data(&self, export: usize) -> io::Result<()>;

    /// The data (non-hole) ranges within `[offset, offset + len)` as `(start, length)`,
    /// sorted; when there are more than `ranges_max`, the first `ranges_max` (the reply then
    /// describes only a prefix of the range). `Err` answers "everything is data", which is
    /// always correct.
    fn data_ranges(
        &self,
        export: usize,
        offset: u64,
        len: u64,
        ranges_max: usize,
    ) -> io::Result<Vec<(u64, u64)>>;
}
