//! The queue's figures for `GET /metrics`, in the Prometheus text exposition format (version
//! 0.0.4): a handful of gauges, counters and one histogram, written directly — the format is
//! a few lines of text, and a metrics registry would be a dependency for that.

use std::fmt::Write;
use std::sync::Mutex;

use super::lock;

/// Upper bounds (seconds) of the job-duration histogram's buckets: a tiny model on a CPU
/// takes under a second, a real one on a GPU tens of seconds, on a software adapter minutes.
pub const DURATION_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

/// Counters of what finished, kept by a queue (the fleet's: counted from every job record
/// seen change, so every instance shows the whole fleet's since it started).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Runs of a job after the first (a worker stopped mid-job and another took it over).
    pub redeliveries: u64,
    /// Durations of runs that finished, by [`DURATION_BUCKETS`] (cumulative counts are made
    /// when written), with their sum and count.
    pub duration_buckets: [u64; DURATION_BUCKETS.len()],
    pub duration_sum_s: f64,
    pub duration_count: u64,
}

impl Counters {
    pub fn finished_run(&mut self, seconds: f64) {
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|&b| seconds <= b) {
            self.duration_buckets[bucket] += 1;
        }
        self.duration_sum_s += seconds;
        self.duration_count += 1;
    }
}

/// Counters behind a lock, shared by a queue's tasks.
#[derive(Debug, Default)]
pub struct Tally(Mutex<Counters>);

impl Tally {
    pub fn update(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.0));
    }

    pub fn get(&self) -> Counters {
        lock(&self.0).clone()
    }
}

/// The figures at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Jobs waiting to run.
    pub queued: usize,
    pub running: usize,
    pub counters: Counters,
    /// Workers seen recently (a fleet), or `None` (this machine alone).
    pub workers: Option<usize>,
    /// Whether the shared queue is reachable (a fleet), or `None`.
    pub queue_up: Option<bool>,
}

impl Snapshot {
    /// The text `/metrics` answers with.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |value: String| vec![(String::new(), value)];
        let c = &self.counters;
        metric(
            "orfeas_queue_depth",
            "gauge",
            "Jobs waiting to run.",
            &plain(self.queued.to_string()),
        );
        metric(
            "orfeas_jobs_running",
            "gauge",
            "Jobs running now.",
            &plain(self.running.to_string()),
        );
        metric(
            "orfeas_jobs_finished_total",
            "counter",
            "Jobs finished, by outcome.",
            &[
                ("{outcome=\"done\"}".into(), c.done.to_string()),
                ("{outcome=\"failed\"}".into(), c.failed.to_string()),
                ("{outcome=\"cancelled\"}".into(), c.cancelled.to_string()),
            ],
        );
        metric(
            "orfeas_job_failures_total",
            "counter",
            "Jobs that failed.",
            &plain(c.failed.to_string()),
        );
        metric(
            "orfeas_job_redeliveries_total",
            "counter",
            "Runs of a job after its first (its worker stopped mid-job).",
            &plain(c.redeliveries.to_string()),
        );
        let mut cumulative = 0;
        let mut buckets: Vec<(String, String)> = DURATION_BUCKETS
            .iter()
            .zip(c.duration_buckets)
            .map(|(bound, count)| {
                cumulative += count;
                (format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string())
            })
            .collect();
        buckets.push(("_bucket{le=\"+Inf\"}".into(), c.duration_count.to_string()));
        buckets.push(("_sum".into(), format!("{:.3}", c.duration_sum_s)));
        buckets.push(("_count".into(), c.duration_count.to_string()));
        metric(
            "orfeas_job_duration_seconds",
            "histogram",
            "How long runs took, from start to result.",
            &buckets,
        );
        if let Some(workers) = self.workers {
            metric(
                "orfeas_fleet_workers",
                "gauge",
                "Workers seen recently.",
                &plain(workers.to_string()),
            );
        }
        if let Some(up) = self.queue_up {
            metric(
                "orfeas_queue_up",
                "gauge",
                "Whether the shared queue (NATS) is reachable.",
                &plain(u8::from(up).to_string()),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let mut counters = Counters::default();
        for seconds in [0.2, 0.7, 3.0, 2000.0] {
            counters.finished_run(seconds);
        }
        let text = Snapshot {
            counters,
            ..Default::default()
        }
        .render();
        assert!(text.contains("orfeas_job_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("orfeas_job_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("orfeas_job_duration_seconds_bucket{le=\"5\"} 3\n"));
        assert!(text.contains("orfeas_job_duration_seconds_bucket{le=\"900\"} 3\n"));
        assert!(text.contains("orfeas_job_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("orfeas_job_duration_seconds_count 4\n"));
        assert!(text.contains("orfeas_job_duration_seconds_sum 2003.900\n"));
        // Every sample line is `name{labels} value` with a TYPE line before its family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("orfeas_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(
            !text.contains("orfeas_fleet_workers"),
            "no fleet, no worker count"
        );
    }
}
