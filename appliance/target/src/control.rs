//! Operator requests to a target (`Control` frames, JSON): list recovery points, start a test
//! failover or a materialization of a point, list jobs, clean a job up. Every refusal is a
//! sentence naming what was wrong, which the CLI prints as it is.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use points::retention::Kind;
use points::StoredPoint;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::failover::{self, CowPoint, Job, JobKind, JobState, JOBS_MAX};
use crate::Store;

/// A request, as the CLI sends it.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Request {
    Points {
        disk: Option<String>,
    },
    TestFailover {
        disk: String,
        point: String,
        nbd_listen: String,
    },
    Materialize {
        disk: String,
        point: String,
        output: PathBuf,
        #[serde(default)]
        format: Option<String>,
    },
    Jobs,
    Cleanup {
        job: u64,
    },
    Failover {
        disk: String,
        kind: FailoverKind,
        point: String,
        nbd_listen: String,
        /// Planned: the sequence the relay forwarded last; the target must hold it.
        #[serde(default)]
        expect_seq: Option<u64>,
    },
    ChangePoint {
        disk: String,
        point: String,
    },
    Commit {
        disk: String,
    },
    Release {
        disk: String,
    },
    /// From the relay: every disk of `group` has its marker `marker_id`, taken consistently.
    GroupConfirm {
        group: String,
        marker_id: u64,
        #[serde(default)]
        disks: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum FailoverKind {
    Unplanned,
    Planned,
}

/// Answers one request: the reply JSON, or why it was refused.
pub(crate) fn handle(store: &Arc<Store>, json: &str) -> Result<String, String> {
    let request: Request =
        serde_json::from_str(json).map_err(|error| format!("bad control request: {error}"))?;
    let reply = match request {
        Request::Points { disk } => points(store, disk.as_deref())?,
        Request::TestFailover { disk, point, nbd_listen } => {
            test_failover(store, &disk, &point, &nbd_listen)?
        }
        Request::Materialize { disk, point, output, format } => {
            materialize(store, &disk, &point, output, format.as_deref().unwrap_or("raw"))?
        }
        Request::Jobs => {
            let list: Vec<Value> = {
                let jobs = store.jobs.lock().expect("jobs lock");
                jobs.jobs.values().map(|job| job.lock().expect("job lock").to_json()).collect()
            };
            json!({ "jobs": list, "failovers": crate::recovery::list(store) })
        }
        Request::Cleanup { job } => cleanup(store, job)?,
        Request::Failover { disk, kind, point, nbd_listen, expect_seq } => {
            let planned = match kind {
                FailoverKind::Unplanned => None,
                FailoverKind::Planned => Some(expect_seq.unwrap_or(0)),
            };
            crate::recovery::start(store, &disk, planned, &point, &nbd_listen)?
        }
        Request::ChangePoint { disk, point } => {
            crate::recovery::change_point(store, &disk, &point)?
        }
        Request::Commit { disk } => crate::recovery::commit(store, &disk)?,
        Request::Release { disk } => crate::recovery::release(store, &disk)?,
        Request::GroupConfirm { group, marker_id, disks } => {
            store
                .groups
                .lock()
                .expect("groups lock")
                .confirm(&group, marker_id, &disks)
                .map_err(|error| format!("cannot record group point {marker_id}: {error}"))?;
            json!({ "group": group, "marker_id": marker_id, "confirmed": true })
        }
    };
    Ok(reply.to_string())
}

/// A group marker the relay has not confirmed is a crash-consistent point of its disk only.
fn effective_kind(groups: &crate::groups::ConfirmedGroups, point: &StoredPoint) -> Kind {
    match point.kind {
        Kind::Group if groups.group_of(point.marker_id).is_none() => Kind::Crash,
        kind => kind,
    }
}

fn point_json(groups: &crate::groups::ConfirmedGroups, point: &StoredPoint, newest: bool) -> Value {
    let group = match point.kind {
        Kind::Group => groups.group_of(point.marker_id),
        _ => None,
    };
    json!({
        "id": point.id,
        "seq": point.seq,
        "time_unix_ms": point.time_unix_ms,
        "kind": effective_kind(groups, point).as_str(),
        "group": group,
        "marker_id": point.marker_id,
        "latest": newest,
    })
}

fn points(store: &Store, only: Option<&str>) -> Result<Value, String> {
    let disks = store.disks.lock().expect("store lock");
    if let Some(name) = only {
        if !disks.contains_key(name) {
            return Err(unknown_disk(&disks, name));
        }
    }
    let groups = store.groups.lock().expect("groups lock");
    let mut names: Vec<&String> =
        disks.keys().filter(|name| only.is_none_or(|o| o == *name)).collect();
    names.sort();
    let list: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let replica = disks[name].lock().expect("replica lock");
            let all = &replica.points.points;
            let points: Vec<Value> = all
                .iter()
                .enumerate()
                .map(|(index, point)| point_json(&groups, point, index + 1 == all.len()))
                .collect();
            json!({
                "name": replica.name,
                "base_seq": replica.base_seq,
                "durable_seq": replica.durable_seq,
                "journal_bytes": replica.journal_bytes(),
                "points": points,
            })
        })
        .collect();
    Ok(json!({ "disks": list }))
}

pub(crate) fn unknown_disk<V>(disks: &std::collections::HashMap<String, V>, name: &str) -> String {
    let mut names: Vec<&str> = disks.keys().map(String::as_str).collect();
    names.sort();
    if names.is_empty() {
        format!("this target has no disk {name:?} (it has none yet)")
    } else {
        format!("this target has no disk {name:?} (its disks: {})", names.join(", "))
    }
}

/// `latest`, `latest-app`, `latest-group` or a point id.
/// A group point counts as one only once the relay confirmed its marker for every disk.
pub(crate) fn resolve_point(
    store: &Store,
    points: &[StoredPoint],
    disk: &str,
    wanted: &str,
) -> Result<StoredPoint, String> {
    let groups = store.groups.lock().expect("groups lock");
    let newest_of = |kind: Option<Kind>| {
        points
            .iter()
            .rev()
            .find(|point| kind.is_none_or(|kind| effective_kind(&groups, point) == kind))
            .copied()
    };
    let found = match wanted {
        "latest" => newest_of(None),
        "latest-app" => newest_of(Some(Kind::App)),
        "latest-group" => newest_of(Some(Kind::Group)),
        id => {
            let id: u64 = id.parse().map_err(|_| {
                format!(
                    "point {id:?} is neither a point id nor one of latest, latest-app, \
                     latest-group"
                )
            })?;
            points.iter().find(|point| point.id == id).copied()
        }
    };
    found.ok_or_else(|| {
        let have = match (points.first(), points.last()) {
            (Some(first), Some(last)) => format!("its points are {}..={}", first.id, last.id),
            _ => "it has no recovery point yet".to_string(),
        };
        format!(
            "disk {disk} has no point {wanted} ({have}; `siterelay points list --disk {disk}` \
             shows them)"
        )
    })
}

/// Pins the chosen point and registers a job for it; returns the job and the point's view.
fn start_job(
    store: &Store,
    kind: JobKind,
    disk: &str,
    wanted: &str,
) -> Result<(Arc<Mutex<Job>>, crate::index::PointView), String> {
    let replica = {
        let disks = store.disks.lock().expect("store lock");
        disks.get(disk).cloned().ok_or_else(|| unknown_disk(&disks, disk))?
    };
    let mut jobs = store.jobs.lock().expect("jobs lock");
    if jobs.jobs.len() >= JOBS_MAX {
        return Err(format!(
            "this target already has {JOBS_MAX} jobs; clean some up first (`siterelay failover \
             cleanup`)"
        ));
    }
    let mut replica = replica.lock().expect("replica lock");
    let point = resolve_point(store, &replica.points.points, disk, wanted)?;
    replica.pin(point.id);
    let view = replica.view(point.seq);
    drop(replica);
    jobs.next_id += 1;
    let id = jobs.next_id;
    let job = Job {
        id,
        kind,
        disk: disk.to_string(),
        point,
        state: JobState::Running,
        log: Vec::new(),
        export: None,
        export_uri: None,
        output: None,
        dir: failover::jobs_dir(&store.data_dir).join(format!("job-{id}")),
        done_bytes: 0,
        total_bytes: view.size_bytes,
        pinned: true,
    };
    let job = Arc::new(Mutex::new(job));
    jobs.jobs.insert(id, job.clone());
    Ok((job, view))
}

fn release_pin(store: &Store, job: &mut Job) {
    if job.pinned {
        if let Some(replica) = store.disks.lock().expect("store lock").get(&job.disk) {
            replica.lock().expect("replica lock").unpin(job.point.id);
        }
        job.pinned = false;
    }
}

fn test_failover(store: &Store, disk: &str, wanted: &str, listen: &str) -> Result<Value, String> {
    let listen: nbdserve::ListenAddr = listen.parse()?;
    let (job, view) = start_job(store, JobKind::TestFailover, disk, wanted)?;
    let mut job = job.lock().expect("job lock");
    let line = format!(
        "test failover of point {} ({} extents over the base)",
        job.point.id,
        view.extent_count()
    );
    job.note(line);
    let started = (|| {
        std::fs::create_dir_all(&job.dir)?;
        let backend = CowPoint::new(disk.to_string(), view, Some(&job.dir.join("overlay.img")))?;
        failover::start_export(backend, &listen)
    })();
    match started {
        Ok(running) => {
            let uri = running.local_addr().to_string();
            job.note(format!("export {disk} serving at {uri} (writes go to an overlay)"));
            job.export_uri = Some(uri);
            job.export = Some(running);
            job.state = JobState::Ready;
            Ok(job.to_json())
        }
        Err(error) => {
            let reason = format!("cannot serve the export at {listen}: {error}");
            release_pin(store, &mut job);
            let id = job.id;
            drop(job);
            discard(store, id);
            Err(reason)
        }
    }
}

fn materialize(
    store: &Arc<Store>,
    disk: &str,
    wanted: &str,
    output: PathBuf,
    format: &str,
) -> Result<Value, String> {
    if !["raw", "qcow2", "vmdk", "vmdk-stream"].contains(&format) {
        return Err(format!(
            "output format {format:?} is not one of raw, qcow2, vmdk, vmdk-stream"
        ));
    }
    if !output.is_absolute() {
        return Err(format!("output {} must be an absolute path", output.display()));
    }
    if output.exists() {
        return Err(format!("output {} exists; refusing to overwrite it", output.display()));
    }
    if format == "qcow2" && which("qemu-img").is_none() {
        return Err("qcow2 output needs qemu-img (Debian: apt install qemu-utils)".into());
    }
    let (job, view) = start_job(store, JobKind::Materialize, disk, wanted)?;
    let store = Arc::clone(store);
    {
        let mut locked = job.lock().expect("job lock");
        locked.output = Some(output.clone());
        let line =
            format!("materializing point {} as {format} at {}", locked.point.id, output.display());
        locked.note(line);
    }
    let reply = job.lock().expect("job lock").to_json();
    let format = format.to_string();
    let job_dir = job.lock().expect("job lock").dir.clone();
    let spawned = std::thread::Builder::new().name("target-materialize".into()).spawn(move || {
        // Where the unfinished output is, for a restarted target to remove it.
        let result = failover::record_partial(&job_dir, &output)
            .map_err(|error| format!("cannot record the job in {}: {error}", job_dir.display()))
            .and_then(|()| copy_out(&job, &view, &output, &format, &job_dir));
        let _ = std::fs::remove_dir_all(&job_dir);
        let mut locked = job.lock().expect("job lock");
        match result {
            Ok(()) => {
                locked.state = JobState::Done;
                locked.note("done".into());
            }
            Err(error) => {
                locked.state = JobState::Failed(error.clone());
                locked.note(format!("failed: {error}"));
            }
        }
        release_pin(&store, &mut locked);
    });
    spawned.map_err(|error| format!("cannot start the materialize job: {error}"))?;
    Ok(reply)
}

fn copy_out(
    job: &Arc<Mutex<Job>>,
    view: &crate::index::PointView,
    output: &std::path::Path,
    format: &str,
    job_dir: &std::path::Path,
) -> Result<(), String> {
    let progress = |done: u64| job.lock().expect("job lock").done_bytes = done;
    if format == "raw" {
        return failover::write_raw(view, output, progress)
            .map_err(|error| format!("writing {}: {error}", output.display()));
    }
    if format.starts_with("vmdk") {
        let disk = job.lock().expect("job lock").disk.clone();
        return failover::write_vmdk(view, output, format == "vmdk-stream", &disk)
            .map_err(|error| format!("writing {}: {error}", output.display()));
    }
    // The raw copy qemu-img converts lives with the job (removed with it, also at restart).
    let raw = job_dir.join("point.raw");
    failover::write_raw(view, &raw, progress)
        .map_err(|error| format!("writing {}: {error}", raw.display()))?;
    let partial = failover::partial_path(output);
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&partial)
        .output();
    let _ = std::fs::remove_file(&raw);
    match converted {
        Ok(out) if out.status.success() => std::fs::rename(&partial, output)
            .map_err(|error| format!("renaming {}: {error}", partial.display())),
        Ok(out) => Err(format!(
            "qemu-img convert failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(error) => Err(format!("cannot run qemu-img: {error}")),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

fn cleanup(store: &Store, id: u64) -> Result<Value, String> {
    let job = store.jobs.lock().expect("jobs lock").jobs.get(&id).cloned();
    let Some(job) = job else {
        return Err(format!("there is no job {id} (`siterelay failover jobs` lists them)"));
    };
    let mut locked = job.lock().expect("job lock");
    if locked.kind == JobKind::Materialize && locked.state == JobState::Running {
        return Err(format!("job {id} is still materializing; clean it up when it is done"));
    }
    if let Some(export) = locked.export.take() {
        export.stop();
    }
    release_pin(store, &mut locked);
    if locked.dir.exists() {
        std::fs::remove_dir_all(&locked.dir)
            .map_err(|error| format!("cannot remove {}: {error}", locked.dir.display()))?;
    }
    locked.note("cleaned up: export stopped, overlay discarded".into());
    let reply = locked.to_json();
    drop(locked);
    discard(store, id);
    Ok(reply)
}

fn discard(store: &Store, id: u64) {
    store.jobs.lock().expect("jobs lock").jobs.remove(&id);
}
