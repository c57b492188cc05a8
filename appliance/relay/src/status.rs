//! The relay's status document, served to `siterelay status`.

use crate::event_loop::Relay;

/// The installed version this process announces.
fn own_version() -> &'static str {
    wire::identity().map_or(env!("CARGO_PKG_VERSION"), |id| id.product_version.as_str())
}

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
        "version": own_version(),
        "site": wire::identity().map_or("", |id| id.site_id.as_str()),
        "node": wire::identity().map_or("", |id| id.node_id.as_str()),
        "uptime_secs": relay.started.elapsed().as_secs(),
        "plaintext": relay.plaintext(),
        "target": {
            "address": relay.target_address().to_string(),
            "connected": relay.target_connected(),
            "version": relay.target_identity().map(|id| id.product_version.clone()),
            "site": relay.target_identity().map(|id| id.site_id.clone()),
            "node": relay.target_identity().map(|id| id.node_id.clone()),
        },
        "agents": relay.agent_identities().iter().map(|id| serde_json::json!({
            "node": id.node_id, "site": id.site_id, "version": id.product_version,
        })).collect::<Vec<_>>(),
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
