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
//! The embedded store signals directly, without Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::keys::Keyspace;
use crate::watch::Feed;

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Signals {
    /// The signal of a queue (by its `<ns>:<queue>` tag).
    pub fn queue(&self, tag: &str) -> Arc<QueueSignal> {
        let mut queues = lock(&self.queues);
        if queues.len() > 10_000 {
            queues.retain(|_, n| Arc::strong_count(n) > 1);
        }
        queues.entry(tag.to_owned()).or_default().clone()
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
        if feeds.len() > 1024 {
            feeds.retain(|_, f| f.strong_count() > 0);
        }
        let feed = Arc::new(Feed::new());
        feeds.insert(key, Arc::downgrade(&feed));
        feed
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
    /// until `shutdown`, re-subscribing with backoff when the connection drops.
    pub async fn relay(&self, client: redis::Client, keys: &Keyspace, shutdown: CancellationToken) {
        let wake_channel = keys.wake_channel();
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.get_async_pubsub().await {
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

/// A receiver of a feed's version, for [`crate::watch`].
pub type VersionReceiver = watch::Receiver<FeedVersion>;
