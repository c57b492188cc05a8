//! A minimal NBD client for `quickstart`: fixed newstyle, NBD_OPT_GO on the default export,
//! simple replies, one request at a time. Real workloads use qemu, nbdfuse or the kernel
//! client; this only lets the quickstart write through the tap on a machine without them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nbd::consts::*;

pub(crate) struct NbdClient {
    stream: UnixStream,
    next_handle: u64,
}

impl NbdClient {
    pub(crate) fn connect(socket: &Path) -> Result<NbdClient, String> {
        let fail = |error: std::io::Error| format!("NBD {}: {error}", socket.display());
        let mut stream = UnixStream::connect(socket).map_err(fail)?;
        let mut greeting = [0u8; nbd::GREETING_BYTES];
        stream.read_exact(&mut greeting).map_err(fail)?;
        if greeting[..8] != NBDMAGIC.to_be_bytes() || greeting[8..16] != IHAVEOPT.to_be_bytes() {
            return Err("NBD server greeting is not fixed newstyle".into());
        }
        let flags = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
        let mut hello = flags.to_be_bytes().to_vec();
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&OPT_GO.to_be_bytes());
        hello.extend_from_slice(&6u32.to_be_bytes()); // empty name, no info requests
        hello.extend_from_slice(&[0; 6]);
        stream.write_all(&hello).map_err(fail)?;
        loop {
            let mut header = [0u8; 20];
            stream.read_exact(&mut header).map_err(fail)?;
            let reply_type = u32::from_be_bytes(header[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(header[16..20].try_into().expect("4"));
            if len > 1 << 16 {
                return Err(format!("NBD option reply of {len} bytes"));
            }
            let mut data = vec![0u8; len as usize];
            stream.read_exact(&mut data).map_err(fail)?;
            match reply_type {
                REP_ACK => break,
                REP_INFO => {}
                other => return Err(format!("NBD_OPT_GO refused (reply type {other:#x})")),
            }
        }
        Ok(NbdClient { stream, next_handle: 1 })
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        self.request(CMD_WRITE, offset, data.len() as u32, data, &mut [])
    }

    pub(crate) fn read(&mut self, offset: u64, into: &mut [u8]) -> Result<(), String> {
        self.request(CMD_READ, offset, into.len() as u32, &[], into)
    }

    pub(crate) fn flush(&mut self) -> Result<(), String> {
        self.request(CMD_FLUSH, 0, 0, &[], &mut [])
    }

    /// One request; a read's data (simple reply: it follows the reply header) lands in `into`.
    fn request(
        &mut self,
        command: u16,
        offset: u64,
        len: u32,
        data: &[u8],
        into: &mut [u8],
    ) -> Result<(), String> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut request = Vec::with_capacity(nbd::REQUEST_BYTES + data.len());
        request.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&command.to_be_bytes());
        request.extend_from_slice(&handle.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&len.to_be_bytes());
        request.extend_from_slice(data);
        let fail = |error: std::io::Error| format!("NBD request: {error}");
        self.stream.write_all(&request).map_err(fail)?;
        let mut reply = [0u8; nbd::SIMPLE_REPLY_BYTES];
        self.stream.read_exact(&mut reply).map_err(fail)?;
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("4"));
        if reply[..4] != SIMPLE_REPLY_MAGIC.to_be_bytes() || reply[8..] != handle.to_be_bytes() {
            return Err("NBD reply out of order".into());
        }
        if error != 0 {
            return Err(format!("NBD command {command} failed with error {error}"));
        }
        self.stream.read_exact(into).map_err(fail)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let mut request = REQUEST_MAGIC.to_be_bytes().to_vec();
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&CMD_DISC.to_be_bytes());
        request.extend_from_slice(&[0; 20]);
        let _ = self.stream.write_all(&request);
    }
}
