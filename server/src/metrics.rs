//! Prometheus metrics, served on `--http-listen` at `/metrics`.
//!
//! Counters and histograms are kept per server process (each scrape of each
//! replica gives its own); the job counts by state are read from the store
//! at scrape time, so they are the same whichever replica is scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub namespace: String,
    pub queue: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

type Histograms = Family<QueueLabels, Histogram, fn() -> Histogram>;

/// Every metric of one server process.
pub struct Metrics {
    registry: Registry,
    pub submitted: Family<QueueLabels, Counter>,
    pub deduplicated: Family<QueueLabels, Counter>,
    pub leased: Family<QueueLabels, Counter>,
    pub completed: Family<QueueLabels, Counter>,
    /// Failed attempts, by what became of the job (`state`: SCHEDULED or
    /// QUEUED for a retry, FAILED for a dead letter, CANCELLED).
    pub failed: Family<StateLabels, Counter>,
    pub lease_expired: Family<QueueLabels, Counter>,
    pub cancelled: Family<QueueLabels, Counter>,
    pub requeued: Family<QueueLabels, Counter>,
    pub run_seconds: Histograms,
    pub queue_wait_seconds: Histograms,
    pub jobs: Family<StateLabels, Gauge>,
    pub watchers: Gauge,
    pub store_errors: Family<ErrorLabels, Counter>,
    /// Schedules (`schedules.rs`): fire times that made a job, were skipped
    /// by the overlap policy or missed by the catch-up policy, and how late
    /// after its fire time each job was made.
    pub schedule_fires: Family<QueueLabels, Counter>,
    pub schedule_skipped: Family<QueueLabels, Counter>,
    pub schedule_missed: Family<QueueLabels, Counter>,
    pub schedule_fire_lag_seconds: Histograms,
}

fn seconds_buckets() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 2.5, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("jobctl"),
            submitted: Family::default(),
            deduplicated: Family::default(),
            leased: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            lease_expired: Family::default(),
            cancelled: Family::default(),
            requeued: Family::default(),
            run_seconds: Family::new_with_constructor(seconds_buckets),
            queue_wait_seconds: Family::new_with_constructor(seconds_buckets),
            jobs: Family::default(),
            watchers: Gauge::default(),
            store_errors: Family::default(),
            schedule_fires: Family::default(),
            schedule_skipped: Family::default(),
            schedule_missed: Family::default(),
            schedule_fire_lag_seconds: Family::new_with_constructor(seconds_buckets),
        };
        let r = &mut m.registry;
        r.register(
            "jobs_submitted",
            "Jobs created by Submit",
            m.submitted.clone(),
        );
        r.register(
            "jobs_deduplicated",
            "Submits answered with an existing job (idempotency key seen)",
            m.deduplicated.clone(),
        );
        r.register("jobs_leased", "Attempts started by Lease", m.leased.clone());
        r.register(
            "jobs_completed",
            "Attempts ended by Complete",
            m.completed.clone(),
        );
        r.register(
            "attempts_failed",
            "Attempts ended by Fail, by the job's next state",
            m.failed.clone(),
        );
        r.register(
            "lease_expiries",
            "Attempts ended because their lease expired",
            m.lease_expired.clone(),
        );
        r.register(
            "jobs_cancelled",
            "Cancel calls that cancelled a job or asked its worker to stop",
            m.cancelled.clone(),
        );
        r.register(
            "jobs_requeued",
            "Dead letters re-queued by an operator",
            m.requeued.clone(),
        );
        r.register(
            "job_run_seconds",
            "How long attempts ran, lease to Complete or Fail",
            m.run_seconds.clone(),
        );
        r.register(
            "job_queue_wait_seconds",
            "How long jobs waited ready before a lease",
            m.queue_wait_seconds.clone(),
        );
        r.register(
            "jobs",
            "Jobs by state (FINISHED: ended, kept until their retention ends)",
            m.jobs.clone(),
        );
        r.register("watchers", "Open WatchProgress streams", m.watchers.clone());
        r.register(
            "store_errors",
            "Store calls that failed, by kind",
            m.store_errors.clone(),
        );
        r.register(
            "schedule_fires",
            "Schedule fire times that made a job (this replica's fires)",
            m.schedule_fires.clone(),
        );
        r.register(
            "schedule_skipped",
            "Schedule fire times skipped by the overlap policy",
            m.schedule_skipped.clone(),
        );
        r.register(
            "schedule_missed",
            "Schedule fire times missed (not run) by the catch-up policy",
            m.schedule_missed.clone(),
        );
        r.register(
            "schedule_fire_lag_seconds",
            "How long after its fire time a schedule's job was made",
            m.schedule_fire_lag_seconds.clone(),
        );
        m
    }
}

pub fn queue(ns: &str, queue: &str) -> QueueLabels {
    QueueLabels {
        namespace: ns.to_owned(),
        queue: queue.to_owned(),
    }
}

pub fn state(ns: &str, queue: &str, state: jobctl_proto::v1::JobState) -> StateLabels {
    StateLabels {
        namespace: ns.to_owned(),
        queue: queue.to_owned(),
        state: state
            .as_str_name()
            .trim_start_matches("JOB_STATE_")
            .to_owned(),
    }
}

impl Metrics {
    /// Counts a store failure (and passes the result on).
    pub fn store<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            let kind = match e {
                Error::Unavailable(_) => "unavailable",
                Error::Redis(_) => "error",
                Error::Corrupt(_) => "corrupt",
                _ => return result,
            };
            self.store_errors
                .get_or_create(&ErrorLabels { kind: kind.into() })
                .inc();
        }
        result
    }

    pub fn observe(histograms: &Histograms, labels: &QueueLabels, d: Duration) {
        histograms.get_or_create(labels).observe(d.as_secs_f64());
    }

    /// The metrics in the Prometheus text format, with the job counts read
    /// from the store now.
    pub async fn render(&self, store: &dyn Store) -> String {
        match self.store(store.queues().await) {
            Ok(queues) => {
                for (ns, q) in queues {
                    if let Ok(stats) = self.store(store.queue_stats(&ns, &q).await) {
                        use jobctl_proto::v1::JobState as S;
                        for (state, n) in [
                            (S::Scheduled, stats.scheduled),
                            (S::Queued, stats.queued),
                            (S::Running, stats.running),
                            (S::Failed, stats.failed),
                        ] {
                            let n = i64::try_from(n).unwrap_or(i64::MAX);
                            self.jobs.get_or_create(&self::state(&ns, &q, state)).set(n);
                        }
                        let finished = i64::try_from(stats.finished).unwrap_or(i64::MAX);
                        self.jobs
                            .get_or_create(&StateLabels {
                                namespace: ns.clone(),
                                queue: q.clone(),
                                state: "FINISHED".into(),
                            })
                            .set(finished);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot list queues"),
        }
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "metrics: cannot encode");
        }
        out
    }
}
