//! Durable-file helpers shared by the roles. Each function says what is durable when it
//! returns, because callers build "ack means durable" on top of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content, and
/// the new content is durable when this returns.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Size in bytes of a regular file or a block device.
pub fn size_of(file: &File) -> io::Result<u64> {
    let metadata = file.metadata()?;
    if metadata.is_file() {
        return Ok(metadata.len());
    }
    // Block devices report length 0 in metadata; seeking to the end gives their size.
    let mut handle = file;
    handle.seek(SeekFrom::End(0))
}

/// Makes `[offset, offset + len)` read back as zeros, deallocating it where the file system can.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (Ok(start), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
    else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond off_t"));
    };
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file` and open.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, start, length) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => write_zeros(file, offset, len),
        _ => Err(error),
    }
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let step = (len - done).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}

/// Reads as much of `buf` as the file holds at `offset`; bytes past the end are zero-filled.
/// Returns the number of bytes that came from the file.
pub fn read_at_padded(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    buf[filled..].fill(0);
    Ok(filled)
}

/// Receives what is already queued on `stream` without waiting (`MSG_DONTWAIT`), leaving the
/// socket itself blocking for other users. `Err(WouldBlock)` when nothing is queued.
pub fn recv_queued(stream: &std::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes for the whole call, and the
    // descriptor is owned by `stream`, which outlives the call.
    let received = unsafe {
        libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(received as usize)
}

/// How long a restarted role waits for its port: after a crash the kernel can hold the old
/// listening socket for a moment (the relay's, while its io_uring accept is torn down), and a
/// service manager restarting at once must not fail on that.
const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds a listener, retrying briefly while the address is still in use.
pub fn bind_listener(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let started = std::time::Instant::now();
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(error)
                if error.kind() == io::ErrorKind::AddrInUse
                    && started.elapsed() < BIND_RETRY_FOR =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// The indexes of the entries of `dir` whose names `parse` accepts (journal segments), sorted.
pub fn list_indexed(dir: &Path, parse: fn(&str) -> Option<u64>) -> io::Result<Vec<u64>> {
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(index) = entry?.file_name().to_str().and_then(parse) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

/// The allocated (data) ranges of `file` within `[offset, offset + len)`, as `(start, len)`,
/// at most `ranges_max` of them. Files without hole support report everything as data.
pub fn data_ranges(
    file: &File,
    offset: u64,
    len: u64,
    ranges_max: usize,
) -> io::Result<Vec<(u64, u64)>> {
    let end = offset.saturating_add(len);
    let mut ranges = Vec::new();
    let mut at = offset;
    while at < end && ranges.len() < ranges_max {
        let Some(data) = seek(file, at, libc::SEEK_DATA)? else { break };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        ranges.push((data, hole - data));
        at = hole;
    }
    Ok(ranges)
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`; `None` when there is no more data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let Ok(start) = libc::off_t::try_from(offset) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"));
    };
    // SAFETY: lseek only reads its integer arguments; the fd is owned by `file` and open.
    let result = unsafe { libc::lseek(file.as_raw_fd(), start, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // No hole support (some block devices): everything is data.
        Some(libc::EINVAL) if whence == libc::SEEK_DATA => Ok(Some(offset)),
        Some(libc::EINVAL) => Ok(None),
        _ => Err(error),
    }
}

/// Tells the kernel the clean cached pages of `[offset, offset + len)` will not be needed
/// again. A full-disk scan then leaves the page cache as it found it, instead of filling it
/// with large readahead folios that make the workload's later small writes to the same file
/// expensive (ext4 walks every block of a large folio on each partial write).
pub fn drop_cache(file: &File, offset: u64, len: u64) {
    let (Ok(start), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
    else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned by `file` and
    // open. The advice is a hint: a failure changes nothing we rely on.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), start, length, libc::POSIX_FADV_DONTNEED) };
}
