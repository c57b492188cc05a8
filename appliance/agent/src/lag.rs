//! Replication lag (the RPO a user gets): from the moment the tap applied a write to the
//! moment the target acknowledged it as durable. One sample per frame, taken from the frame's
//! oldest write, so the figure is the worst case within the frame.

use std::collections::VecDeque;
use std::time::Instant;

/// Samples kept; later ones replace earlier ones in turn, so memory stays bounded.
const SAMPLES_MAX: usize = 1 << 16;

#[derive(Debug)]
pub(crate) struct LagMeter {
    /// Per disk: (sequence of the frame, when its oldest write was applied).
    waiting: Vec<VecDeque<(u64, Instant)>>,
    samples_micros: Vec<u32>,
    recorded: u64,
}

impl LagMeter {
    pub(crate) fn new(disks: usize) -> LagMeter {
        LagMeter {
            waiting: (0..disks).map(|_| VecDeque::new()).collect(),
            samples_micros: Vec::new(),
            recorded: 0,
        }
    }

    pub(crate) fn sent(&mut self, disk: usize, seq: u64, oldest_write: Instant) {
        self.waiting[disk].push_back((seq, oldest_write));
    }

    /// Drops what waits for frames the relay lost (their sequence numbers are reused).
    pub(crate) fn forget(&mut self, disk: usize) {
        self.waiting[disk].clear();
    }

    pub(crate) fn replicated(&mut self, disk: usize, replicated_seq: u64) {
        let now = Instant::now();
        while let Some(&(seq, at)) = self.waiting[disk].front() {
            if seq > replicated_seq {
                break;
            }
            self.waiting[disk].pop_front();
            let micros = now.duration_since(at).as_micros().min(u128::from(u32::MAX)) as u32;
            let slot = (self.recorded % SAMPLES_MAX as u64) as usize;
            if slot < self.samples_micros.len() {
                self.samples_micros[slot] = micros;
            } else {
                self.samples_micros.push(micros);
            }
            self.recorded += 1;
        }
    }

    /// `N frames, p50 X ms, p99 Y ms, max Z ms` over the kept samples.
    pub(crate) fn summary(&self) -> String {
        if self.samples_micros.is_empty() {
            return "no samples".into();
        }
        let mut sorted = self.samples_micros.clone();
        sorted.sort_unstable();
        let at = |fraction: f64| {
            let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
            f64::from(sorted[index]) / 1000.0
        };
        format!(
            "{} frames, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.recorded,
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_only_replicated_frames() {
        let mut meter = LagMeter::new(1);
        let past = Instant::now() - Duration::from_millis(50);
        meter.sent(0, 1, past);
        meter.sent(0, 2, past);
        meter.replicated(0, 1);
        assert_eq!(meter.recorded, 1);
        assert!(meter.samples_micros[0] >= 50_000);
        assert!(meter.summary().starts_with("1 frames, p50 "), "{}", meter.summary());
    }
}
