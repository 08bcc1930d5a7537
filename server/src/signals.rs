//! In-process signals, fed by one Redis subscription per process:
//!
//! - **queue wake-ups**: every script that makes work ready publishes
//!   `<ns>:<queue>` on the wake channel; the `Lease` calls waiting on that
//!   queue are woken (never by polling);
//! - **job event feeds**: every script that appends to a job's history
//!   publishes the new sequence number on a channel named after the job's
//!   event stream; the feed of that job, if anyone watches it here, learns
//!   the newest sequence number ([`crate::watch`] does the rest).
//!
//! On one Redis (or a Sentinel-managed one) the subscription is one
//! `SUBSCRIBE` of the wake channel and one `PSUBSCRIBE` of every event
//! channel. On a Redis Cluster, scripts `SPUBLISH` in their queue's shard
//! and pattern subscriptions do not exist for sharded channels, so the
//! relay `SSUBSCRIBE`s exactly the channels this process needs: the wake
//! channel of each queue a Lease call waited on and the event channel of
//! each watched job ([`Topic`]), each on the node that owns it; redis-rs
//! moves them when slots move (a failover), and each (re)confirmed channel
//! makes its waiters look again.
//!
//! The embedded store signals directly, without Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::keys::{JobId, Keyspace};
use crate::store::conn::ClientSource;
use crate::watch::Feed;

/// What this process needs signals of, announced to a relay that
/// subscribes per channel (the cluster's sharded pub/sub).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    /// A queue (`<ns>:<queue>`) whose Lease calls wait here.
    Queue(String),
    /// A job (namespace, id) watched here.
    Job(String, String),
    /// A job no longer watched here.
    Unwatched(String, String),
}

/// How often the sharded relay drops the subscriptions of jobs no one
/// watches any more.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a feed's watchers are told: the newest sequence number seen and a
/// counter bumped when events may have been missed (a re-subscription).
pub type FeedVersion = (u64, u64);

/// How long "this queue was empty and nothing was made ready since" is
/// trusted without looking again: a bound on what a lost wake-up can cost.
const EMPTY_TRUSTED_FOR: Duration = Duration::from_secs(5);

/// What this process knows of one queue: a notifier for the Lease calls
/// waiting on it, a counter of wake-ups, and whether it was found empty
/// since the last one (so that long polls arriving at an idle queue cost
/// Redis nothing, however many workers wait).
#[derive(Default)]
pub struct QueueSignal {
    notify: Notify,
    generation: AtomicU64,
    /// (generation + 1, when) of the last look that found it empty; 0: none.
    empty: Mutex<(u64, Option<Instant>)>,
}

impl QueueSignal {
    /// Resolves on the next wake-up (enable it before looking).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// The wake-up counter; read it before looking at the queue.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A look begun at `generation` found the queue empty.
    pub fn found_empty(&self, generation: u64) {
        *lock(&self.empty) = (generation + 1, Some(Instant::now()));
    }

    /// Whether the queue was found empty recently and nothing was made
    /// ready since: looking again would find it empty.
    pub fn known_empty(&self) -> bool {
        let (at, when) = *lock(&self.empty);
        at == self.generation() + 1 && when.is_some_and(|w| w.elapsed() < EMPTY_TRUSTED_FOR)
    }

    fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// Every queue notifier and job feed of this process.
#[derive(Default)]
pub struct Signals {
    queues: Mutex<HashMap<String, Arc<QueueSignal>>>,
    feeds: Mutex<HashMap<(String, String), Weak<Feed>>>,
    /// Where new queues and feeds are announced, once a sharded relay runs.
    topics: Mutex<Option<mpsc::UnboundedSender<Topic>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Signals {
    /// The signal of a queue (by its `<ns>:<queue>` tag).
    pub fn queue(&self, tag: &str) -> Arc<QueueSignal> {
        let mut queues = lock(&self.queues);
        if let Some(signal) = queues.get(tag) {
            return signal.clone();
        }
        if queues.len() > 10_000 {
            queues.retain(|_, n| Arc::strong_count(n) > 1);
        }
        let signal = queues.entry(tag.to_owned()).or_default().clone();
        drop(queues);
        self.announce(Topic::Queue(tag.to_owned()));
        signal
    }

    fn announce(&self, topic: Topic) {
        if let Some(topics) = &*lock(&self.topics) {
            let _ = topics.send(topic);
        }
    }

    /// Wakes the Lease calls waiting on one queue.
    pub fn wake(&self, tag: &str) {
        if let Some(n) = lock(&self.queues).get(tag) {
            n.wake();
        }
    }

    /// The feed of a job, made on first use and dropped with its last watcher.
    pub fn feed(&self, ns: &str, job_id: &str) -> Arc<Feed> {
        let mut feeds = lock(&self.feeds);
        let key = (ns.to_owned(), job_id.to_owned());
        if let Some(feed) = feeds.get(&key).and_then(Weak::upgrade) {
            return feed;
        }
        let mut dropped = Vec::new();
        if feeds.len() > 1024 {
            feeds.retain(|k, f| {
                let live = f.strong_count() > 0;
                if !live {
                    dropped.push(k.clone());
                }
                live
            });
        }
        let feed = Arc::new(Feed::new());
        feeds.insert(key.clone(), Arc::downgrade(&feed));
        drop(feeds);
        for (ns, id) in dropped {
            self.announce(Topic::Unwatched(ns, id));
        }
        self.announce(Topic::Job(key.0, key.1));
        feed
    }

    /// Forgets the feeds no one watches any more, announcing each.
    fn sweep_feeds(&self) {
        let mut dropped = Vec::new();
        lock(&self.feeds).retain(|k, f| {
            let live = f.strong_count() > 0;
            if !live {
                dropped.push(k.clone());
            }
            live
        });
        for (ns, id) in dropped {
            self.announce(Topic::Unwatched(ns, id));
        }
    }

    /// Asks a job's watchers here to look again (its channel was
    /// (re)subscribed: events may have come before).
    pub fn poke(&self, ns: &str, job_id: &str) {
        let feed = lock(&self.feeds)
            .get(&(ns.to_owned(), job_id.to_owned()))
            .and_then(Weak::upgrade);
        if let Some(feed) = feed {
            feed.version().send_modify(|(_, pokes)| *pokes += 1);
        }
    }

    /// Starts announcing new topics on `topics`; returns those known now.
    fn subscribe_topics(&self, topics: mpsc::UnboundedSender<Topic>) -> Vec<Topic> {
        // Set first: a queue or feed made after the snapshot below is
        // announced, one made before is in it.
        *lock(&self.topics) = Some(topics);
        let mut known: Vec<Topic> = lock(&self.queues)
            .keys()
            .map(|tag| Topic::Queue(tag.clone()))
            .collect();
        known.extend(
            lock(&self.feeds)
                .iter()
                .filter(|(_, f)| f.strong_count() > 0)
                .map(|((ns, id), _)| Topic::Job(ns.clone(), id.clone())),
        );
        known
    }

    /// A job's history reached `seq`.
    pub fn event(&self, ns: &str, job_id: &str, seq: u64) {
        let feed = lock(&self.feeds)
            .get(&(ns.to_owned(), job_id.to_owned()))
            .and_then(Weak::upgrade);
        if let Some(feed) = feed {
            feed.version().send_if_modified(|(latest, _)| {
                let newer = seq > *latest;
                if newer {
                    *latest = seq;
                }
                newer
            });
        }
    }

    /// Signals may have been missed (the subscription was re-made): wake
    /// every waiting Lease call and every watcher, to look again.
    pub fn wake_all(&self) {
        for n in lock(&self.queues).values() {
            n.wake();
        }
        let feeds: Vec<Arc<Feed>> = lock(&self.feeds)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for feed in feeds {
            feed.version().send_modify(|(_, pokes)| *pokes += 1);
        }
    }

    /// Relays Redis's wake channel and event channels into these signals
    /// until `shutdown`, re-subscribing with backoff when the connection
    /// drops (with a client `source` gives anew: a Sentinel names the
    /// master of the moment).
    pub async fn relay(&self, source: ClientSource, keys: &Keyspace, shutdown: CancellationToken) {
        let wake_channel = keys.wake_channel();
        let mut backoff = Duration::from_millis(100);
        loop {
            let pubsub = match source().await {
                Ok(client) => client.get_async_pubsub().await,
                Err(e) => Err(e),
            };
            match pubsub {
                Ok(mut pubsub) => {
                    let subscribed = async {
                        pubsub.subscribe(&wake_channel).await?;
                        pubsub.psubscribe(keys.events_pattern()).await
                    };
                    match subscribed.await {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            self.wake_all();
                            let mut messages = pubsub.on_message();
                            loop {
                                tokio::select! {
                                    msg = messages.next() => match msg {
                                        Some(msg) => self.relay_one(keys, &wake_channel, &msg),
                                        None => break,
                                    },
                                    () = shutdown.cancelled() => return,
                                }
                            }
                            tracing::warn!("redis subscription lost; re-subscribing");
                        }
                        Err(error) => tracing::warn!(%error, "redis subscription failed"),
                    }
                }
                Err(error) => tracing::warn!(%error, "redis subscription cannot connect"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn relay_one(&self, keys: &Keyspace, wake_channel: &str, msg: &redis::Msg) {
        let payload = std::str::from_utf8(msg.get_payload_bytes()).unwrap_or_default();
        let channel = msg.get_channel_name();
        if channel == wake_channel {
            self.wake(payload);
        } else if let (Some((ns, id)), Ok(seq)) = (keys.parse_events_key(channel), payload.parse())
        {
            self.event(&ns, &id.to_string(), seq);
        } else {
            tracing::debug!(%channel, "ignoring an unexpected message");
        }
    }
}

impl Signals {
    /// Relays a Redis Cluster's sharded channels into these signals until
    /// `shutdown`: `SSUBSCRIBE`s each [`Topic`] this process needs (on the
    /// store's cluster connection, whose RESP3 pushes arrive on `pushes`),
    /// `SUNSUBSCRIBE`s jobs no one watches any more.
    pub async fn relay_sharded(
        &self,
        conn: ClusterConnection,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        keys: &Keyspace,
        shutdown: CancellationToken,
    ) {
        let (topics_tx, mut topics) = mpsc::unbounded_channel();
        let mut pending = tokio::task::JoinSet::new();
        for topic in self.subscribe_topics(topics_tx) {
            pending.spawn(follow(
                conn.clone(),
                channel_of(keys, &topic),
                topic,
                shutdown.clone(),
            ));
        }
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => self.relay_push(keys, push),
                    None => return,
                },
                Some(topic) = topics.recv() => {
                    let channel = channel_of(keys, &topic);
                    pending.spawn(follow(conn.clone(), channel, topic, shutdown.clone()));
                }
                Some(_) = pending.join_next(), if !pending.is_empty() => {}
                _ = sweep.tick() => self.sweep_feeds(),
                () = shutdown.cancelled() => {
                    *lock(&self.topics) = None;
                    return;
                }
            }
        }
    }

    fn relay_push(&self, keys: &Keyspace, push: PushInfo) {
        let channel = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                let (Some(name), Some(Value::BulkString(payload))) =
                    (channel(push.data.first()), push.data.get(1))
                else {
                    return;
                };
                let payload = std::str::from_utf8(payload).unwrap_or_default();
                if keys.parse_wake_channel(&name).is_some() {
                    self.wake(payload);
                } else if let (Some((ns, id)), Ok(seq)) =
                    (keys.parse_events_key(&name), payload.parse())
                {
                    self.event(&ns, &id.to_string(), seq);
                }
            }
            // A channel is (again) subscribed: what was published before
            // may have been missed, so its waiters look again.
            PushKind::SSubscribe => {
                let Some(name) = channel(push.data.first()) else {
                    return;
                };
                if let Some(tag) = keys.parse_wake_channel(&name) {
                    self.wake(tag);
                } else if let Some((ns, id)) = keys.parse_events_key(&name) {
                    self.poke(&ns, &id.to_string());
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("a redis cluster node's connection was lost; re-subscribing");
            }
            _ => {}
        }
    }
}

/// The sharded channel of a topic.
fn channel_of(keys: &Keyspace, topic: &Topic) -> String {
    match topic {
        Topic::Queue(tag) => {
            let (ns, queue) = tag.split_once(':').unwrap_or(("", tag));
            keys.queue(ns, queue).wake_channel()
        }
        Topic::Job(ns, id) | Topic::Unwatched(ns, id) => match JobId::parse(id) {
            Ok(job) => keys.queue(ns, job.queue()).events(&job),
            Err(_) => String::new(),
        },
    }
}

/// Subscribes (or unsubscribes) one channel, trying again with backoff
/// until it is done or `shutdown`: a slot without a master refuses for a
/// while.
async fn follow(
    mut conn: ClusterConnection,
    channel: String,
    topic: Topic,
    shutdown: CancellationToken,
) {
    if channel.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        let done = match topic {
            Topic::Unwatched(..) => conn.sunsubscribe(&channel).await,
            _ => conn.ssubscribe(&channel).await,
        };
        match done {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, %channel, "redis sharded subscription failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A receiver of a feed's version, for [`crate::watch`].
pub type VersionReceiver = watch::Receiver<FeedVersion>;
