//! Little-endian field writer and bounds-checked reader. The reader never slices past its
//! buffer and never allocates: callers check a length against a limit before they ask for it.

use crate::error::WireError;

pub(crate) struct FieldWriter<'a> {
    pub(crate) out: &'a mut Vec<u8>,
}

impl FieldWriter<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }
    /// Short string: u8 length. Callers validate the length against `NAME_BYTES_MAX`.
    pub(crate) fn name(&mut self, v: &str) {
        let len = u8::try_from(v.len()).expect("name length validated before encoding");
        self.u8(len);
        self.bytes(v.as_bytes());
    }
    /// Bytes with a u16 length. Callers validate the length against their limit.
    pub(crate) fn blob(&mut self, v: &[u8]) {
        let len = u16::try_from(v.len()).expect("blob length validated before encoding");
        self.u16(len);
        self.bytes(v);
    }
    /// Long text: u32 length.
    pub(crate) fn text(&mut self, v: &str) {
        let len = u32::try_from(v.len()).expect("text length validated before encoding");
        self.u32(len);
        self.bytes(v.as_bytes());
    }
}

pub(crate) struct FieldReader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(buf: &'a [u8], frame: &'static str) -> Self {
        Self { buf, frame }
    }

    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if len > self.buf.len() {
            return Err(WireError::Truncated { frame: self.frame, field });
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count field, checked against `max` before the caller allocates for it.
    pub(crate) fn count(&mut self, field: &'static str, max: usize) -> Result<usize, WireError> {
        let value = self.u32(field)?;
        let count = usize::try_from(value).unwrap_or(usize::MAX);
        if count > max {
            return Err(WireError::OverLimit { field, value: u64::from(value), max: max as u64 });
        }
        Ok(count)
    }

    pub(crate) fn name(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = usize::from(self.u8(field)?);
        if len > crate::limits::NAME_BYTES_MAX {
            return Err(WireError::OverLimit {
                field,
                value: len as u64,
                max: crate::limits::NAME_BYTES_MAX as u64,
            });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::BadUtf8 { field })
    }

    pub(crate) fn text(&mut self, field: &'static str, max: usize) -> Result<&'a str, WireError> {
        let len = self.count(field, max)?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::BadUtf8 { field })
    }

    /// Bytes with a u16 length, at most `max`.
    pub(crate) fn blob(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(WireError::OverLimit { field, value: len as u64, max: max as u64 });
        }
        self.take(len, field)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes { frame: self.frame, extra: self.buf.len() })
        }
    }
}
