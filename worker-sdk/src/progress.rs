//! Progress throttling, kept free of I/O so that it can be tested alone.

use std::time::Duration;

use jobctl_proto::v1::Progress;
use tokio::time::Instant;

/// Decides when a job's progress goes to the server: at most one update per
/// `interval`, only when it changed, and always the latest one.
#[derive(Debug)]
pub(crate) struct ProgressTracker {
    interval: Duration,
    /// The newest update not yet sent.
    pending: Option<Progress>,
    /// The last update sent (or being sent), to drop repeats.
    last_value: Option<Progress>,
    /// When an update was last sent.
    last_sent: Option<Instant>,
}

impl ProgressTracker {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: None,
            last_value: None,
            last_sent: None,
        }
    }

    /// Records a new update; it replaces any update still pending.
    pub(crate) fn update(&mut self, progress: Progress) {
        if self.last_value.as_ref() == Some(&progress) {
            // Back to what the server already has.
            self.pending = None;
        } else {
            self.pending = Some(progress);
        }
    }

    /// Whether an update waits to be sent.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When the pending update may be sent, if one is pending (possibly in
    /// the past: at once).
    pub(crate) fn due(&self, now: Instant) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(match self.last_sent {
            Some(sent) => sent.checked_add(self.interval).unwrap_or(now),
            None => now,
        })
    }

    /// Takes the pending update if the throttle lets it go now, or in any
    /// case with `force` (a checkpoint, or the flush before the job ends).
    pub(crate) fn take(&mut self, now: Instant, force: bool) -> Option<Progress> {
        let due = self.due(now)?;
        if !force && due > now {
            return None;
        }
        let progress = self.pending.take()?;
        self.last_sent = Some(now);
        self.last_value = Some(progress.clone());
        Some(progress)
    }

    /// Puts back an update whose heartbeat did not get through, unless a
    /// newer one arrived meanwhile.
    pub(crate) fn restore(&mut self, progress: Progress) {
        if self.pending.is_none() {
            self.pending = Some(progress);
        }
        self.last_value = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(percent: f64) -> Progress {
        Progress {
            percent,
            ..Progress::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_update_goes_at_once() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(100 * MS);
        assert_eq!(t.due(t0), None);
        assert_eq!(t.take(t0, false), None);
        t.update(p(1.0));
        assert_eq!(t.due(t0), Some(t0));
        assert_eq!(t.take(t0, false), Some(p(1.0)));
        assert!(!t.is_pending());
    }

    #[test]
    fn at_most_one_update_per_interval_and_the_latest_wins() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(100 * MS);
        t.update(p(1.0));
        assert!(t.take(t0, false).is_some());
        for i in 2..50 {
            t.update(p(f64::from(i)));
        }
        assert_eq!(t.due(t0 + 10 * MS), Some(t0 + 100 * MS));
        assert_eq!(t.take(t0 + 99 * MS, false), None);
        assert_eq!(t.take(t0 + 100 * MS, false), Some(p(49.0)));
        assert_eq!(t.take(t0 + 300 * MS, false), None);
    }

    #[test]
    fn force_sends_before_the_interval_is_up() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(100 * MS);
        t.update(p(1.0));
        assert!(t.take(t0, false).is_some());
        t.update(p(100.0));
        assert_eq!(t.take(t0 + MS, true), Some(p(100.0)));
        // Nothing pending: even a forced take sends nothing.
        assert_eq!(t.take(t0 + 2 * MS, true), None);
    }

    #[test]
    fn repeats_of_the_sent_value_are_dropped() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(100 * MS);
        t.update(p(5.0));
        assert!(t.take(t0, false).is_some());
        t.update(p(6.0));
        t.update(p(5.0));
        assert!(!t.is_pending());
    }

    #[test]
    fn a_failed_send_is_retried_unless_superseded() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(100 * MS);
        t.update(p(5.0));
        let sent = t.take(t0, false).unwrap_or_default();
        t.restore(sent);
        assert_eq!(t.take(t0 + 100 * MS, false), Some(p(5.0)));

        t.update(p(6.0));
        let sent = t.take(t0 + 200 * MS, false).unwrap_or_default();
        t.update(p(7.0));
        t.restore(sent);
        assert_eq!(t.take(t0 + 300 * MS, false), Some(p(7.0)));
    }

    #[test]
    fn zero_interval_does_not_throttle() {
        let t0 = Instant::now();
        let mut t = ProgressTracker::new(Duration::ZERO);
        t.update(p(1.0));
        assert!(t.take(t0, false).is_some());
        t.update(p(2.0));
        assert!(t.take(t0, false).is_some());
    }
}
