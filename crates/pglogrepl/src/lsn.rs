//! PostgreSQL log sequence numbers (LSN).
//!
//! An LSN is a 64-bit byte position in the write-ahead log. PostgreSQL prints it as two
//! hexadecimal 32-bit halves separated by a slash (`16/B374D848`), the form used by
//! `pg_current_wal_lsn()`, `CREATE_REPLICATION_SLOT` and `START_REPLICATION`.

use std::fmt;
use std::str::FromStr;

/// A WAL position in bytes (PostgreSQL's `pg_lsn`). `Lsn(0)` is the invalid LSN `0/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Error returned by [`Lsn::from_str`] for text that is not `XXXXXXXX/XXXXXXXX` hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl Lsn {
    /// The invalid LSN `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// Bytes of WAL between `earlier` and `self` (0 when `earlier` is ahead).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_text_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
    }

    #[test]
    fn rejects_malformed_text() {
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("xyz/1".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn bytes_since_saturates() {
        assert_eq!(Lsn(100).bytes_since(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_since(Lsn(100)), 0);
    }
}
