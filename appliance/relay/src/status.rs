//! The relay's status document, served to `siterelay status`.

use crate::event_loop::Relay;

pub(crate) fn status_json(relay: &Relay) -> String {
    let disks: Vec<serde_json::Value> = relay
        .disks
        .list
        .iter()
        .map(|disk| {
            let (state, done, total) = match disk.reported_state {
                Some((state, done, total)) => (state.as_str(), done, total),
                None => ("unknown", 0, disk.size_bytes),
            };
            serde_json::json!({
                "name": disk.name,
                "generation": wire::generation_to_hex(&disk.generation),
                "state": state,
                "done_bytes": done,
                "total_bytes": total,
                "size_bytes": disk.size_bytes,
                "agent_connected": disk.agent.is_some(),
                "cache_seq": disk.cache_seq,
                "replicated_seq": disk.replicated_seq,
                "backlog_frames": disk.cache_seq.saturating_sub(disk.replicated_seq),
                "bytes_received": disk.bytes_received,
                "bytes_stored": disk.bytes_stored,
                "bytes_forwarded": disk.bytes_forwarded,
            })
        })
        .collect();
    serde_json::json!({
        "role": "relay",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": relay.started.elapsed().as_secs(),
        "target": { "address": relay.target_address().to_string(), "connected": relay.target_connected() },
        "cache": {
            "dir": relay.cache.dir,
            "bytes_used": relay.cache.bytes_used(),
            "bytes_max": relay.cache.bytes_max,
            "segments": relay.cache.segments.len(),
        },
        "disks": disks,
        "groups": relay.groups.iter().map(|group| serde_json::json!({
            "name": group.options.name,
            "disks": group.options.disks,
            "interval_secs": group.options.interval.as_secs(),
            "confirmed_points": group.confirmed,
            "failed_points": group.failed,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}
