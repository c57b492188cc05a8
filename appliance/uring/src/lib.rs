//! The only crate of siterelay that talks to io_uring. Operations own their buffers: a buffer
//! handed to `Ring::submit` stays in the ring's in-flight table until its completion comes back,
//! so the kernel never writes into memory that Rust has freed or moved.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, types, IoUring, Probe};

#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring is not available: {0} (siterelay relay needs Linux 5.6 or newer with io_uring enabled)")]
    Unavailable(io::Error),
    #[error("io_uring lacks the opcodes {missing} (needs Linux {kernel} or newer)")]
    MissingOpcodes { missing: String, kernel: &'static str },
    #[error("io_uring submission queue is full")]
    QueueFull,
    #[error("io_uring submit failed: {0}")]
    Submit(io::Error),
}

/// Opcodes the relay uses, with the kernel that introduced each.
const REQUIRED_OPCODES: &[(u8, &str, &str)] = &[
    (opcode::Accept::CODE, "ACCEPT", "5.5"),
    (opcode::Connect::CODE, "CONNECT", "5.5"),
    (opcode::Recv::CODE, "RECV", "5.6"),
    (opcode::Send::CODE, "SEND", "5.6"),
    (opcode::Read::CODE, "READ", "5.6"),
    (opcode::Write::CODE, "WRITE", "5.6"),
    (opcode::Fsync::CODE, "FSYNC", "5.1"),
    (opcode::Timeout::CODE, "TIMEOUT", "5.4"),
];

/// What to do; buffers are owned by the operation while it is in flight.
#[derive(Debug)]
pub enum Op {
    Accept {
        fd: RawFd,
    },
    Connect {
        fd: RawFd,
        addr: Box<SockAddr>,
    },
    Recv {
        fd: RawFd,
        buf: Vec<u8>,
    },
    /// Sends `buf[start..]`.
    Send {
        fd: RawFd,
        buf: Vec<u8>,
        start: usize,
    },
    /// Reads `len` bytes at `offset` into `buf` (resized to `len`).
    Read {
        fd: RawFd,
        buf: Vec<u8>,
        offset: u64,
    },
    /// Writes `buf[start..]` at `offset`.
    Write {
        fd: RawFd,
        buf: Vec<u8>,
        start: usize,
        offset: u64,
    },
    Fsync {
        fd: RawFd,
        data_only: bool,
    },
    Timeout {
        timespec: Box<types::Timespec>,
    },
}

/// A socket address in the layout the kernel reads during `connect`.
#[derive(Debug)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn new(addr: SocketAddr) -> Box<SockAddr> {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (unspecified) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
                unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
                unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Box::new(SockAddr { storage, len: len as libc::socklen_t })
    }
}

/// Creates a non-connected TCP socket for `Op::Connect`; the caller owns and closes the fd.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    /// Syscall-style result: bytes or fd on success, `-errno` on failure.
    pub result: i32,
    pub op: Op,
}

impl Completion {
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// The ring and the operations in flight. Field order matters: `ring` is dropped before
/// `in_flight`, and `Drop` leaks buffers still in flight rather than freeing them under the
/// kernel.
pub struct Ring {
    ring: IoUring,
    in_flight: HashMap<u64, (u64, Op)>,
    next_key: u64,
    capacity: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("in_flight", &self.in_flight.len()).finish()
    }
}

impl Ring {
    /// Creates a ring of `entries` and checks every opcode the relay needs.
    pub fn new(entries: u32) -> Result<Ring, UringError> {
        let ring = IoUring::new(entries).map_err(UringError::Unavailable)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(UringError::Unavailable)?;
        let missing: Vec<&(u8, &str, &str)> =
            REQUIRED_OPCODES.iter().filter(|(code, _, _)| !probe.is_supported(*code)).collect();
        if let Some(newest) = missing.iter().map(|(_, _, kernel)| *kernel).max() {
            let names: Vec<&str> = missing.iter().map(|(_, name, _)| *name).collect();
            return Err(UringError::MissingOpcodes { missing: names.join(", "), kernel: newest });
        }
        let capacity = ring.params().cq_entries() as usize;
        Ok(Ring { ring, in_flight: HashMap::with_capacity(capacity), next_key: 1, capacity })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues `op`; its completion comes back from `complete` with the same `tag`.
    pub fn submit(&mut self, tag: u64, mut op: Op) -> Result<(), UringError> {
        if self.in_flight.len() >= self.capacity {
            return Err(UringError::QueueFull);
        }
        let key = self.next_key;
        self.next_key += 1;
        let entry = build_entry(&mut op).user_data(key);
        // SAFETY: every pointer in `entry` points into `op`'s heap buffers (Vec, Box), which we
        // store in `in_flight` below and keep there, unmoved and unfreed, until the kernel posts
        // the completion for `key`. Moving `op` moves only the owning handles, not the heap.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.ring.submit().map_err(UringError::Submit)?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| UringError::QueueFull)?;
        }
        self.in_flight.insert(key, (tag, op));
        Ok(())
    }

    /// Submits queued operations, waits until at least `wait_min` completions are ready (or a
    /// signal interrupts), and moves every ready completion into `out`.
    pub fn complete(
        &mut self,
        wait_min: usize,
        out: &mut Vec<Completion>,
    ) -> Result<(), UringError> {
        match self.ring.submit_and_wait(wait_min) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(error) => return Err(UringError::Submit(error)),
        }
        for cqe in self.ring.completion() {
            let key = cqe.user_data();
            let (tag, mut op) =
                self.in_flight.remove(&key).expect("completion for an operation we submitted");
            finish_op(&mut op, cqe.result());
            out.push(Completion { tag, result: cqe.result(), op });
        }
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers the kernel may still touch are leaked, never freed under it.
        for (_, op) in self.in_flight.drain() {
            std::mem::forget(op);
        }
    }
}

fn build_entry(op: &mut Op) -> io_uring::squeue::Entry {
    match op {
        Op::Accept { fd } => {
            opcode::Accept::new(types::Fd(*fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        Op::Connect { fd, addr } => {
            opcode::Connect::new(types::Fd(*fd), std::ptr::addr_of!(addr.storage).cast(), addr.len)
                .build()
        }
        Op::Recv { fd, buf } => {
            let capacity = buf.capacity();
            // The kernel fills spare capacity; `finish_op` sets the length afterwards.
            opcode::Recv::new(types::Fd(*fd), buf.as_mut_ptr(), capacity as u32).build()
        }
        Op::Send { fd, buf, start } => {
            let pending = &buf[*start..];
            opcode::Send::new(types::Fd(*fd), pending.as_ptr(), pending.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
        Op::Read { fd, buf, offset } => {
            let len = buf.len();
            opcode::Read::new(types::Fd(*fd), buf.as_mut_ptr(), len as u32).offset(*offset).build()
        }
        Op::Write { fd, buf, start, offset } => {
            let pending = &buf[*start..];
            opcode::Write::new(types::Fd(*fd), pending.as_ptr(), pending.len() as u32)
                .offset(*offset)
                .build()
        }
        Op::Fsync { fd, data_only } => {
            let flags =
                if *data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
            opcode::Fsync::new(types::Fd(*fd)).flags(flags).build()
        }
        Op::Timeout { timespec } => opcode::Timeout::new(&**timespec as *const _).build(),
    }
}

/// Makes a received buffer's length match what the kernel wrote.
fn finish_op(op: &mut Op, result: i32) {
    if let Op::Recv { buf, .. } = op {
        let received = usize::try_from(result).unwrap_or(0);
        assert!(received <= buf.capacity(), "kernel reported more bytes than the buffer holds");
        // SAFETY: the kernel initialised the first `received` bytes of the spare capacity.
        unsafe { buf.set_len(received) };
    }
}

/// A relative timeout for `Op::Timeout`.
pub fn timeout(duration: Duration) -> Op {
    Op::Timeout {
        timespec: Box::new(
            types::Timespec::new().sec(duration.as_secs()).nsec(duration.subsec_nanos()),
        ),
    }
}

/// Takes ownership of the socket an `Op::Accept` completion returned.
pub fn accepted_stream(completion_result: i32) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    if completion_result < 0 {
        return Err(io::Error::from_raw_os_error(-completion_result));
    }
    // SAFETY: a successful accept completion's result is a new descriptor that only this
    // completion refers to; wrapping it gives it exactly one owner.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(completion_result) })
}

/// An eventfd: other threads `notify` it, the ring reads it with `Op::Read` at
/// `EventFd::READ_OFFSET` into an 8-byte buffer.
#[derive(Debug)]
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl EventFd {
    /// Offset for reading a non-seekable file: "the current position".
    pub const READ_OFFSET: u64 = u64::MAX;

    pub fn new() -> io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall with constant arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        Ok(EventFd { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) } })
    }

    pub fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Wakes the reader; callable from any thread.
    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to a descriptor we own. A failure can
        // only be a counter overflow, in which case the reader is already due to wake.
        let _ = unsafe { libc::write(self.raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}
