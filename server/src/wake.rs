//! Lease wake-ups: one Redis subscription per process, fanned out in memory
//! to the Lease calls waiting on each queue.
//!
//! Every script that makes work ready publishes `<ns>:<queue>` on the wake
//! channel; a waiting Lease call is woken by that, never by polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The waiters of every queue this process serves Lease calls for.
#[derive(Default)]
pub struct WakeHub {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl WakeHub {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The notifier of a queue (by its `<ns>:<queue>` tag).
    pub fn notifier(&self, tag: &str) -> Arc<Notify> {
        let mut queues = self.queues();
        if queues.len() > 10_000 {
            queues.retain(|_, n| Arc::strong_count(n) > 1);
        }
        queues.entry(tag.to_owned()).or_default().clone()
    }

    /// Wakes the Lease calls waiting on one queue.
    pub fn wake(&self, tag: &str) {
        if let Some(n) = self.queues().get(tag) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiting Lease call (after the subscription was re-made,
    /// when a wake-up may have been missed).
    pub fn wake_all(&self) {
        for n in self.queues().values() {
            n.notify_waiters();
        }
    }

    /// Holds a Redis subscription to the wake channel until `shutdown`,
    /// re-subscribing with backoff when the connection drops.
    pub async fn relay(&self, client: redis::Client, channel: String, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        self.wake_all();
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                msg = messages.next() => match msg {
                                    Some(msg) => match std::str::from_utf8(msg.get_payload_bytes()) {
                                        Ok(tag) => self.wake(tag),
                                        Err(_) => tracing::warn!("ignoring a malformed wake message"),
                                    },
                                    None => break,
                                },
                                () = shutdown.cancelled() => return,
                            }
                        }
                        tracing::warn!("wake subscription lost; re-subscribing");
                    }
                    Err(error) => tracing::warn!(%error, "wake subscription failed"),
                },
                Err(error) => tracing::warn!(%error, "wake subscription cannot connect"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
