//! Load progress: what the progress bar, the CLI and `/api/health` show, throttled so a
//! stream of small chunks does not flood the UI.

use std::time::Duration;

use web_time::Instant;

pub use orfeas_wire::{LoadProgress, Phase};

/// At most one event per this interval, except on a phase change.
pub const MIN_EMIT_INTERVAL: Duration = Duration::from_millis(50);
/// Throughput samples are taken at this spacing and smoothed exponentially.
const RATE_SAMPLE: Duration = Duration::from_millis(200);
const RATE_SMOOTHING: f64 = 0.3;

/// Where a tracker reads the time: [`Instant::now`], or a test's clock.
pub type Clock = fn() -> Instant;

pub struct ProgressTracker<F: FnMut(&LoadProgress)> {
    progress: LoadProgress,
    now: Clock,
    started: Instant,
    last_emit: Option<(Instant, Phase)>,
    sample_at: Instant,
    sample_bytes: u64,
    /// Bytes credited without transfer (shards verified by an earlier attempt).
    skipped_bytes: u64,
    sink: F,
}

impl<F: FnMut(&LoadProgress)> ProgressTracker<F> {
    pub fn new(progress: LoadProgress, sink: F) -> Self {
        Self::with_clock(progress, sink, Instant::now)
    }

    /// A tracker on another clock (a test's, which moves only when the test says).
    pub fn with_clock(progress: LoadProgress, sink: F, clock: Clock) -> Self {
        let now = clock();
        Self {
            progress,
            now: clock,
            started: now,
            last_emit: None,
            sample_at: now,
            sample_bytes: 0,
            skipped_bytes: 0,
            sink,
        }
    }

    pub fn progress(&self) -> &LoadProgress {
        &self.progress
    }

    pub fn set_from_cache(&mut self, from_cache: bool) {
        self.progress.from_cache = from_cache;
    }

    pub fn add_bytes(&mut self, n: u64) {
        self.progress.bytes_done += n;
        self.update_rate(false);
        self.emit(false);
    }

    /// Credit a shard that an earlier attempt already verified.
    pub fn skip_shard(&mut self, bytes: u64, tensors: usize) {
        self.progress.bytes_done += bytes;
        self.skipped_bytes += bytes;
        self.sample_bytes += bytes;
        self.progress.shards_done += 1;
        self.progress.tensors_done += tensors;
        self.emit(false);
    }

    /// Take back the bytes and tensors of an attempt that is being redone (a cached shard that
    /// failed verification and is fetched again).
    pub fn rewind_to(&mut self, bytes_done: u64, tensors_done: usize) {
        self.progress.bytes_done = bytes_done.min(self.progress.bytes_done);
        self.progress.tensors_done = tensors_done.min(self.progress.tensors_done);
        self.sample_bytes = self.sample_bytes.min(self.progress.bytes_done);
        self.emit(false);
    }

    pub fn add_tensors(&mut self, n: usize) {
        self.progress.tensors_done += n;
        self.emit(false);
    }

    pub fn shard_done(&mut self) {
        self.progress.shards_done += 1;
        self.emit(false);
    }

    pub fn set_phase(&mut self, phase: Phase) {
        self.progress.phase = phase;
        if matches!(phase, Phase::Ready | Phase::Failed) {
            self.progress.eta_s = if phase == Phase::Ready {
                Some(0.0)
            } else {
                None
            };
        }
        self.emit(false);
    }

    /// Emit now, whatever the throttle says (e.g. at the end of a load).
    pub fn flush(&mut self) {
        self.update_rate(true);
        self.emit(true);
    }

    fn update_rate(&mut self, force: bool) {
        let now = (self.now)();
        let dt = now.duration_since(self.sample_at);
        if dt < RATE_SAMPLE && !force {
            return;
        }
        let secs = dt.as_secs_f64();
        if secs > 0.0 {
            let moved = self.progress.bytes_done.saturating_sub(self.sample_bytes);
            let instant_rate = moved as f64 / secs;
            self.progress.bytes_per_sec = if self.progress.bytes_per_sec == 0.0 {
                instant_rate
            } else {
                RATE_SMOOTHING * instant_rate + (1.0 - RATE_SMOOTHING) * self.progress.bytes_per_sec
            };
        }
        self.sample_at = now;
        self.sample_bytes = self.progress.bytes_done;
        let remaining = self
            .progress
            .bytes_total
            .saturating_sub(self.progress.bytes_done);
        if self.progress.bytes_per_sec > 0.0 {
            self.progress.eta_s = Some(remaining as f64 / self.progress.bytes_per_sec);
        }
    }

    fn emit(&mut self, force: bool) {
        let now = (self.now)();
        let due = match self.last_emit {
            None => true,
            Some((at, phase)) => {
                phase != self.progress.phase || now.duration_since(at) >= MIN_EMIT_INTERVAL
            }
        };
        if !(due || force) {
            return;
        }
        self.progress.elapsed_s = now.duration_since(self.started).as_secs_f64();
        self.last_emit = Some((now, self.progress.phase));
        (self.sink)(&self.progress);
    }

    /// Bytes actually transferred in this attempt.
    pub fn transferred_bytes(&self) -> u64 {
        self.progress.bytes_done - self.skipped_bytes
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// This test thread's clock: it moves only by [`advance`].
        static NOW: Cell<Instant> = Cell::new(Instant::now());
    }

    fn test_clock() -> Instant {
        NOW.with(Cell::get)
    }

    fn advance(ms: u64) {
        NOW.with(|now| now.set(now.get() + Duration::from_millis(ms)));
    }

    fn tracker(events: &mut Vec<LoadProgress>) -> ProgressTracker<impl FnMut(&LoadProgress)> {
        let progress = LoadProgress::new("m", 10_000, 1, 1);
        ProgressTracker::with_clock(
            progress,
            |p: &LoadProgress| events.push(p.clone()),
            test_clock,
        )
    }

    #[test]
    fn events_are_spaced_by_the_clock_except_phase_changes() {
        let mut events = Vec::new();
        let mut tracker = tracker(&mut events);
        for _ in 0..1000 {
            tracker.add_bytes(1);
        }
        advance(MIN_EMIT_INTERVAL.as_millis() as u64 - 1);
        tracker.add_bytes(1);
        tracker.add_tensors(1);
        tracker.shard_done();
        advance(1);
        tracker.add_bytes(1);
        tracker.add_bytes(1);
        tracker.set_phase(Phase::Verify);
        tracker.set_phase(Phase::Verify);
        tracker.flush();
        drop(tracker);
        let seen: Vec<(u64, Phase)> = events.iter().map(|e| (e.bytes_done, e.phase)).collect();
        assert_eq!(
            seen,
            [
                (1, Phase::Fetch),
                (1002, Phase::Fetch),
                (1003, Phase::Verify),
                (1003, Phase::Verify)
            ]
        );
        assert_eq!(events[1].elapsed_s, 0.05);
    }

    #[test]
    fn throughput_is_sampled_and_smoothed_and_gives_the_eta() {
        let mut events = Vec::new();
        let mut tracker = tracker(&mut events);
        tracker.add_bytes(1000);
        assert_eq!(tracker.progress().bytes_per_sec, 0.0, "no sample yet");
        advance(RATE_SAMPLE.as_millis() as u64);
        tracker.add_bytes(1000);
        let first = 2000.0 / 0.2;
        assert!((tracker.progress().bytes_per_sec - first).abs() < 1e-6);
        assert!((tracker.progress().eta_s.unwrap() - 8000.0 / first).abs() < 1e-9);
        advance(RATE_SAMPLE.as_millis() as u64);
        tracker.add_bytes(3000);
        let smoothed = RATE_SMOOTHING * (3000.0 / 0.2) + (1.0 - RATE_SMOOTHING) * first;
        assert!((tracker.progress().bytes_per_sec - smoothed).abs() < 1e-6);
        assert!((tracker.progress().eta_s.unwrap() - 5000.0 / smoothed).abs() < 1e-9);
        tracker.set_phase(Phase::Ready);
        assert_eq!(tracker.progress().eta_s, Some(0.0));
    }

    #[test]
    fn phase_names_are_the_serialised_names() {
        for phase in [
            Phase::Fetch,
            Phase::Verify,
            Phase::Upload,
            Phase::Warmup,
            Phase::Ready,
            Phase::Failed,
        ] {
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{}\"", phase.name())
            );
        }
    }
}
