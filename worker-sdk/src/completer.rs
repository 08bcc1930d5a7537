//! Batched completions: jobs that succeed hand their `Complete` to one
//! task, which sends whatever has gathered in one `CompleteBatch` call and
//! leases the next jobs in the same round trip, for the slots the completed
//! jobs free (a slot passes straight from a finished job to the next one).
//!
//! Each completion is still checked by the server against its own lease
//! token; a refused one is answered to its job alone. When the batch call
//! itself fails (or the server predates `CompleteBatch`), every job in it
//! falls back to its own `Complete` with the usual retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jobctl_proto::v1::{CompleteBatchRequest, CompleteRequest, LeasedJob};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::debug;

use crate::rpc::Rpc;

/// The most completions one `CompleteBatch` call carries.
pub(crate) const MAX_BATCH: usize = 256;

/// Jobs leased along with a batch of completions, each with its slot.
pub(crate) type Leased = Vec<(LeasedJob, OwnedSemaphorePermit)>;

/// How a completion handed to the completer went.
pub(crate) enum Answer {
    /// Completed; the job's state after the call.
    Done(i32),
    /// The server refused this completion (a stale token, a result over a
    /// limit): what `Complete` would have answered.
    Refused(Status),
    /// The batch call did not go through: send a `Complete` of its own. The
    /// slot comes back if it was handed over.
    Fallback(Option<OwnedSemaphorePermit>),
}

struct Pending {
    request: CompleteRequest,
    permit: Option<OwnedSemaphorePermit>,
    reply: oneshot::Sender<Answer>,
}

/// The handle jobs complete through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Completer {
    tx: mpsc::Sender<Pending>,
    /// Set once the server answered `UNIMPLEMENTED`: no more batching.
    disabled: Arc<AtomicBool>,
}

/// Where the completer leases the next jobs.
pub(crate) struct LeaseTarget {
    pub(crate) worker_id: String,
    pub(crate) queues: Vec<String>,
    /// Where leased jobs go to be started.
    pub(crate) leased: mpsc::Sender<Leased>,
    /// Fires when the worker stops leasing (shutdown).
    pub(crate) stop: CancellationToken,
}

impl Completer {
    /// Starts the completer task; it ends when every handle is dropped.
    pub(crate) fn spawn(rpc: Rpc, target: LeaseTarget) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let disabled = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(rx, rpc, target, disabled.clone()));
        Completer { tx, disabled }
    }

    /// Completes through the next batch. `None` when batching is off: the
    /// caller sends its own `Complete`.
    pub(crate) async fn complete(
        &self,
        request: CompleteRequest,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Answer {
        if self.disabled.load(Ordering::Relaxed) {
            return Answer::Fallback(permit);
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request,
            permit,
            reply,
        };
        if let Err(mpsc::error::SendError(pending)) = self.tx.send(pending).await {
            return Answer::Fallback(pending.permit);
        }
        answer.await.unwrap_or(Answer::Fallback(None))
    }
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    rpc: Rpc,
    target: LeaseTarget,
    disabled: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        send(std::mem::take(&mut batch), &rpc, &target, &disabled).await;
    }
}

async fn send(batch: Vec<Pending>, rpc: &Rpc, target: &LeaseTarget, disabled: &AtomicBool) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut permits = Vec::with_capacity(batch.len());
    for p in batch {
        requests.push(p.request);
        replies.push(p.reply);
        permits.push(p.permit);
    }
    let free = permits.iter().filter(|p| p.is_some()).count();
    let leasing = !target.stop.is_cancelled() && !target.leased.is_closed();
    let request = CompleteBatchRequest {
        completions: requests,
        lease_max_jobs: if leasing {
            u32::try_from(free).unwrap_or(0)
        } else {
            0
        },
        worker_id: target.worker_id.clone(),
        queues: target.queues.clone(),
    };
    let response = match rpc.complete_batch(request).await {
        Ok(response) => response,
        Err(status) => {
            if status.code() == Code::Unimplemented {
                debug!("the server has no CompleteBatch, completing one by one");
                disabled.store(true, Ordering::Relaxed);
            }
            for (reply, permit) in replies.into_iter().zip(permits) {
                let _ = reply.send(Answer::Fallback(permit));
            }
            return;
        }
    };
    let mut results = response.results.into_iter();
    for reply in replies {
        let answer = match results.next() {
            Some(r) if r.code == 0 => Answer::Done(r.state),
            Some(r) => Answer::Refused(Status::new(Code::from(r.code), r.message)),
            None => Answer::Fallback(None),
        };
        let _ = reply.send(answer);
    }
    if response.jobs.is_empty() {
        return;
    }
    let mut slots = permits.into_iter().flatten();
    let mut leased = Vec::with_capacity(response.jobs.len());
    let mut extra = Vec::new();
    for job in response.jobs {
        match slots.next() {
            Some(permit) => leased.push((job, permit)),
            None => extra.push(job),
        }
    }
    drop(slots);
    if let Err(mpsc::error::SendError(unstarted)) = target.leased.send(leased).await {
        extra.extend(unstarted.into_iter().map(|(job, _)| job));
    }
    for job in extra {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            crate::job::release(&rpc, &job.job_id, &job.lease_token).await;
        });
    }
}
