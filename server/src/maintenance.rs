//! The maintenance loop each replica runs: promote due scheduled jobs, reap
//! expired leases, delete finished jobs past their retention.
//!
//! Every replica may run it at once: each script re-checks each job on
//! Redis's clock, so a job is handled once whoever gets there first. It
//! wakes every `interval`, or sooner when a job is due sooner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};
use crate::store::Store;

/// Asks the maintenance loop to run earlier (a job was scheduled soon).
#[derive(Debug)]
pub struct Waker {
    next: Mutex<Instant>,
    notify: Notify,
}

impl Default for Waker {
    fn default() -> Self {
        Waker {
            next: Mutex::new(Instant::now()),
            notify: Notify::new(),
        }
    }
}

impl Waker {
    fn next(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the next pass no later than `after` from now.
    pub fn wake_in(&self, after: Duration) {
        let at = Instant::now() + after;
        let mut next = self.next();
        if at < *next {
            *next = at;
            self.notify.notify_one();
        }
    }
}

/// Runs passes until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    waker: Arc<Waker>,
    shutdown: CancellationToken,
) {
    loop {
        let sleep = match metrics.store(store.maintain().await) {
            Ok(report) => {
                for (ns, queue, n) in &report.lease_expiries {
                    metrics
                        .lease_expired
                        .get_or_create(&metrics::queue(ns, queue))
                        .inc_by(*n);
                }
                report.next_due.map_or(interval, |due| {
                    interval.min(due.max(Duration::from_millis(1)))
                })
            }
            Err(error) => {
                tracing::warn!(%error, "maintenance pass failed");
                interval
            }
        };
        *waker.next() = Instant::now() + sleep;
        loop {
            let at = *waker.next();
            tokio::select! {
                () = tokio::time::sleep_until(at) => break,
                () = waker.notify.notified() => {}
                () = shutdown.cancelled() => return,
            }
            if Instant::now() >= *waker.next() {
                break;
            }
        }
    }
}
