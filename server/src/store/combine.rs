//! Group commit per queue: calls of one kind (single Submits, single
//! Completes) that arrive for a queue while one of its writes is in flight
//! are written together by the next script call, each answered on its own.
//!
//! A call that finds its queue idle writes itself, on its own task: a
//! lone caller (one producer submitting one job at a time) pays one Redis
//! round trip and no hand-off to another task. Calls that arrive while a
//! write is in flight wait in the queue's lane; when the write ends, the
//! caller that made it hands what is waiting to a drain task and returns
//! at once, and the drain task writes the waiting calls (up to [`MAX`] per
//! script call) until the lane is empty. So a queue has at most one write
//! of each kind in flight per process, nothing waits to fill a batch, and
//! under concurrency each script call carries every call that came in
//! meanwhile: fewer commands, and less Redis time per call.
//!
//! A caller dropped in the middle of its own write (its client went away)
//! still hands the lane on, through [`Turn`]'s `Drop`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::keys::QueueKeys;

/// The most calls one script call carries.
pub const MAX: usize = 256;

/// Writes a group of calls of one queue with one script call, one answer
/// per call in order; an `Err` is the whole call's (Redis unreachable).
pub trait Write: Send + Sync + 'static {
    type Call: Send + 'static;
    type Answer: Send + 'static;

    fn write(
        &self,
        qk: &QueueKeys,
        calls: Vec<Self::Call>,
    ) -> impl Future<Output = Result<Vec<Self::Answer>>> + Send;
}

type Waiting<W> = Vec<(
    <W as Write>::Call,
    oneshot::Sender<Result<<W as Write>::Answer>>,
)>;

struct Lane<W: Write> {
    qk: QueueKeys,
    state: Mutex<LaneState<W>>,
}

struct LaneState<W: Write> {
    /// A write of this lane is in flight (by a caller or the drain task).
    busy: bool,
    waiting: Waiting<W>,
}

/// The lanes of the queues that receive calls, by queue tag.
pub struct Combiner<W: Write> {
    write: Arc<W>,
    lanes: Mutex<HashMap<String, Arc<Lane<W>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<W: Write> Combiner<W> {
    pub fn new(write: W) -> Self {
        Combiner {
            write: Arc::new(write),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// The writer, for calls of its own (a SubmitBatch).
    pub fn inner(&self) -> &W {
        &self.write
    }

    fn lane(&self, qk: &QueueKeys) -> Arc<Lane<W>> {
        let mut lanes = lock(&self.lanes);
        if let Some(lane) = lanes.get(qk.tag()) {
            return lane.clone();
        }
        if lanes.len() >= 10_000 {
            // Forget idle lanes nobody holds.
            lanes.retain(|_, l| Arc::strong_count(l) > 1 || lock(&l.state).busy);
        }
        let lane = Arc::new(Lane {
            qk: qk.clone(),
            state: Mutex::new(LaneState {
                busy: false,
                waiting: Vec::new(),
            }),
        });
        lanes.insert(qk.tag().to_owned(), lane.clone());
        lane
    }

    /// Makes one call, with the other calls of its queue that are waiting.
    pub async fn call(&self, qk: &QueueKeys, call: W::Call) -> Result<W::Answer> {
        let lane = self.lane(qk);
        let answer = {
            let mut state = lock(&lane.state);
            if state.busy {
                let (tx, rx) = oneshot::channel();
                state.waiting.push((call, tx));
                Err(rx)
            } else {
                state.busy = true;
                Ok(call)
            }
        };
        match answer {
            Err(rx) => rx
                .await
                .map_err(|_| Error::Corrupt("the write of a combined call stopped".into()))?,
            Ok(call) => {
                let turn = Turn {
                    lane: lane.clone(),
                    write: self.write.clone(),
                };
                let mut answers = self.write.write(&lane.qk, vec![call]).await?;
                drop(turn);
                answers
                    .pop()
                    .ok_or_else(|| Error::Corrupt("a combined write answered nothing".into()))
            }
        }
    }
}

/// A caller's own write; when it ends (or the caller is dropped), the
/// waiting calls go to a drain task, or the lane is idle again.
struct Turn<W: Write> {
    lane: Arc<Lane<W>>,
    write: Arc<W>,
}

impl<W: Write> Drop for Turn<W> {
    fn drop(&mut self) {
        let mut state = lock(&self.lane.state);
        if state.waiting.is_empty() {
            state.busy = false;
            return;
        }
        drop(state);
        let (lane, write) = (self.lane.clone(), self.write.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain(lane, write));
            }
            // No runtime (the process is ending): nobody will write them.
            Err(_) => {
                let mut state = lock(&lane.state);
                state.waiting.clear();
                state.busy = false;
            }
        }
    }
}

/// Writes a lane's waiting calls until there are none.
async fn drain<W: Write>(lane: Arc<Lane<W>>, write: Arc<W>) {
    loop {
        let batch: Waiting<W> = {
            let mut state = lock(&lane.state);
            if state.waiting.is_empty() {
                state.busy = false;
                return;
            }
            let take = state.waiting.len().min(MAX);
            state.waiting.drain(..take).collect()
        };
        let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = calls.len();
        match write.write(&lane.qk, calls).await {
            Ok(answers) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let e = format!(
                    "a combined write answered {} of {count} calls",
                    answers.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(Error::Corrupt(e.clone())));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(share(&e)));
                }
            }
        }
    }
}

/// The same error, for every call of a failed script call.
fn share(e: &Error) -> Error {
    match e {
        Error::Unavailable(e) => Error::Unavailable(e.clone()),
        Error::Redis(e) => Error::Redis(e.clone()),
        other => Error::Corrupt(other.to_string()),
    }
}
