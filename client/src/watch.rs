//! [`Watch`]: a job's events in order, resumed across broken streams.
//!
//! `WatchProgress` replays a job's events after a sequence number, then
//! streams the live ones and ends after the terminal event. A stream can
//! break on the way (the server restarts, a proxy drops the connection, the
//! server cuts off a reader that fell behind); [`Watch`] then calls again
//! with `after_seq` = the last sequence number it handed out, so its caller
//! sees each event once, in order, whatever happened underneath.
//!
//! The pure parts (the cursor and the reconnection budget) are separate from
//! the I/O so they can be tested on their own.

use std::time::{Duration, Instant};

use crate::connect::AuthChannel;
use futures::stream::{BoxStream, StreamExt as _};
use jobctl_proto::v1::{
    EventKind, JobEvent, JobState, WatchProgressRequest, WatchProgressResponse,
    job_service_client::JobServiceClient,
};
use tonic::{Code, Status, Streaming};

use crate::error::{Error, Result};

/// How a [`Watch`] reconnects after its stream breaks.
///
/// The delay before the n-th reconnection of one outage is
/// `min(max_backoff, initial_backoff * 2^(n-1))`, shortened by a random
/// fraction of up to `jitter` (so many watchers cut at once by a restarting
/// server do not come back in step). An outage ends when an event arrives, or
/// when a resumed stream has stayed open for [`ReconnectPolicy::STABLE_AFTER`]
/// (a job can wait long between events). The watch gives up, returning the
/// last error, after `max_attempts` reconnections in one outage or once
/// `max_elapsed` has passed since the outage began, whichever comes first.
///
/// ```
/// use std::time::Duration;
/// use jobctl_client::ReconnectPolicy;
///
/// let patient = ReconnectPolicy {
///     max_attempts: 100,
///     max_elapsed: Some(Duration::from_secs(600)),
///     ..ReconnectPolicy::default()
/// };
/// assert_eq!(patient.initial_backoff, Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// The delay before the first reconnection of an outage (default 100 ms).
    pub initial_backoff: Duration,
    /// The longest delay between reconnections (default 2 s).
    pub max_backoff: Duration,
    /// Reconnections per outage; 0 never reconnects (default 10).
    pub max_attempts: u32,
    /// The longest an outage may last; `None` for no limit (default 30 s).
    pub max_elapsed: Option<Duration>,
    /// The fraction, 0 to 1, by which each delay is randomly shortened
    /// (default 0.2).
    pub jitter: f64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_attempts: 10,
            max_elapsed: Some(Duration::from_secs(30)),
            jitter: 0.2,
        }
    }
}

impl ReconnectPolicy {
    /// How long a resumed stream must stay open, without delivering an event,
    /// to count as a recovery that ends the outage.
    pub const STABLE_AFTER: Duration = Duration::from_secs(10);

    /// A policy that never reconnects: the first broken stream is an error.
    pub fn never() -> Self {
        ReconnectPolicy {
            max_attempts: 0,
            ..ReconnectPolicy::default()
        }
    }

    /// The delay before reconnection number `attempt` (1-based) of an outage,
    /// before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// Whether `event` ends its job's stream: a change to SUCCEEDED, FAILED or
/// CANCELLED.
pub fn is_terminal(event: &JobEvent) -> bool {
    event.kind() == EventKind::StateChanged && is_terminal_state(event.state())
}

/// Whether a job in `state` has ended.
pub fn is_terminal_state(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Whether a watch broken by `status` may be resumed: the server was
/// unavailable or shutting down, it cut off a reader that fell behind, or the
/// connection itself failed (a status the transport made, which carries its
/// cause as a source, whatever its code). Statuses the server sent about the
/// request (`NOT_FOUND`, `OUT_OF_RANGE`, `INVALID_ARGUMENT`, ...) are final.
pub(crate) fn is_resumable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => true,
        Code::NotFound
        | Code::OutOfRange
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => false,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Internal
        | Code::DataLoss => std::error::Error::source(status).is_some(),
    }
}

/// Which events have been handed out: the resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The sequence number of the last event handed out (or the starting
    /// `after_seq`); the next call resumes after it.
    last_seq: u64,
    /// The terminal event was handed out.
    ended: bool,
}

impl Cursor {
    pub(crate) fn new(after_seq: u64) -> Self {
        Cursor {
            last_seq: after_seq,
            ended: false,
        }
    }

    /// Whether to hand `event` out: no when it was already (a replay after
    /// a resume repeats nothing new, but a server may), or after the end.
    pub(crate) fn accept(&mut self, event: &JobEvent) -> bool {
        if self.ended || event.seq <= self.last_seq {
            return false;
        }
        self.last_seq = event.seq;
        self.ended = is_terminal(event);
        true
    }
}

/// The reconnection budget of the current outage.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    /// Reconnections so far and when the outage began; `None` when healthy.
    outage: Option<(u32, Instant)>,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Backoff {
            policy,
            outage: None,
        }
    }

    /// The stream works again: the next failure starts a new outage.
    pub(crate) fn recovered(&mut self) {
        self.outage = None;
    }

    /// A call or stream failed at `now`: the delay before the next try, or
    /// `None` to give up. `random` (0 to 1) picks the jitter.
    pub(crate) fn failed(&mut self, now: Instant, random: f64) -> Option<Duration> {
        let (attempts, began) = self.outage.get_or_insert((0, now));
        if *attempts >= self.policy.max_attempts {
            return None;
        }
        *attempts += 1;
        let jitter = self.policy.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0);
        let mut delay = self.policy.backoff(*attempts).mul_f64(1.0 - jitter);
        if let Some(max) = self.policy.max_elapsed {
            let left = max.checked_sub(now.saturating_duration_since(*began))?;
            if left.is_zero() {
                return None;
            }
            delay = delay.min(left);
        }
        Some(delay)
    }
}

/// A number from 0 to 1 for jitter, from the standard library's randomly
/// keyed hasher (no dependency on a random number crate for this).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A job's events, in order, each once, ending after the terminal event;
/// made by [`Client::watch`](crate::Client::watch).
///
/// Read it with [`next`](Watch::next), or turn it into a
/// [`Stream`](futures::Stream) with [`into_stream`](Watch::into_stream).
/// When the stream breaks it reconnects by itself as its
/// [`ReconnectPolicy`] allows, resuming after [`last_seq`](Watch::last_seq).
/// Progress events may be coalesced by the server for a reader that falls
/// behind (sequence numbers then skip), but state changes never are.
#[derive(Debug)]
pub struct Watch {
    service: JobServiceClient<AuthChannel>,
    job_id: String,
    cursor: Cursor,
    backoff: Backoff,
    stream: Option<Streaming<WatchProgressResponse>>,
    /// When the current stream was opened.
    opened_at: Instant,
    /// An error ended the watch: `next` answers `None` from now on.
    failed: bool,
    reconnects: u64,
}

impl Watch {
    /// Opens the first stream (reconnecting as `policy` allows when the
    /// server is unavailable), so an unknown job or a resume point that is no
    /// longer kept fails here rather than at the first `next`.
    pub(crate) async fn start(
        service: JobServiceClient<AuthChannel>,
        job_id: &str,
        after_seq: u64,
        policy: ReconnectPolicy,
    ) -> Result<Watch> {
        let mut watch = Watch {
            service,
            job_id: job_id.to_owned(),
            cursor: Cursor::new(after_seq),
            backoff: Backoff::new(policy),
            stream: None,
            opened_at: Instant::now(),
            failed: false,
            reconnects: 0,
        };
        watch.open().await?;
        Ok(watch)
    }

    /// A watch that has nothing to deliver (the job ended at or before the
    /// starting `after_seq`).
    pub(crate) fn ended(
        service: JobServiceClient<AuthChannel>,
        job_id: &str,
        after_seq: u64,
    ) -> Self {
        Watch {
            service,
            job_id: job_id.to_owned(),
            cursor: Cursor {
                last_seq: after_seq,
                ended: true,
            },
            backoff: Backoff::new(ReconnectPolicy::never()),
            stream: None,
            opened_at: Instant::now(),
            failed: false,
            reconnects: 0,
        }
    }

    /// The watched job's id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The sequence number of the last event delivered (or the starting
    /// `after_seq` before the first): to watch on from here later, pass it
    /// as `after_seq`.
    pub fn last_seq(&self) -> u64 {
        self.cursor.last_seq
    }

    /// Whether the terminal event was delivered (or the job had ended before
    /// the starting `after_seq`).
    pub fn is_finished(&self) -> bool {
        self.cursor.ended
    }

    /// How many times the watch has called the server again after a broken
    /// stream or a failed call.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next event; `Ok(None)` after the terminal one.
    ///
    /// A broken stream is resumed here, transparently. An error is final:
    /// the job's id or resume point was refused (`NotFound`, `Other` with
    /// `OUT_OF_RANGE`, `InvalidArgument`, ...), or reconnecting failed for
    /// longer than the policy allows (the last error, usually
    /// `Unavailable`); later calls answer `Ok(None)`. Dropping the future
    /// before it completes loses no event, so `next` may be raced in
    /// `tokio::select!`.
    pub async fn next(&mut self) -> Result<Option<JobEvent>> {
        loop {
            if self.cursor.ended || self.failed {
                return Ok(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            let broken = match stream.message().await {
                Ok(Some(WatchProgressResponse { event: Some(event) })) => {
                    if !self.cursor.accept(&event) {
                        continue;
                    }
                    self.backoff.recovered();
                    if self.cursor.ended {
                        self.stream = None;
                    }
                    return Ok(Some(event));
                }
                // A response without its event carries nothing to deliver.
                Ok(Some(WatchProgressResponse { event: None })) => continue,
                Ok(None) => Status::unavailable(format!(
                    "the event stream of job '{}' ended before the job did; resume with after_seq={}",
                    self.job_id, self.cursor.last_seq
                )),
                Err(status) => status,
            };
            self.stream = None;
            if self.opened_at.elapsed() >= ReconnectPolicy::STABLE_AFTER {
                self.backoff.recovered();
            }
            self.wait_or_fail(broken).await?;
        }
    }

    /// The watch as a [`Stream`](futures::Stream) of events; it ends after
    /// the terminal event, or after the first error.
    pub fn into_stream(self) -> BoxStream<'static, Result<JobEvent>> {
        futures::stream::unfold(self, |mut watch| async move {
            match watch.next().await {
                Ok(Some(event)) => Some((Ok(event), watch)),
                Ok(None) => None,
                Err(err) => Some((Err(err), watch)),
            }
        })
        .boxed()
    }

    /// Calls `WatchProgress` after the cursor until the server accepts.
    async fn open(&mut self) -> Result<()> {
        loop {
            let request = WatchProgressRequest {
                job_id: self.job_id.clone(),
                after_seq: self.cursor.last_seq,
            };
            match self.service.watch_progress(request).await {
                Ok(response) => {
                    self.stream = Some(response.into_inner());
                    self.opened_at = Instant::now();
                    return Ok(());
                }
                Err(status) => self.wait_or_fail(status).await?,
            }
        }
    }

    /// After `status` broke the watch: waits before the next try, or ends
    /// the watch with the error when it is final or the budget is spent.
    async fn wait_or_fail(&mut self, status: Status) -> Result<()> {
        let delay = if is_resumable(&status) {
            self.backoff.failed(Instant::now(), random_fraction())
        } else {
            None
        };
        match delay {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                self.reconnects += 1;
                Ok(())
            }
            None => {
                self.failed = true;
                Err(Error::from(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: EventKind, state: JobState) -> JobEvent {
        JobEvent {
            seq,
            job_id: "j".into(),
            kind: kind.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_cursor_hands_out_each_event_once_and_stops_at_the_end() {
        let mut cursor = Cursor::new(2);
        let running = event(3, EventKind::StateChanged, JobState::Running);
        assert!(!cursor.accept(&event(2, EventKind::Progress, JobState::Running)));
        assert!(cursor.accept(&running));
        assert!(!cursor.accept(&running), "a replayed event is dropped");
        // Coalesced progress skips numbers; that is fine.
        assert!(cursor.accept(&event(7, EventKind::Progress, JobState::Running)));
        assert_eq!(cursor.last_seq, 7);
        assert!(!cursor.ended);
        assert!(cursor.accept(&event(8, EventKind::StateChanged, JobState::Cancelled)));
        assert!(cursor.ended);
        assert!(!cursor.accept(&event(9, EventKind::StateChanged, JobState::Queued)));
        assert_eq!(cursor.last_seq, 8);
    }

    #[test]
    fn only_state_changes_to_an_end_state_are_terminal() {
        for (state, end) in [
            (JobState::Scheduled, false),
            (JobState::Queued, false),
            (JobState::Running, false),
            (JobState::Succeeded, true),
            (JobState::Failed, true),
            (JobState::Cancelled, true),
        ] {
            assert_eq!(
                is_terminal(&event(1, EventKind::StateChanged, state)),
                end,
                "{state:?}"
            );
        }
        // A progress event carries the state after it, which is not an end.
        assert!(!is_terminal(&event(
            1,
            EventKind::Progress,
            JobState::Succeeded
        )));
    }

    #[test]
    fn backoff_doubles_from_100ms_to_2s() {
        let policy = ReconnectPolicy::default();
        let delays: Vec<u128> = (1..=7).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn the_budget_counts_attempts_per_outage() {
        let policy = ReconnectPolicy {
            max_attempts: 3,
            max_elapsed: None,
            jitter: 0.5,
            ..ReconnectPolicy::default()
        };
        let mut backoff = Backoff::new(policy);
        let now = Instant::now();
        assert_eq!(backoff.failed(now, 0.0), Some(Duration::from_millis(100)));
        // Jitter only shortens: half of 0.5 off 200 ms.
        assert_eq!(backoff.failed(now, 0.5), Some(Duration::from_millis(150)));
        assert_eq!(backoff.failed(now, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(backoff.failed(now, 0.0), None, "the 4th attempt is refused");
        backoff.recovered();
        assert_eq!(backoff.failed(now, 0.0), Some(Duration::from_millis(100)));
    }

    #[test]
    fn the_budget_ends_when_the_outage_is_too_long() {
        let policy = ReconnectPolicy {
            max_attempts: 100,
            max_elapsed: Some(Duration::from_secs(3)),
            jitter: 0.0,
            ..ReconnectPolicy::default()
        };
        let mut backoff = Backoff::new(policy);
        let began = Instant::now();
        assert_eq!(backoff.failed(began, 0.0), Some(Duration::from_millis(100)));
        // 2.5 s in, the 2nd delay (200 ms) still fits.
        let later = began + Duration::from_millis(2500);
        assert_eq!(backoff.failed(later, 0.0), Some(Duration::from_millis(200)));
        // 2.9 s in, the 3rd (400 ms) is cut to what is left.
        let later = began + Duration::from_millis(2900);
        assert_eq!(backoff.failed(later, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(backoff.failed(began + Duration::from_secs(3), 0.0), None);
    }

    #[test]
    fn never_means_no_reconnection() {
        let mut backoff = Backoff::new(ReconnectPolicy::never());
        assert_eq!(backoff.failed(Instant::now(), 0.0), None);
    }

    #[test]
    fn random_fractions_are_fractions() {
        for _ in 0..100 {
            let x = random_fraction();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn which_statuses_are_resumed() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(is_resumable(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::OutOfRange,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(!is_resumable(&Status::new(code, "x")), "{code:?}");
        }
        // The same codes made by the transport from a broken connection.
        let cut = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(cut.code(), Code::Unknown);
        assert!(is_resumable(&cut));
    }
}
