//! [`Reader`], the big-endian cursor over one pgoutput payload: every read checks the
//! remaining length and reports a [`DecodeError`] naming the field and its offset.

use bytes::Bytes;

use super::error::DecodeError;
use crate::lsn::Lsn;

/// Big-endian cursor over one message; every read checks the remaining length.
pub(super) struct Reader {
    buf: Bytes,
    /// Offset of the next byte to read.
    pub(super) pos: usize,
}

impl Reader {
    /// A cursor at the start of `buf`.
    pub(super) fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes as a slice of the buffer.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub(super) fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    /// An Int16 count that must not be negative.
    pub(super) fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i16(what)?;
        usize::try_from(n)
            .map_err(|_| DecodeError::Malformed(format!("{what} {n} is negative (at byte {at})")))
    }

    /// An Int32 length (must not be negative) followed by that many bytes.
    pub(super) fn length_prefixed(
        &mut self,
        len_what: &'static str,
        what: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let n = self.i32(len_what)?;
        let n = usize::try_from(n).map_err(|_| {
            DecodeError::Malformed(format!("{len_what} {n} is negative (at byte {at})"))
        })?;
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    pub(super) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: rest.len() + 1,
                available: rest.len(),
            });
        };
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8)?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    pub(super) fn expect_new_marker(&mut self, message: &str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8("new tuple marker")? {
            b'N' => Ok(()),
            other => Err(bad_marker(message, "'N'", other, at)),
        }
    }

    /// Fails if bytes are left after a complete message.
    pub(super) fn finish(&self, message: &str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Malformed(format!(
                "{message}: {n} unexpected trailing bytes at byte {}",
                self.pos
            ))),
        }
    }
}

/// The Malformed error of a wrong tuple marker byte `got` at offset `at` in `message`.
pub(super) fn bad_marker(message: &str, expected: &str, got: u8, at: usize) -> DecodeError {
    DecodeError::Malformed(format!(
        "{message}: expected tuple marker {expected} at byte {at}, found {got:#04x} ('{}')",
        (got as char).escape_default()
    ))
}
