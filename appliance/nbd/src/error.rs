//! Error type of the NBD wire format.

/// Why bytes from the client are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NbdError {
    /// A magic number is wrong: the stream is not NBD or is out of sync, so the server
    /// must close the connection.
    #[error("{what} magic {found:#x} is not {expected:#x}")]
    BadMagic {
        /// Which message carried it.
        what: &'static str,
        /// The value received.
        found: u64,
        /// The value the protocol requires.
        expected: u64,
    },
    /// The client flags are unacceptable; the specification requires closing the
    /// connection.
    #[error("client flags {flags:#010x} refused: {reason}")]
    ClientFlags {
        /// The flags received.
        flags: u32,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A length inside option data points past its end.
    #[error("{what} truncated: needs {needed} bytes but only {got} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the data.
        got: usize,
    },
    /// Option data is malformed (for example trailing bytes, or data where none is allowed).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The option or field concerned.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A length or count exceeds one of the server's [`crate::limits`].
    #[error("{what} {len} exceeds the limit of {max}")]
    TooLong {
        /// The length or count concerned.
        what: &'static str,
        /// Its value.
        len: usize,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem() {
        let magic = NbdError::BadMagic {
            what: "NBD request",
            found: 0x1234_5678,
            expected: crate::consts::REQUEST_MAGIC.into(),
        };
        assert_eq!(magic.to_string(), "NBD request magic 0x12345678 is not 0x25609513");
        let flags = NbdError::ClientFlags { flags: 4, reason: "unknown flag bits" }.to_string();
        assert!(flags.contains("0x00000004") && flags.contains("unknown"), "{flags}");
        let short = NbdError::Truncated { what: "export name", needed: 9, got: 2 }.to_string();
        assert!(short.contains("export name") && short.contains('9'), "{short}");
        let long = NbdError::TooLong { what: "query count", len: 17, max: 16 }.to_string();
        assert_eq!(long, "query count 17 exceeds the limit of 16");
    }
}
