//! The siterelay appliance's configuration file: one TOML document with the
//! sections `[log]`, `[relay]`, `[target]` and `[agent]` (plus
//! `[[agent.disk]]` entries).
//!
//! Every key is optional and has a default (see [`DEFAULT_TOML`], the
//! documented default file) and a limit. Parsing rejects unknown keys and
//! reports the line and column together with the valid keys; validation
//! reports limit violations by dotted key path (`relay.segment_bytes`).
//!
//! This crate is pure: it never touches files or the network. Callers read
//! the file and pass its text to [`Config::from_toml`].

#![forbid(unsafe_code)] // pure crate: parsing and encoding only, no unsafe

mod error;
mod locate;
mod sections;
mod size;
mod validate;

#[cfg(test)]
mod tests;

use serde::Deserialize;

pub use error::ConfigError;
pub use locate::line_column;
pub use sections::{
    AgentConfig, ApplianceConfig, ApplianceRole, DiskConfig, GroupConfig, LogConfig, LogLevel,
    RelayConfig, RetentionConfig, SecurityConfig, TargetConfig,
};
pub use size::{format_byte_size, parse_byte_size};
pub use validate::validate_disk_name;

/// The documented default configuration file shipped with the appliance. It
/// parses to exactly [`Config::default()`].
pub const DEFAULT_TOML: &str = include_str!("../../../config/appliance.toml");

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[log]`
    pub log: LogConfig,
    /// `[appliance]`
    pub appliance: ApplianceConfig,
    /// `[security]`
    pub security: SecurityConfig,
    /// `[relay]`
    pub relay: RelayConfig,
    /// `[target]`
    pub target: TargetConfig,
    /// `[agent]` and `[[agent.disk]]`
    pub agent: AgentConfig,
}

impl Config {
    /// Parses and validates a configuration text. Syntax and schema problems
    /// (including unknown keys) give [`ConfigError::Syntax`]; limit
    /// violations give [`ConfigError::Invalid`], located in `text` when the
    /// key was written there.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|error| locate::syntax_error(text, &error))?;
        config.validate().map_err(|error| locate::locate_invalid(text, error))?;
        Ok(config)
    }

    /// Checks every limit and cross-field rule, returning the first
    /// violation. Useful after a caller changed fields (e.g. from CLI flags).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate_config(self)
    }
}
