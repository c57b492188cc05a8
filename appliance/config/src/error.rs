//! The one error type of this crate.

/// Why a configuration text was rejected.
///
/// Both variants name the place of the problem so an operator can fix the
/// file without reading source code: `Syntax` by position, `Invalid` by the
/// dotted key path (and, when the key appears in the text, by position too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not TOML, or does not fit the schema (unknown key, wrong
    /// type, unparsable value). `line` and `column` are 1-based; `column`
    /// counts characters, not bytes. For unknown keys `message` keeps serde's
    /// wording, which lists the valid keys ("expected one of `a`, `b`").
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// Human-readable description, without a source snippet.
        message: String,
    },
    /// A value is well-formed but outside its limits or inconsistent with
    /// another value.
    #[error("{key} = {value}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `relay.segment_bytes` or `agent.disk[1].name`.
        key: String,
        /// The value as a TOML literal: the text as written in the file when
        /// the key appears there, otherwise the (default) value rendered.
        value: String,
        /// Which limit was violated; when the key appears in the text passed
        /// to `Config::from_toml`, ends with its `(line L, column C)`.
        reason: String,
    },
}
