//! `WatchProgress` fan-out: every watcher of a job in this process shares
//! one [`Feed`], whose task reads each new event from the store once. Each
//! watcher's response stream is a [`WatchStream`] that pulls "everything
//! after my cursor" from the feed (or, when behind it, from the durable
//! history) whenever the transport asks for its next message: no task and
//! no channel per watcher, and nothing queues in front of a reader but the
//! events it has not taken yet.
//!
//! - a gap (a missed signal, a re-subscription) is filled from the history,
//!   because a watcher always asks for "everything after my cursor";
//! - a reader that is behind (the event it is about to get is at least
//!   `coalesce_after` older than the newest it knows of, or 32 events wait
//!   for it) gets a run of
//!   progress events as its newest; every state change is kept, and the
//!   history it asked for when it began (up to the newest event then) is
//!   replayed whole;
//! - a reader stuck for `stuck_after` (events waiting, none taken) is cut
//!   off with `RESOURCE_EXHAUSTED` saying to resume with `after_seq`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use jobctl_proto::v1::{self, EventKind, JobState};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard, ReusableBoxFuture};
use tonic::Status;

use crate::error::Result;
use crate::keys::JobId;
use crate::signals::FeedVersion;
use crate::store::Store;

/// Events kept in memory per watched job.
const FEED_CACHE: usize = 512;
/// Events read from the store per call.
pub const PAGE: usize = 256;
/// Events waiting for a reader that make it behind, however recent.
const BEHIND: usize = 32;

type Event = Arc<v1::JobEvent>;

/// The shared tail of one job's history, for the watchers in this process.
/// One task per feed (started by its first watcher) reads each new event
/// from the store when the job's signal says there is one, then wakes the
/// watchers, which take what they need from the cache without waiting on
/// each other.
pub struct Feed {
    version: watch::Sender<FeedVersion>,
    cache: RwLock<Cache>,
    /// Bumped each time the cache has been refreshed: what watchers wait on.
    refreshed: watch::Sender<u64>,
    /// Whether the refreshing task has been started.
    refreshing: AtomicBool,
}

#[derive(Default)]
struct Cache {
    /// Consecutive events, oldest first.
    events: VecDeque<Event>,
}

impl Feed {
    pub(crate) fn new() -> Self {
        Feed {
            version: watch::Sender::new((0, 0)),
            cache: RwLock::new(Cache::default()),
            refreshed: watch::Sender::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    pub(crate) fn version(&self) -> &watch::Sender<FeedVersion> {
        &self.version
    }

    /// The newest sequence number signalled for this job.
    fn newest(&self) -> u64 {
        self.version.borrow().0
    }

    /// Appends the cached events after `after` (at most a page) to `out`:
    /// no await, no allocation but `out`'s. Returns how many, or `None` when
    /// the cache does not reach back that far (the store must be asked).
    fn cached_into(&self, after: u64, out: &mut VecDeque<Event>) -> Option<usize> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .after_into(after, out)
    }

    /// Starts the task that keeps the cache up to date (once per feed),
    /// from the events after `from`.
    fn start_refreshing(self: &Arc<Self>, store: Arc<dyn Store>, ns: String, id: JobId, from: u64) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let version = self.version.subscribe();
        tokio::spawn(refresh(Arc::downgrade(self), store, ns, id, from, version));
    }

    /// Reads the events after `from` into the cache, a page at a time, to
    /// the end (or as far as the cache holds); `from` follows.
    async fn refresh_once(
        &self,
        store: &dyn Store,
        ns: &str,
        id: &JobId,
        from: &mut u64,
    ) -> Result<()> {
        for _ in 0..FEED_CACHE / PAGE {
            let fresh = store.events(ns, id, *from, PAGE).await?;
            let complete = fresh.len() < PAGE;
            *from = fresh.last().map_or(*from, |e| e.seq);
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            let follows = cache
                .events
                .back()
                .is_none_or(|e| fresh.first().is_none_or(|f| f.seq == e.seq + 1));
            if !follows {
                cache.events.clear();
            }
            cache.events.extend(fresh.into_iter().map(Arc::new));
            while cache.events.len() > FEED_CACHE {
                cache.events.pop_front();
            }
            if complete {
                break;
            }
        }
        Ok(())
    }
}

/// A feed's refreshing task: once at the start, then after every signal
/// (or poke) of the job, until the feed is dropped with its last watcher.
async fn refresh(
    feed: Weak<Feed>,
    store: Arc<dyn Store>,
    ns: String,
    id: JobId,
    mut from: u64,
    mut version: watch::Receiver<FeedVersion>,
) {
    loop {
        version.borrow_and_update();
        {
            let Some(feed) = feed.upgrade() else { return };
            if let Err(error) = feed.refresh_once(store.as_ref(), &ns, &id, &mut from).await {
                // The watchers read the store themselves (and meet the error
                // there) until the next signal refreshes the cache.
                tracing::warn!(job_id = %id, %error, "cannot read a watched job's new events");
                feed.cache
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .events
                    .clear();
            }
            feed.refreshed.send_modify(|n| *n += 1);
        }
        if version.changed().await.is_err() {
            return;
        }
    }
}

impl Cache {
    /// Appends the cached events after `after` (at most a page) to `out`,
    /// if the cache holds all of them.
    fn after_into(&self, after: u64, out: &mut VecDeque<Event>) -> Option<usize> {
        let first = self.events.front()?;
        if first.seq > after + 1 {
            return None;
        }
        let start = self.events.partition_point(|e| e.seq <= after);
        let before = out.len();
        out.extend(self.events.range(start..).take(PAGE).cloned());
        Some(out.len() - before)
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

/// When an event happened (the store's clock), in microseconds.
fn micros(event: &v1::JobEvent) -> Option<i64> {
    event
        .time
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1_000))
}

/// May a reader about to get `event`, with `later` waiting behind it, skip
/// it? Only a progress event followed by another progress (the run's
/// newest survives, and so does every state change), only past the replay
/// (`live_from`), and only when the reader is behind: [`BEHIND`] events
/// wait for it, or the newest it knows of happened at least
/// `coalesce_after` later.
fn superseded(
    event: &v1::JobEvent,
    later: &VecDeque<Event>,
    live_from: u64,
    coalesce_after: Duration,
) -> bool {
    let progress = |e: &v1::JobEvent| e.kind() == EventKind::Progress;
    if event.seq <= live_from || !progress(event) || !later.front().is_some_and(|e| progress(e)) {
        return false;
    }
    if later.len() >= BEHIND {
        return true;
    }
    let lag = i64::try_from(coalesce_after.as_micros()).unwrap_or(i64::MAX);
    match (micros(event), later.back().and_then(|e| micros(e))) {
        (Some(at), Some(newest)) => newest.saturating_sub(at) >= lag,
        _ => false,
    }
}

/// What a watcher's stream and its stuck-reader guard share.
struct Tracker {
    /// The seq of the last event handed to the transport.
    cursor: AtomicU64,
    /// Set by the guard: the stream ends with `RESOURCE_EXHAUSTED`.
    cut_off: AtomicBool,
    /// Set by the guard when the server shuts down: the stream ends with
    /// `UNAVAILABLE`.
    stopping: AtomicBool,
    /// The stream's task, for the guard to wake.
    waker: AtomicWaker,
    /// Whether the watchers gauge still counts this watcher.
    counted: AtomicU8,
    gauge: Gauge,
}

const COUNTED: u8 = 1;
const DONE: u8 = 2;

impl Tracker {
    /// Stops counting this watcher, for good.
    fn uncount(&self) {
        if self.counted.swap(DONE, Ordering::AcqRel) == COUNTED {
            self.gauge.dec();
        }
    }
}

/// Everything one watcher needs.
pub struct Watcher {
    pub store: Arc<dyn Store>,
    pub feed: Arc<Feed>,
    pub ns: String,
    pub id: JobId,
    /// The events already read (so a bad request fails the call, not the
    /// stream), all after `after`.
    pub first: Vec<v1::JobEvent>,
    pub after: u64,
    /// The newest event when the watch began (as far as the caller knows):
    /// the replay up to it is delivered whole.
    pub replay_to: u64,
    pub stuck_after: Duration,
    pub coalesce_after: Duration,
    pub shutdown: CancellationToken,
    /// The watchers gauge: counts this one until its stream ends.
    pub gauge: Gauge,
}

type Changed = (
    std::result::Result<(), watch::error::RecvError>,
    watch::Receiver<u64>,
);

async fn changed(mut version: watch::Receiver<u64>) -> Changed {
    (version.changed().await, version)
}

/// A watcher's response stream: the job's events after its cursor, pulled
/// from the feed when the transport has room for the next one, until the
/// terminal event, the client leaving, a stuck reader, or shutdown. A
/// stream that does not end with the terminal event ends with a status,
/// after every event it already gave the transport.
pub struct WatchStream {
    feed: Arc<Feed>,
    store: Arc<dyn Store>,
    ns: Arc<str>,
    id: JobId,
    version: ReusableBoxFuture<'static, Changed>,
    /// Events read and not yet delivered, in order.
    pending: VecDeque<Event>,
    /// What the next read starts after.
    fetched_to: u64,
    need_read: bool,
    read: Option<BoxFuture<'static, Result<Vec<Event>>>>,
    /// Events up to this seq had happened when the watch began: its replay,
    /// never coalesced.
    live_from: u64,
    coalesce_after: Duration,
    tracker: Arc<Tracker>,
    done: bool,
    /// Events went to the transport since the stream last waited.
    sent: bool,
    _guard: DropGuard,
}

impl Watcher {
    /// The watcher's stream; its stuck-reader guard runs as a task (in the
    /// current span) until the stream is dropped.
    pub fn start(self) -> WatchStream {
        let live_from = self
            .first
            .last()
            .map_or(self.after, |e| e.seq)
            .max(self.replay_to)
            .max(self.feed.newest());
        self.gauge.inc();
        let tracker = Arc::new(Tracker {
            cursor: AtomicU64::new(self.after),
            cut_off: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            counted: AtomicU8::new(COUNTED),
            gauge: self.gauge,
        });
        let stop = CancellationToken::new();
        tokio::spawn(tracing::Instrument::instrument(
            guard(
                self.feed.clone(),
                tracker.clone(),
                self.id.to_string(),
                self.stuck_after,
                self.shutdown,
                stop.clone(),
            ),
            tracing::Span::current(),
        ));
        let fetched_to = self.first.last().map_or(self.after, |e| e.seq);
        self.feed.start_refreshing(
            self.store.clone(),
            self.ns.clone(),
            self.id.clone(),
            fetched_to,
        );
        WatchStream {
            version: ReusableBoxFuture::new(changed(self.feed.refreshed.subscribe())),
            feed: self.feed,
            store: self.store,
            ns: self.ns.into(),
            id: self.id,
            pending: self.first.into_iter().map(Arc::new).collect(),
            fetched_to,
            need_read: true,
            read: None,
            live_from,
            coalesce_after: self.coalesce_after,
            tracker,
            done: false,
            sent: false,
            _guard: stop.drop_guard(),
        }
    }
}

/// Cuts a watcher off when events wait for it and it has taken none for
/// `stuck_after` (it looks a few times per `stuck_after`: the stream itself
/// is not polled while the transport has no room), and ends it when the
/// server shuts down. Runs until the stream is dropped (`stop`).
async fn guard(
    feed: Arc<Feed>,
    tracker: Arc<Tracker>,
    job_id: String,
    stuck_after: Duration,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let tick = (stuck_after / 4).max(Duration::from_millis(1));
    let mut since: Option<(tokio::time::Instant, u64)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = shutdown.cancelled() => {
                tracker.stopping.store(true, Ordering::Release);
                tracker.waker.wake();
                return;
            }
            () = tokio::time::sleep(tick) => {}
        }
        let cursor = tracker.cursor.load(Ordering::Acquire);
        if feed.newest() <= cursor {
            since = None;
            continue;
        }
        match since {
            Some((at, taken)) if taken == cursor => {
                if at.elapsed() >= stuck_after {
                    tracing::info!(%job_id, cursor, "cutting off a stuck watcher");
                    tracker.cut_off.store(true, Ordering::Release);
                    tracker.uncount();
                    tracker.waker.wake();
                    return;
                }
            }
            _ => since = Some((tokio::time::Instant::now(), cursor)),
        }
    }
}

impl WatchStream {
    fn cursor(&self) -> u64 {
        self.tracker.cursor.load(Ordering::Relaxed)
    }

    /// Ends the stream with `status` (after what the transport holds).
    fn end(&mut self, status: Status) -> Poll<Option<Result<v1::WatchProgressResponse, Status>>> {
        self.done = true;
        self.tracker.uncount();
        Poll::Ready(Some(Err(status)))
    }

    fn append(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            // A read may overlap what is already pending (never in practice).
            if event.seq > self.fetched_to {
                self.fetched_to = event.seq;
                self.pending.push_back(event);
            }
        }
    }

    /// The next event to deliver, skipping progress a reader that is behind
    /// no longer needs.
    fn next_event(&mut self) -> Option<Event> {
        while let Some(event) = self.pending.pop_front() {
            if !superseded(&event, &self.pending, self.live_from, self.coalesce_after) {
                return Some(event);
            }
        }
        None
    }
}

impl Stream for WatchStream {
    type Item = Result<v1::WatchProgressResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.tracker.cut_off.load(Ordering::Acquire) {
            let cursor = this.cursor();
            return this.end(Status::resource_exhausted(format!(
                "the watcher fell too far behind; resume with after_seq={cursor}"
            )));
        }
        if this.tracker.stopping.load(Ordering::Acquire) {
            let cursor = this.cursor();
            return this.end(bye(cursor));
        }
        loop {
            if let Some(event) = this.next_event() {
                this.tracker.cursor.store(event.seq, Ordering::Release);
                if is_terminal(&event) {
                    this.done = true;
                    this.tracker.uncount();
                }
                this.sent = true;
                let event = Arc::unwrap_or_clone(event);
                return Poll::Ready(Some(Ok(v1::WatchProgressResponse { event: Some(event) })));
            }
            if let Some(read) = this.read.as_mut() {
                let Poll::Ready(result) = read.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                this.read = None;
                match result {
                    Ok(events) => {
                        this.need_read = events.len() >= PAGE;
                        this.append(events);
                        continue;
                    }
                    Err(error) => return this.end(error.into()),
                }
            }
            if this.need_read {
                let mut fresh = VecDeque::new();
                match this.feed.cached_into(this.fetched_to, &mut fresh) {
                    Some(n) => {
                        this.need_read = n >= PAGE;
                        this.append(fresh);
                    }
                    None => {
                        // Behind the cache: this watcher reads the history.
                        this.need_read = false;
                        let (store, ns, id, after) = (
                            this.store.clone(),
                            this.ns.clone(),
                            this.id.clone(),
                            this.fetched_to,
                        );
                        this.read = Some(Box::pin(async move {
                            let events = store.events(&ns, &id, after, PAGE).await?;
                            Ok(events.into_iter().map(Arc::new).collect())
                        }));
                    }
                }
                continue;
            }
            if let Poll::Ready((result, version)) = this.version.poll(cx) {
                if result.is_err() {
                    this.done = true;
                    this.tracker.uncount();
                    return Poll::Ready(None);
                }
                this.version.set(changed(version));
                this.need_read = true;
                continue;
            }
            this.tracker.waker.register(cx.waker());
            if this.tracker.stopping.load(Ordering::Acquire)
                || this.tracker.cut_off.load(Ordering::Acquire)
            {
                // The guard spoke between the checks above and the waker.
                cx.waker().wake_by_ref();
            }
            if std::mem::take(&mut this.sent) {
                end_turn(cx);
            }
            return Poll::Pending;
        }
    }
}

/// Spends what is left of the task's cooperative budget. A new event
/// wakes every watcher of the job at once; each hands its message to its
/// connection, which wakes the connection's task. Tokio runs a task woken
/// that way next (its LIFO slot), so each message would go out in a write
/// of its own. With the budget spent, the connection's task joins the back
/// of the queue instead, behind other watchers, and one write carries the
/// messages of several streams (about two per `writev` at 10,000 watchers
/// on 100 connections, against one). This leans on tokio's scheduler for
/// speed only: without it every message still goes out, one write each.
fn end_turn(cx: &mut Context<'_>) {
    while tokio::task::coop::has_budget_remaining() {
        let spend = std::pin::pin!(tokio::task::coop::consume_budget());
        if spend.poll(cx).is_pending() {
            break;
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.tracker.uncount();
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

    fn event(seq: u64, kind: EventKind, state: JobState, millis: i64) -> Event {
        Arc::new(v1::JobEvent {
            seq,
            kind: kind.into(),
            state: state.into(),
            time: Some(prost_types::Timestamp {
                seconds: millis / 1000,
                nanos: i32::try_from(millis % 1000).unwrap_or(0) * 1_000_000,
            }),
            ..Default::default()
        })
    }

    /// What a reader gets from `events`, each `ms` apart, all at once.
    fn delivered(ms: i64, live_from: u64, coalesce_after: Duration) -> Vec<u64> {
        let mut pending: VecDeque<Event> = VecDeque::new();
        pending.push_back(event(1, EventKind::StateChanged, JobState::Running, 0));
        for seq in 2..10 {
            let at = ms * i64::try_from(seq).unwrap_or(0);
            pending.push_back(event(seq, EventKind::Progress, JobState::Running, at));
        }
        pending.push_back(event(
            10,
            EventKind::StateChanged,
            JobState::Succeeded,
            ms * 10,
        ));
        let mut got = Vec::new();
        while let Some(e) = pending.pop_front() {
            if !superseded(&e, &pending, live_from, coalesce_after) {
                got.push(e.seq);
            }
        }
        got
    }

    #[test]
    fn a_reader_behind_gets_progress_coalesced_but_every_state_change() {
        let after = Duration::from_millis(20);
        // Far behind: each run of progress becomes its newest.
        assert_eq!(delivered(100, 0, after), vec![1, 9, 10]);
        // Behind by less than `coalesce_after`: everything.
        assert_eq!(delivered(1, 0, after), (1..=10).collect::<Vec<_>>());
        // The replay the reader asked for is never coalesced.
        assert_eq!(delivered(100, 10, after), (1..=10).collect::<Vec<_>>());
        assert!(is_terminal(&event(
            10,
            EventKind::StateChanged,
            JobState::Succeeded,
            0
        )));
    }
}
