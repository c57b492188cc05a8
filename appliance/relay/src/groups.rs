//! Consistency groups (design.md §5): one recovery point across disks of several agents.
//!
//! Every `interval` the relay asks each agent owning a disk of the group to *hold*: queue a
//! group marker (with the group's marker id) on each of its disks of the group and delay
//! the replies to writes applied after that marker. When every agent reports its markers
//! queued, the relay *releases* them all and tells the target the marker id is *confirmed*.
//! No write can then depend on a write after another disk's marker (its reply was held until
//! all markers existed), so the markers cut all disks at one consistent moment. If an agent
//! cannot mark (a disk resyncing) or does not answer in time, everyone is released and the
//! point is not confirmed: the markers stay crash-consistent points of their own disks.
//!
//! This module is the bookkeeping; the event loop sends what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

/// How long the relay waits for every agent's answer; below the agents' own hold limit
/// (`GROUP_HOLD_MAX` in the agent), so a release normally ends every hold.
pub(crate) const HOLD_ANSWER_MAX: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub name: String,
    pub disks: Vec<String>,
    pub interval: Duration,
}

#[derive(Debug)]
struct Round {
    marker_id: u64,
    /// Agent connections that have not answered yet, and what each was asked to hold.
    waiting: BTreeSet<u64>,
    asked: BTreeMap<u64, Vec<String>>,
    ok: bool,
    deadline: Instant,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) options: GroupOptions,
    next_at: Instant,
    round: Option<Round>,
    last_marker_id: u64,
    pub(crate) confirmed: u64,
    pub(crate) failed: u64,
}

/// A message for one connection (`conn`) or for the target (`None`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) conn: Option<u64>,
    pub(crate) json: String,
}

impl Group {
    pub(crate) fn new(options: GroupOptions, now: Instant) -> Group {
        Group {
            next_at: now + options.interval,
            options,
            round: None,
            last_marker_id: 0,
            confirmed: 0,
            failed: 0,
        }
    }

    /// Starts a round if one is due. `owner` says which agent connection holds a disk, and
    /// its name there; a disk without a connected agent skips the round.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        now_unix_ms: u64,
        owner: impl Fn(&str) -> Option<u64>,
        out: &mut Vec<Outgoing>,
    ) {
        if let Some(round) = &self.round {
            if now >= round.deadline {
                log::warn!(
                    "group {}: not every agent answered within {HOLD_ANSWER_MAX:?}; point {} \
                     not confirmed",
                    self.options.name,
                    round.marker_id
                );
                self.finish(false, out);
            }
            return;
        }
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.options.interval;
        let mut asked: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for disk in &self.options.disks {
            match owner(disk) {
                Some(conn) => asked.entry(conn).or_default().push(disk.clone()),
                None => {
                    log::debug!(
                        "group {}: disk {disk} has no agent connected; no group point now",
                        self.options.name
                    );
                    return;
                }
            }
        }
        // Unique and increasing, and meaningful: the time the point was asked for.
        let marker_id = now_unix_ms.max(self.last_marker_id + 1);
        self.last_marker_id = marker_id;
        for (&conn, disks) in &asked {
            let json = json!({
                "op": "group-hold",
                "group": self.options.name,
                "marker_id": marker_id,
                "disks": disks,
            });
            out.push(Outgoing { conn: Some(conn), json: json.to_string() });
        }
        self.round = Some(Round {
            marker_id,
            waiting: asked.keys().copied().collect(),
            asked,
            ok: true,
            deadline: now + HOLD_ANSWER_MAX,
        });
    }

    /// An agent's answer; ends the round when it was the last one.
    pub(crate) fn on_held(&mut self, conn: u64, marker_id: u64, ok: bool, out: &mut Vec<Outgoing>) {
        let Some(round) = &mut self.round else { return };
        if round.marker_id != marker_id || !round.waiting.remove(&conn) {
            return;
        }
        round.ok &= ok;
        if round.waiting.is_empty() {
            let ok = round.ok;
            self.finish(ok, out);
        }
    }

    /// A connection went away: its hold ends with it, and the round cannot be confirmed.
    pub(crate) fn on_closed(&mut self, conn: u64, out: &mut Vec<Outgoing>) {
        let Some(round) = &mut self.round else { return };
        if round.asked.remove(&conn).is_some() {
            round.waiting.remove(&conn);
            self.finish(false, out);
        }
    }

    fn finish(&mut self, ok: bool, out: &mut Vec<Outgoing>) {
        let Some(round) = self.round.take() else { return };
        for (conn, disks) in &round.asked {
            let json =
                json!({ "op": "group-release", "marker_id": round.marker_id, "disks": disks });
            out.push(Outgoing { conn: Some(*conn), json: json.to_string() });
        }
        if ok {
            self.confirmed += 1;
            let json = json!({
                "op": "group-confirm",
                "group": self.options.name,
                "marker_id": round.marker_id,
                "disks": self.options.disks,
            });
            out.push(Outgoing { conn: None, json: json.to_string() });
        } else {
            self.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(disks: &[&str]) -> Group {
        let options = GroupOptions {
            name: "erp".into(),
            disks: disks.iter().map(|d| d.to_string()).collect(),
            interval: Duration::from_secs(1),
        };
        Group::new(options, Instant::now() - Duration::from_secs(5))
    }

    fn owners(disk: &str) -> Option<u64> {
        match disk {
            "a" | "b" => Some(1),
            "c" => Some(2),
            _ => None,
        }
    }

    #[test]
    fn a_round_holds_every_agent_and_confirms_after_the_last_answer() {
        let mut group = group(&["a", "b", "c"]);
        let mut out = Vec::new();
        let now = Instant::now();
        group.tick(now, 1000, owners, &mut out);
        assert_eq!(out.len(), 2, "one hold per agent: {out:?}");
        assert!(out[0].json.contains("\"disks\":[\"a\",\"b\"]"), "{out:?}");
        out.clear();
        group.tick(now, 1001, owners, &mut out);
        assert!(out.is_empty(), "no second round while one is open");
        group.on_held(1, 1000, true, &mut out);
        assert!(out.is_empty(), "agent 2 has not answered");
        group.on_held(2, 999, true, &mut out);
        assert!(out.is_empty(), "an answer for another marker is ignored");
        group.on_held(2, 1000, true, &mut out);
        assert_eq!(out.iter().filter(|o| o.json.contains("group-release")).count(), 2);
        assert!(out.iter().any(|o| o.conn.is_none() && o.json.contains("group-confirm")));
        assert_eq!((group.confirmed, group.failed), (1, 0));
    }

    #[test]
    fn a_refusal_a_timeout_or_a_lost_agent_releases_without_confirming() {
        for case in 0..3 {
            let mut group = group(&["a", "c"]);
            let mut out = Vec::new();
            let now = Instant::now();
            group.tick(now, 5000, owners, &mut out);
            out.clear();
            match case {
                0 => {
                    group.on_held(1, 5000, false, &mut out);
                    group.on_held(2, 5000, true, &mut out);
                }
                1 => group.tick(now + HOLD_ANSWER_MAX, 5001, owners, &mut out),
                _ => group.on_closed(2, &mut out),
            }
            assert!(out.iter().any(|o| o.json.contains("group-release")), "case {case}: {out:?}");
            assert!(!out.iter().any(|o| o.json.contains("group-confirm")), "case {case}");
            assert_eq!((group.confirmed, group.failed), (0, 1), "case {case}");
        }
    }

    #[test]
    fn a_disk_without_an_agent_skips_the_round_and_marker_ids_increase() {
        let mut group = group(&["a", "zz"]);
        let mut out = Vec::new();
        group.tick(Instant::now(), 7000, owners, &mut out);
        assert!(out.is_empty());
        let mut group = self::group(&["a"]);
        group.tick(Instant::now(), 7000, owners, &mut out);
        group.on_held(1, 7000, true, &mut out);
        out.clear();
        group.tick(Instant::now() + Duration::from_secs(2), 6000, owners, &mut out);
        assert!(out[0].json.contains("\"marker_id\":7001"), "{out:?}");
    }
}
