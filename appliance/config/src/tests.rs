//! Unit tests: the default file, error positions and messages, byte sizes,
//! and every limit.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::locate::line_column;
use crate::size::{GIB, KIB, MIB, TIB};
use crate::*;

fn syntax_error(text: &str) -> (usize, usize, String) {
    match Config::from_toml(text) {
        Err(ConfigError::Syntax { line, column, message }) => (line, column, message),
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    }
}

fn invalid_error(text: &str) -> (String, String, String) {
    match Config::from_toml(text) {
        Err(ConfigError::Invalid { key, value, reason }) => (key, value, reason),
        other => panic!("expected an invalid-value error for {text:?}, got {other:?}"),
    }
}

/// The keys serde lists as valid for `section` (empty = top level).
fn valid_keys(section: &str) -> Vec<String> {
    let header = if section.is_empty() { String::new() } else { format!("[{section}]\n") };
    let (_, _, message) = syntax_error(&format!("{header}no_such_key = 1\n"));
    message
        .split('`')
        .skip(3) // "unknown field ", "no_such_key", ", expected ..."
        .step_by(2)
        .map(str::to_string)
        .collect()
}

// ---- the default file ----

#[test]
fn default_file_parses_to_default() {
    assert_eq!(Config::from_toml(DEFAULT_TOML).unwrap(), Config::default());
}

#[test]
fn empty_text_is_default() {
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
    Config::default().validate().unwrap();
}

#[test]
fn default_file_documents_every_key() {
    for section in ["log", "appliance", "relay", "target", "agent"] {
        let keys = valid_keys(section);
        assert!(!keys.is_empty(), "no keys found for [{section}]");
        for key in keys.iter().filter(|key| !["disk", "retention", "group"].contains(&key.as_str()))
        {
            let line = format!("\n{key} = ");
            assert!(DEFAULT_TOML.contains(&line), "[{section}] {key} missing");
        }
    }
    assert!(DEFAULT_TOML.contains("# [[agent.disk]]"));
    assert!(DEFAULT_TOML.contains("\n[target.retention]"));
    assert!(DEFAULT_TOML.contains("# [[relay.group]]"));
}

#[test]
fn default_values_match_schema() {
    let config = Config::default();
    assert_eq!(config.log.level, LogLevel::Info);
    assert_eq!(config.relay.listen, "127.0.0.1:7700".parse::<SocketAddr>().unwrap());
    assert_eq!(config.relay.target, "127.0.0.1:7800".parse::<SocketAddr>().unwrap());
    assert_eq!(config.relay.cache_bytes_max, 64 * GIB);
    assert_eq!(config.relay.segment_bytes, 64 * MIB);
    assert_eq!(config.target.listen, config.relay.target);
    assert_eq!(config.agent.relay, config.relay.listen);
    assert_eq!(config.agent.block_bytes, 4 * KIB);
    assert_eq!(config.agent.frame_payload_bytes, MIB);
    assert!(config.agent.disks.is_empty());
}

// ---- syntax errors: positions and messages ----

#[test]
fn unknown_top_level_key_lists_sections() {
    let (line, column, message) = syntax_error("# comment\nfoo = 1\n");
    assert_eq!((line, column), (2, 1));
    assert!(message.starts_with("unknown field `foo`"), "{message}");
    assert!(message
        .contains("expected one of `log`, `appliance`, `security`, `relay`, `target`, `agent`"));
}

#[test]
fn unknown_section_points_at_its_name() {
    let (line, column, message) = syntax_error("[log]\n\n[relai]\nlisten = 1\n");
    assert_eq!((line, column), (3, 2));
    assert!(message.contains("unknown field `relai`"), "{message}");
}

#[test]
fn unknown_key_in_section_lists_section_keys() {
    let text = "[relay]\nlisten = \"127.0.0.1:1\"\n  segment_size = 3\n";
    let (line, column, message) = syntax_error(text);
    assert_eq!((line, column), (3, 3));
    assert!(message.contains("unknown field `segment_size`"), "{message}");
    assert!(message.contains("`segment_bytes`"), "{message}");
    assert!(message.contains("`heartbeat_secs`"), "{message}");
}

#[test]
fn unknown_key_in_disk_lists_disk_keys() {
    let text = "[[agent.disk]]\nname = \"a\"\npath = \"/x\"\nsize = 3\n";
    let (line, column, message) = syntax_error(text);
    assert_eq!((line, column), (4, 1));
    assert_eq!(message, "unknown field `size`, expected `name` or `path`");
}

#[test]
fn syntax_error_display_has_position() {
    let error = Config::from_toml("[relay]\nbogus = 1\n").unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("line 2, column 1: unknown field `bogus`"), "{text}");
}

#[test]
fn wrong_type_is_syntax_error_at_value() {
    let (line, column, message) = syntax_error("[relay]\nagents_max = \"many\"\n");
    assert_eq!((line, column), (2, 14));
    assert!(message.contains("invalid type: string \"many\""), "{message}");
}

#[test]
fn wrong_section_type() {
    let (line, column, _) = syntax_error("log = 3\n");
    assert_eq!((line, column), (1, 7));
}

#[test]
fn count_out_of_integer_range_is_rejected() {
    let (line, _, message) = syntax_error("[relay]\nagents_max = 99999999999\n");
    assert_eq!(line, 2);
    assert!(message.contains("99999999999"), "{message}");
}

#[test]
fn malformed_toml_gives_one_line_message() {
    let (line, column, message) = syntax_error("[log]\nlevel = \n");
    assert_eq!((line, column), (2, 9));
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn unknown_log_level_lists_levels() {
    let (line, column, message) = syntax_error("[log]\nlevel = \"verbose\"\n");
    assert_eq!((line, column), (2, 9));
    assert!(message.contains("`error`, `warn`, `info`, `debug`, `trace`"), "{message}");
}

#[test]
fn log_levels_parse() {
    for level in LogLevel::ALL {
        let config = Config::from_toml(&format!("[log]\nlevel = \"{level}\"\n")).unwrap();
        assert_eq!(config.log.level, level);
        assert_eq!(level.as_str().parse::<LogLevel>(), Ok(level));
    }
    assert!("INFO".parse::<LogLevel>().is_err());
}

#[test]
fn bad_address_is_syntax_error_with_hint() {
    let (line, column, message) = syntax_error("[relay]\nlisten = \"localhost:7700\"\n");
    assert_eq!((line, column), (2, 10));
    assert!(message.contains("invalid socket address `localhost:7700`"), "{message}");
    let (_, _, message) = syntax_error("[agent]\nrelay = \"10.0.0.1\"\n");
    assert!(message.contains("IP:port"), "{message}");
    let (_, _, message) = syntax_error("[target]\nlisten = 7800\n");
    assert!(message.contains("socket address"), "{message}");
}

#[test]
fn ipv6_addresses_parse() {
    let config = Config::from_toml("[relay]\nlisten = \"[::1]:7700\"\ntarget = \"[::1]:7800\"\n");
    assert_eq!(config.unwrap().relay.listen, "[::1]:7700".parse().unwrap());
}

#[test]
fn missing_disk_key_is_rejected() {
    let (_, _, message) = syntax_error("[[agent.disk]]\nname = \"a\"\n");
    assert!(message.contains("missing field `path`"), "{message}");
}

#[test]
fn column_counts_characters() {
    let (line, column, _) = syntax_error("# é€\n[relay] # ü\n  x = 1\n");
    assert_eq!((line, column), (3, 3));
    assert_eq!(line_column("aé\nbü€x", 9), (2, 4));
    assert_eq!(line_column("abc", 99), (1, 4));
    assert_eq!(line_column("é", 1), (1, 2));
}

// ---- byte sizes ----

#[test]
fn byte_sizes_accepted() {
    let cases = [
        ("64KiB", 64 * KIB),
        ("1 MiB", MIB),
        ("1000", 1000),
        ("0", 0),
        (" 8 B ", 8),
        ("3GiB", 3 * GIB),
        ("2TiB", 2 * TIB),
        ("5KB", 5_000),
        ("2MB", 2_000_000),
        ("7GB", 7_000_000_000),
        ("1TB", 1_000_000_000_000),
        ("18446744073709551615", u64::MAX),
        ("16777215TiB", 16_777_215 * TIB),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_byte_size(text), Ok(bytes), "{text:?}");
    }
}

#[test]
fn byte_sizes_rejected() {
    let cases = [
        ("1.5GiB", "fractions are not supported"),
        ("-1", "expected a whole number"),
        ("+1", "expected a whole number"),
        ("", "expected a whole number"),
        ("MiB", "expected a whole number"),
        ("1 mib", "unknown unit"),
        ("1 KiB extra", "unknown unit"),
        ("1_000", "unknown unit"),
        ("18446744073709551616", "too large"),
        ("16777216TiB", "larger than"),
    ];
    for (text, expected) in cases {
        let error = parse_byte_size(text).unwrap_err();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn byte_sizes_formatted_exactly() {
    assert_eq!(format_byte_size(0), "0 B");
    assert_eq!(format_byte_size(1000), "1000 B");
    assert_eq!(format_byte_size(64 * KIB), "64 KiB");
    assert_eq!(format_byte_size(1536 * MIB), "1536 MiB");
    assert_eq!(format_byte_size(64 * MIB), "64 MiB");
    assert_eq!(format_byte_size(GIB), "1 GiB");
    assert_eq!(format_byte_size(64 * TIB), "64 TiB");
    assert_eq!(format_byte_size(u64::MAX), format!("{} B", u64::MAX));
}

#[test]
fn byte_size_fields_accept_integers_and_strings() {
    let text = "[agent]\nblock_bytes = 8192\nread_chunk_bytes = \"1 MiB\"\n";
    let agent = Config::from_toml(text).unwrap().agent;
    assert_eq!((agent.block_bytes, agent.read_chunk_bytes), (8 * KIB, MIB));
}

#[test]
fn byte_size_fields_reject_bad_values_with_position() {
    let (line, column, message) = syntax_error("[relay]\nsegment_bytes = -1\n");
    assert_eq!((line, column), (2, 17));
    assert!(message.contains("must not be negative"), "{message}");
    let (line, _, message) = syntax_error("[relay]\nsegment_bytes = \"1.5GiB\"\n");
    assert_eq!(line, 2);
    assert!(message.contains("fractions"), "{message}");
    let (_, _, message) = syntax_error("[relay]\nsegment_bytes = 1.5\n");
    assert!(message.contains("expected a byte size"), "{message}");
}

// ---- limits ----

#[test]
fn invalid_display_matches_documented_format() {
    let error = Config::from_toml("[relay]\nsegment_bytes = \"2GiB\"\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "relay.segment_bytes = \"2GiB\": must be between 1 MiB and 1 GiB (line 2, column 17)"
    );
}

#[test]
fn validate_renders_value_without_source_text() {
    let mut config = Config::default();
    config.relay.segment_bytes = 2 * GIB;
    let error = config.validate().unwrap_err();
    assert_eq!(
        error.to_string(),
        "relay.segment_bytes = \"2 GiB\": must be between 1 MiB and 1 GiB"
    );
}

#[test]
fn every_limit_is_enforced_with_dotted_key() {
    let cases = [
        ("[relay]\ncache_bytes_max = \"32MiB\"", "relay.cache_bytes_max"),
        ("[relay]\ncache_bytes_max = \"65TiB\"", "relay.cache_bytes_max"),
        ("[relay]\nsegment_bytes = \"512KiB\"", "relay.segment_bytes"),
        ("[relay]\nsegment_bytes = \"2GiB\"", "relay.segment_bytes"),
        ("[relay]\ncache_bytes_max = \"128MiB\"", "relay.segment_bytes"),
        ("[relay]\ncompression_level = 20", "relay.compression_level"),
        ("[relay]\ngroup_commit_bytes_max = \"32KiB\"", "relay.group_commit_bytes_max"),
        ("[relay]\ngroup_commit_bytes_max = \"512MiB\"", "relay.group_commit_bytes_max"),
        ("[relay]\nagents_max = 0", "relay.agents_max"),
        ("[relay]\nagents_max = 4097", "relay.agents_max"),
        ("[relay]\ndisks_max = 0", "relay.disks_max"),
        ("[relay]\ndisks_max = 65537", "relay.disks_max"),
        ("[relay]\nqueue_depth = 8", "relay.queue_depth"),
        ("[relay]\nqueue_depth = 100", "relay.queue_depth"),
        ("[relay]\nqueue_depth = 8192", "relay.queue_depth"),
        ("[relay]\nheartbeat_secs = 0", "relay.heartbeat_secs"),
        ("[relay]\nheartbeat_secs = 301", "relay.heartbeat_secs"),
        ("[relay]\ntarget = \"0.0.0.0:7800\"", "relay.target"),
        ("[relay]\ntarget = \"127.0.0.1:0\"", "relay.target"),
        ("[relay]\ntarget = \"127.0.0.1:7700\"", "relay.target"),
        ("[relay]\ncache_dir = \"\"", "relay.cache_dir"),
        ("[target]\ndata_dir = \"\"", "target.data_dir"),
        ("[target]\ngroup_commit_bytes_max = 1", "target.group_commit_bytes_max"),
        ("[target]\ngroup_commit_bytes_max = \"1GiB\"", "target.group_commit_bytes_max"),
        ("[target]\npoint_interval_secs = 0", "target.point_interval_secs"),
        ("[agent]\napp_consistent_interval_secs = 60", "agent.freeze_command"),
        (
            "[agent]\napp_consistent_interval_secs = 60\nfreeze_command = \"sync\"",
            "agent.thaw_command",
        ),
        ("[agent]\nhook_timeout_secs = 0", "agent.hook_timeout_secs"),
        ("[[relay.group]]\nname = \"g\"\ndisks = []", "relay.group[0].disks"),
        ("[[relay.group]]\nname = \"g\"\ndisks = [\"a\"]\ninterval_secs = 0", "relay.group[0].interval_secs"),
        (
            "[[relay.group]]\nname = \"g\"\ndisks = [\"a\"]\n[[relay.group]]\nname = \"h\"\ndisks = [\"a\"]",
            "relay.group[1].disks",
        ),
        ("[target]\njournal_bytes_max = \"1MiB\"", "target.journal_bytes_max"),
        ("[target.retention]\nwindow_secs = 0", "target.retention.window_secs"),
        ("[target.retention]\nwindow_secs = 1296001", "target.retention.window_secs"),
        (
            "[target.retention]\nwindow_secs = 60\nkeep_all_secs = 61",
            "target.retention.keep_all_secs",
        ),
        ("[target.retention]\nbucket_secs = 0", "target.retention.bucket_secs"),
        ("[agent]\nrelay = \"[::]:7700\"", "agent.relay"),
        ("[agent]\nstate_dir = \"\"", "agent.state_dir"),
        ("[agent]\nblock_bytes = \"2KiB\"", "agent.block_bytes"),
        ("[agent]\nblock_bytes = \"2MiB\"", "agent.block_bytes"),
        ("[agent]\nblock_bytes = \"48KiB\"", "agent.block_bytes"),
        ("[agent]\nread_chunk_bytes = \"32KiB\"", "agent.read_chunk_bytes"),
        ("[agent]\nread_chunk_bytes = \"128MiB\"", "agent.read_chunk_bytes"),
        (
            "[agent]\nblock_bytes = \"64KiB\"\nread_chunk_bytes = \"96KiB\"",
            "agent.read_chunk_bytes",
        ),
        ("[agent]\nframe_payload_bytes = \"32KiB\"", "agent.frame_payload_bytes"),
        ("[agent]\nframe_payload_bytes = \"16MiB\"", "agent.frame_payload_bytes"),
        ("[agent]\nwindow_bytes = \"1MiB\"", "agent.window_bytes"),
        ("[agent]\nwindow_bytes = \"2GiB\"", "agent.window_bytes"),
        ("[agent]\nreconnect_timeout_secs = 0", "agent.reconnect_timeout_secs"),
        ("[agent]\nreconnect_timeout_secs = 86401", "agent.reconnect_timeout_secs"),
        ("[[agent.disk]]\nname = \"d\"\npath = \"\"", "agent.disk[0].path"),
    ];
    for (text, expected_key) in cases {
        let (key, value, reason) = invalid_error(text);
        assert_eq!(key, expected_key, "{text}");
        assert!(reason.starts_with("must") || reason.starts_with("duplicates"), "{reason}");
        assert!(!value.is_empty(), "{text}");
    }
}

#[test]
fn limits_accept_their_bounds() {
    let text = "[relay]\ncache_bytes_max = \"64TiB\"\nsegment_bytes = \"1GiB\"\n\
                compression_level = 0\nqueue_depth = 4096\nagents_max = 4096\n\
                [agent]\nblock_bytes = \"1MiB\"\nread_chunk_bytes = \"64MiB\"\n\
                frame_payload_bytes = \"8MiB\"\nwindow_bytes = \"16MiB\"\n";
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.relay.cache_bytes_max, 64 * TIB);
    assert_eq!(config.agent.window_bytes, 16 * MIB);
}

#[test]
fn listen_port_zero_is_allowed() {
    let config = Config::from_toml("[relay]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    assert_eq!(config.relay.listen.port(), 0);
}

#[test]
fn cross_field_error_on_default_value_is_unlocated() {
    let (key, value, reason) = invalid_error("[relay]\ncache_bytes_max = \"128MiB\"\n");
    assert_eq!(key, "relay.segment_bytes");
    assert_eq!(value, "\"64 MiB\"");
    assert_eq!(reason, "must be at most a quarter of relay.cache_bytes_max (32 MiB)");
}

#[test]
fn window_must_hold_two_frames() {
    let text = "[agent]\nframe_payload_bytes = \"8MiB\"\nwindow_bytes = \"8MiB\"\n";
    let (key, value, reason) = invalid_error(text);
    assert_eq!((key.as_str(), value.as_str()), ("agent.window_bytes", "\"8MiB\""));
    assert!(reason.starts_with("must be at least twice agent.frame_payload_bytes (16 MiB)"));
}

// ---- disks ----

const TWO_DISKS: &str = "[[agent.disk]]\nname = \"disk0\"\npath = \"/dev/sdb\"\n\n\
                         [[agent.disk]]\nname = \"disk1\"\npath = \"/srv/images/web.img\"\n";

#[test]
fn disks_parse_in_order() {
    let disks = Config::from_toml(TWO_DISKS).unwrap().agent.disks;
    let expected = [("disk0", "/dev/sdb"), ("disk1", "/srv/images/web.img")];
    assert_eq!(disks.len(), 2);
    for (disk, (name, path)) in disks.iter().zip(expected) {
        assert_eq!((disk.name.as_str(), &disk.path), (name, &PathBuf::from(path)));
    }
}

#[test]
fn duplicate_disk_names_are_rejected() {
    let text = TWO_DISKS.replace("disk1", "disk0");
    let (key, value, reason) = invalid_error(&text);
    assert_eq!((key.as_str(), value.as_str()), ("agent.disk[1].name", "\"disk0\""));
    assert!(reason.starts_with("duplicates agent.disk[0].name"), "{reason}");
    assert!(reason.ends_with("(line 6, column 8)"), "{reason}");
}

#[test]
fn bad_disk_names_are_rejected_in_config() {
    let text = TWO_DISKS.replace("disk1", "../etc");
    let (key, value, reason) = invalid_error(&text);
    assert_eq!((key.as_str(), value.as_str()), ("agent.disk[1].name", "\"../etc\""));
    assert!(reason.contains("must not start with '.'"), "{reason}");
}

#[test]
fn disk_name_rules() {
    let long_ok = "a".repeat(64);
    for name in ["disk0", "a", "A.b_c-D", "0", long_ok.as_str(), "a..b"] {
        assert_eq!(validate_disk_name(name), Ok(()), "{name:?}");
    }
    let too_long = "a".repeat(65);
    let bad = [
        ("", "1 to 64"),
        (too_long.as_str(), "1 to 64"),
        (".hidden", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("a/b", "contains '/'"),
        ("a b", "contains ' '"),
        ("diské", "contains 'é'"),
        ("tab\t", "contains '\\t'"),
    ];
    for (name, expected) in bad {
        let error = validate_disk_name(name).unwrap_err();
        assert!(error.contains(expected), "{name:?}: {error}");
    }
}

#[test]
fn too_many_disks_are_rejected() {
    let mut config = Config::default();
    let disk = DiskConfig { name: "d".to_string(), path: PathBuf::from("/d") };
    config.agent.disks = vec![disk; 65_537];
    match config.validate() {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "agent.disk"),
        other => panic!("{other:?}"),
    }
}
