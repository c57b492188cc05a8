//! Failover of a disk at the recovery site (design.md §5): replication to it stops, a chosen
//! recovery point is served read-write over NBD (writes go to an overlay kept next to the
//! disk, so they survive a target restart), the point may be changed until commit, and
//! commit makes point plus overlay the disk itself. Each step is recorded in the disk's
//! `failover.json` before it takes effect, and a target restart picks up where it was.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::failover::{self, CowPoint, PlainImage};
use crate::replica::{FailoverPhase, FailoverRecord, Replica};
use crate::Store;

fn now_text() -> String {
    format!("at {} ms since the epoch", crate::now_unix_ms())
}

fn replica_of(store: &Store, disk: &str) -> Result<Arc<Mutex<Replica>>, String> {
    let disks = store.disks.lock().expect("store lock");
    disks.get(disk).cloned().ok_or_else(|| crate::control::unknown_disk(&disks, disk))
}

pub(crate) fn record_json(disk: &str, record: &FailoverRecord) -> Value {
    json!({
        "disk": disk,
        "kind": record.kind,
        "point": record.point,
        "point_seq": record.point_seq,
        "point_time_unix_ms": record.point_time_unix_ms,
        "point_kind": record.point_kind,
        "phase": record.phase.as_str(),
        "export": record.nbd_listen.parse::<nbdserve::ListenAddr>().map(|a| a.to_string()).ok(),
        "log": record.log,
    })
}

/// Serves a failed-over disk: the point plus its overlay, or after commit the image itself.
fn serve(store: &Store, replica: &Replica) -> Result<String, String> {
    let record = replica.failover.as_ref().expect("the disk is failed over");
    let listen: nbdserve::ListenAddr = record.nbd_listen.parse()?;
    let name = replica.name.clone();
    let started = match record.phase {
        FailoverPhase::FailedOver => {
            let view = replica.view(record.point_seq);
            CowPoint::persistent(name.clone(), view, &replica.failover_dir())
                .and_then(|backend| failover::start_export(backend, &listen))
        }
        _ => std::fs::OpenOptions::new().read(true).write(true).open(&replica.image_path).and_then(
            |file| {
                let backend =
                    PlainImage { name: name.clone(), file, size_bytes: replica.size_bytes };
                failover::start_export(backend, &listen)
            },
        ),
    };
    let running =
        started.map_err(|error| format!("cannot serve disk {name} at {listen}: {error}"))?;
    let uri = running.local_addr().to_string();
    store.exports.lock().expect("exports lock").insert(name, running);
    Ok(uri)
}

fn stop_serving(store: &Store, disk: &str) {
    let running = store.exports.lock().expect("exports lock").remove(disk);
    if let Some(running) = running {
        running.stop();
    }
}

/// `failover unplanned|planned`: stops replication to `disk` and serves the chosen point. A
/// planned failover (`planned` holds the sequence the relay forwarded last) takes the final
/// point and only if nothing was written after it: zero data loss, or a refusal saying why.
pub(crate) fn start(
    store: &Store,
    disk: &str,
    planned: Option<u64>,
    wanted: &str,
    listen: &str,
) -> Result<Value, String> {
    let kind = if planned.is_some() { "planned" } else { "unplanned" };
    let _: nbdserve::ListenAddr = listen.parse()?;
    let replica = replica_of(store, disk)?;
    let mut replica = replica.lock().expect("replica lock");
    if let Some(record) = &replica.failover {
        return Err(format!(
            "disk {disk} is already failed over to point {} ({}); use `failover change-point` \
             or `failover commit`",
            record.point,
            record.phase.as_str()
        ));
    }
    let point = match planned {
        None => crate::control::resolve_point(store, &replica.points.points, disk, wanted)?,
        Some(forwarded) => final_point(&replica, disk, forwarded)?,
    };
    replica.pin(point.id);
    replica.failover = Some(FailoverRecord {
        kind: kind.to_string(),
        point: point.id,
        point_seq: point.seq,
        point_time_unix_ms: point.time_unix_ms,
        point_kind: point.kind.as_str().to_string(),
        nbd_listen: listen.to_string(),
        phase: FailoverPhase::FailedOver,
        log: vec![format!(
            "{kind} failover to point {} ({} point, sequence {}) {}; replication to this disk \
             stopped",
            point.id,
            point.kind.as_str(),
            point.seq,
            now_text()
        )],
    });
    let served = replica.save_failover().map_err(|error| error.to_string()).and_then(|()| {
        // A leftover overlay of an earlier, abandoned failover must not leak in.
        let dir = replica.failover_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|error| format!("cannot remove {}: {error}", dir.display()))?;
        }
        serve(store, &replica)
    });
    match served {
        Ok(uri) => {
            log::warn!("disk {disk}: failed over to point {} ({kind}), served at {uri}", point.id);
            let record = replica.failover.as_mut().expect("set above");
            record.log.push(format!("serving the failed-over disk at {uri}"));
            replica.save_failover().map_err(|error| error.to_string())?;
            Ok(record_json(disk, replica.failover.as_ref().expect("set above")))
        }
        Err(reason) => {
            replica.unpin(point.id);
            replica.failover = None;
            let _ = replica.save_failover();
            Err(reason)
        }
    }
}

/// The newest point, if it is the end of everything the target and the relay hold.
fn final_point(
    replica: &Replica,
    disk: &str,
    forwarded: u64,
) -> Result<points::StoredPoint, String> {
    if replica.durable_seq < forwarded {
        return Err(format!(
            "disk {disk}: the target holds sequence {} but the relay forwarded {forwarded}; \
             wait until the relay has delivered everything",
            replica.durable_seq
        ));
    }
    let newest = replica.points.points.last().ok_or_else(|| {
        format!("disk {disk} has no recovery point: a planned failover needs a final one")
    })?;
    if newest.seq != replica.durable_seq {
        return Err(format!(
            "disk {disk} has writes after its newest point (sequence {} > {}): the source did \
             not stop cleanly; stop its workload and then its agent (SIGTERM) for a final \
             point, or fail over unplanned",
            replica.durable_seq, newest.seq
        ));
    }
    Ok(*newest)
}

/// `failover change-point`: before commit, serves another point instead (the writes made to
/// the failed-over disk so far are discarded).
pub(crate) fn change_point(store: &Store, disk: &str, wanted: &str) -> Result<Value, String> {
    let replica = replica_of(store, disk)?;
    let mut replica = replica.lock().expect("replica lock");
    let Some(record) = replica.failover.clone() else {
        return Err(format!("disk {disk} is not failed over"));
    };
    if record.phase != FailoverPhase::FailedOver {
        return Err(format!(
            "disk {disk} is {}: its point can no longer be changed",
            record.phase.as_str()
        ));
    }
    let point = crate::control::resolve_point(store, &replica.points.points, disk, wanted)?;
    stop_serving(store, disk);
    let dir = replica.failover_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|error| format!("cannot remove {}: {error}", dir.display()))?;
    }
    replica.unpin(record.point);
    replica.pin(point.id);
    let mut changed = record;
    changed.log.push(format!(
        "point changed from {} to {} ({} point) {}; writes to the failed-over disk discarded",
        changed.point,
        point.id,
        point.kind.as_str(),
        now_text()
    ));
    changed.point = point.id;
    changed.point_seq = point.seq;
    changed.point_time_unix_ms = point.time_unix_ms;
    changed.point_kind = point.kind.as_str().to_string();
    replica.failover = Some(changed);
    replica.save_failover().map_err(|error| error.to_string())?;
    serve(store, &replica)?;
    Ok(record_json(disk, replica.failover.as_ref().expect("set above")))
}

/// `failover commit`: the failed-over point and its writes become the disk.
pub(crate) fn commit(store: &Store, disk: &str) -> Result<Value, String> {
    let replica = replica_of(store, disk)?;
    let mut replica = replica.lock().expect("replica lock");
    match replica.failover.as_ref().map(|record| record.phase) {
        None => return Err(format!("disk {disk} is not failed over; nothing to commit")),
        Some(FailoverPhase::Committed) => return Err(format!("disk {disk} is already committed")),
        Some(_) => {}
    }
    stop_serving(store, disk);
    replica.commit_failover().map_err(|error| format!("commit of disk {disk} failed: {error}"))?;
    let uri = serve(store, &replica)?;
    log::warn!("disk {disk}: failover committed; the replica image is the disk, served at {uri}");
    Ok(record_json(disk, replica.failover.as_ref().expect("committed")))
}

/// `failover release`: stops serving a committed disk so that an agent can protect the image
/// in the other direction (reprotect). The disk's image path is in the reply.
pub(crate) fn release(store: &Store, disk: &str) -> Result<Value, String> {
    let replica = replica_of(store, disk)?;
    let mut replica = replica.lock().expect("replica lock");
    match replica.failover.as_ref().map(|record| record.phase) {
        Some(FailoverPhase::Committed) => {}
        Some(FailoverPhase::Released) => return Err(format!("disk {disk} is already released")),
        Some(phase) => {
            return Err(format!("disk {disk} is {}: commit it before releasing it", phase.as_str()))
        }
        None => return Err(format!("disk {disk} is not failed over")),
    }
    stop_serving(store, disk);
    let image = replica.image_path.display().to_string();
    let record = replica.failover.as_mut().expect("checked above");
    record.phase = FailoverPhase::Released;
    record.log.push(format!(
        "released {}: protect {image} with an agent to reprotect (replicate it back)",
        now_text()
    ));
    replica.save_failover().map_err(|error| error.to_string())?;
    let mut reply = record_json(disk, replica.failover.as_ref().expect("set above"));
    reply["image"] = json!(image);
    Ok(reply)
}

/// At target start: serve every failed-over disk again, finishing an interrupted commit.
pub(crate) fn resume_all(store: &Store) {
    let replicas: Vec<Arc<Mutex<Replica>>> =
        store.disks.lock().expect("store lock").values().cloned().collect();
    for replica in replicas {
        let mut replica = replica.lock().expect("replica lock");
        let Some(phase) = replica.failover.as_ref().map(|record| record.phase) else { continue };
        if phase == FailoverPhase::Released {
            continue;
        }
        if phase == FailoverPhase::Committing {
            log::warn!("disk {}: finishing a commit a restart interrupted", replica.name);
            if let Err(error) = replica.commit_failover() {
                log::error!("disk {}: commit cannot finish: {error}", replica.name);
                continue;
            }
        }
        match serve(store, &replica) {
            Ok(uri) => log::info!("disk {}: failed-over disk served at {uri}", replica.name),
            Err(error) => log::error!("disk {}: {error}", replica.name),
        }
    }
}

/// Ends a committed or released failover: an agent takes the disk over to replicate into it.
pub(crate) fn end(store: &Store, replica: &mut Replica) -> Result<(), crate::TargetError> {
    stop_serving(store, &replica.name);
    log::warn!(
        "disk {}: an agent takes the failed-over disk over; its failover ends",
        replica.name
    );
    replica.failover = None;
    replica.save_failover()
}

/// The failed-over disks, for `jobs` listings.
pub(crate) fn list(store: &Store) -> Vec<Value> {
    let disks = store.disks.lock().expect("store lock");
    let mut names: Vec<&String> = disks.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let replica = disks[name].lock().expect("replica lock");
            replica.failover.as_ref().map(|record| record_json(name, record))
        })
        .collect()
}
