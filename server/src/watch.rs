//! `WatchProgress` fan-out: every watcher of a job in this process shares
//! one [`Feed`], which reads each new event from the store once; each
//! watcher then pulls from the feed (or, when behind it, from the durable
//! history) at its own pace, by sequence number. Nothing is pushed into an
//! unbounded buffer and nothing is lost:
//!
//! - a gap (a missed signal, a re-subscription) is filled from the history,
//!   because a watcher always asks for "everything after my cursor";
//! - a slow reader's backlog coalesces runs of progress events (the newest
//!   wins) but keeps every state change;
//! - a reader stuck for `stuck_after` is cut off with `RESOURCE_EXHAUSTED`
//!   saying to resume with `after_seq`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use jobctl_proto::v1::{self, EventKind, JobState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Result;
use crate::keys::JobId;
use crate::signals::{FeedVersion, Signals};
use crate::store::Store;

/// Events kept in memory per watched job.
const FEED_CACHE: usize = 512;
/// Events read from the store per call.
const PAGE: usize = 256;
/// Events sent to a watcher's stream ahead of its reading.
pub const STREAM_BUFFER: usize = 32;

/// The shared tail of one job's history, for the watchers in this process.
pub struct Feed {
    version: watch::Sender<FeedVersion>,
    cache: tokio::sync::RwLock<Cache>,
}

#[derive(Default)]
struct Cache {
    events: VecDeque<v1::JobEvent>,
    /// The feed version the cache was last filled at.
    seen: FeedVersion,
}

impl Feed {
    pub(crate) fn new() -> Self {
        Feed {
            version: watch::Sender::new((0, 0)),
            cache: tokio::sync::RwLock::new(Cache::default()),
        }
    }

    pub(crate) fn version(&self) -> &watch::Sender<FeedVersion> {
        &self.version
    }

    /// Events after `after`, in order: from the shared cache when it holds
    /// them (one store read per new event for all watchers), else from the
    /// store's history.
    async fn read(
        &self,
        store: &dyn Store,
        ns: &str,
        id: &JobId,
        after: u64,
    ) -> Result<Vec<v1::JobEvent>> {
        let version = *self.version.borrow();
        {
            // Most reads find the cache fresh: they share it (many watchers
            // of one job read at once).
            let cache = self.cache.read().await;
            if cache.seen == version {
                return match cache.after(after) {
                    Some(events) => Ok(events),
                    None => {
                        drop(cache);
                        store.events(ns, id, after, PAGE).await
                    }
                };
            }
        }
        let mut cache = self.cache.write().await;
        if cache.seen != version {
            // One reader refreshes the cache for everyone.
            let from = cache.events.back().map_or(after, |e| e.seq);
            let fresh = store.events(ns, id, from, PAGE).await?;
            if cache
                .events
                .back()
                .is_none_or(|e| fresh.first().is_none_or(|f| f.seq == e.seq + 1))
            {
                cache.events.extend(fresh);
            } else {
                cache.events = fresh.into();
            }
            while cache.events.len() > FEED_CACHE {
                cache.events.pop_front();
            }
            cache.seen = version;
        }
        if let Some(events) = cache.after(after) {
            return Ok(events);
        }
        drop(cache);
        store.events(ns, id, after, PAGE).await
    }
}

impl Cache {
    /// The cached events after `after`, if the cache holds all of them.
    fn after(&self, after: u64) -> Option<Vec<v1::JobEvent>> {
        let covers = self
            .events
            .front()
            .is_some_and(|first| first.seq <= after + 1);
        covers.then(|| {
            self.events
                .iter()
                .filter(|e| e.seq > after)
                .take(PAGE)
                .cloned()
                .collect()
        })
    }
}

/// Is this the event after which a job's stream ends?
pub fn is_terminal(event: &v1::JobEvent) -> bool {
    event.kind() == EventKind::StateChanged && is_terminal_state(event.state())
}

/// Does a job in this state never change again (short of a re-queue)?
pub fn is_terminal_state(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Appends to a backlog; for a slow reader (`coalesce`), a run of progress
/// events collapses into its newest.
fn push(backlog: &mut VecDeque<v1::JobEvent>, event: v1::JobEvent, coalesce: bool) {
    let progress = |e: &v1::JobEvent| e.kind() == EventKind::Progress;
    if coalesce && progress(&event) && backlog.back().is_some_and(progress) {
        backlog.pop_back();
    }
    backlog.push_back(event);
}

/// Everything one watcher needs.
pub struct Watcher {
    pub store: Arc<dyn Store>,
    pub signals: Arc<Signals>,
    pub ns: String,
    pub id: JobId,
    pub after: u64,
    pub stuck_after: Duration,
    pub shutdown: CancellationToken,
}

type Out = mpsc::Sender<Result<v1::WatchProgressResponse, Status>>;

/// How a watcher's stream ends when it does not end with the terminal event:
/// the status the client gets after every event already in its stream.
pub type Ending = Option<Status>;

impl Watcher {
    /// Streams the job's events into `out` until the terminal event, the
    /// client leaving, a stuck reader, or shutdown. `first` holds the events
    /// already read (so a bad request fails the call, not the stream).
    ///
    /// Returns the status that must follow what `out` holds (a stuck reader
    /// has no room left in it for one), or `None` when the stream is done.
    pub async fn run(self, first: Vec<v1::JobEvent>, out: Out) -> Ending {
        let feed = self.signals.feed(&self.ns, &self.id.to_string());
        let mut version = feed.version().subscribe();
        let mut cursor = self.after;
        let mut backlog: VecDeque<v1::JobEvent> = VecDeque::new();
        backlog.extend(first);
        let mut fetched_to = backlog.back().map_or(self.after, |e| e.seq);
        let mut need_read = backlog.is_empty();
        // When the reader must have taken an event by, or be cut off: set
        // when the stream is first found full, cleared by every delivery
        // (new events arriving do not move it).
        let mut stuck_at: Option<tokio::time::Instant> = None;
        loop {
            if need_read || backlog.len() < PAGE / 2 {
                match feed
                    .read(self.store.as_ref(), &self.ns, &self.id, fetched_to)
                    .await
                {
                    Ok(events) => {
                        // The stream is full: the reader is slow.
                        let slow = out.capacity() == 0;
                        for event in events {
                            fetched_to = event.seq;
                            push(&mut backlog, event, slow);
                        }
                    }
                    Err(error) => return Some(error.into()),
                }
                need_read = false;
            }
            if backlog.front().is_some() {
                // Wait for room in the stream; meanwhile keep up with new
                // events (so progress coalesces) and give up on a stuck reader.
                let deadline =
                    *stuck_at.get_or_insert_with(|| tokio::time::Instant::now() + self.stuck_after);
                tokio::select! {
                    permit = out.reserve() => {
                        let Ok(permit) = permit else { return None };
                        stuck_at = None;
                        let Some(event) = backlog.pop_front() else { continue };
                        cursor = event.seq;
                        let end = is_terminal(&event);
                        permit.send(Ok(v1::WatchProgressResponse { event: Some(event) }));
                        if end {
                            return None;
                        }
                    }
                    changed = version.changed() => {
                        if changed.is_err() { return None; }
                        need_read = true;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::info!(job_id = %self.id, cursor, "cutting off a stuck watcher");
                        return Some(Status::resource_exhausted(format!(
                            "the watcher fell too far behind; resume with after_seq={cursor}"
                        )));
                    }
                    () = self.shutdown.cancelled() => return Some(bye(cursor)),
                }
            } else {
                tokio::select! {
                    changed = version.changed() => {
                        if changed.is_err() { return None; }
                        need_read = true;
                    }
                    () = out.closed() => return None,
                    () = self.shutdown.cancelled() => return Some(bye(cursor)),
                }
            }
        }
    }
}

fn bye(cursor: u64) -> Status {
    Status::unavailable(format!(
        "the server is shutting down; resume with after_seq={cursor}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: EventKind, state: JobState) -> v1::JobEvent {
        v1::JobEvent {
            seq,
            kind: kind.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_backlog_coalesces_progress_but_keeps_state_changes() {
        let fill = |coalesce| {
            let mut backlog = VecDeque::new();
            push(
                &mut backlog,
                event(1, EventKind::StateChanged, JobState::Running),
                coalesce,
            );
            for seq in 2..10 {
                push(
                    &mut backlog,
                    event(seq, EventKind::Progress, JobState::Running),
                    coalesce,
                );
            }
            push(
                &mut backlog,
                event(10, EventKind::StateChanged, JobState::Succeeded),
                coalesce,
            );
            backlog.iter().map(|e| e.seq).collect::<Vec<_>>()
        };
        assert_eq!(fill(true), vec![1, 9, 10]);
        assert_eq!(fill(false), (1..=10).collect::<Vec<_>>());
        assert!(is_terminal(&event(
            10,
            EventKind::StateChanged,
            JobState::Succeeded
        )));
    }
}
