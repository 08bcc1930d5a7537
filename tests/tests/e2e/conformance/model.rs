//! Random sequences of operations checked against a model of the job
//! lifecycle: every answer, state, attempt, checkpoint and token must match
//! what the model allows. Seeded, so a failure can be replayed
//! (`JOBCTL_TEST_SEED=<seed>`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use jobctl_proto::v1::{
    CancelRequest, FailRequest, GetQueueStatsRequest, HeartbeatRequest, JobState, LeasedJob,
    ListFailedRequest, ReleaseRequest, RequeueRequest, SubmitRequest,
};
use jobctl_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Code, Status};

conformance! {
    random_operation_sequences_keep_every_invariant;
}

/// An answer in a line: the message, or the code and message of the error.
fn brief<T: std::fmt::Debug>(r: &Result<tonic::Response<T>, Status>) -> String {
    match r {
        Ok(r) => format!("{:?}", r.get_ref()),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    /// Waiting out a retry backoff: SCHEDULED, or QUEUED once promoted.
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    fn terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    fn allows(self, actual: JobState) -> bool {
        match self {
            State::Queued => actual == JobState::Queued,
            State::Scheduled => matches!(actual, JobState::Scheduled | JobState::Queued),
            State::Running => actual == JobState::Running,
            State::Succeeded => actual == JobState::Succeeded,
            State::Failed => actual == JobState::Failed,
            State::Cancelled => actual == JobState::Cancelled,
        }
    }

    fn from_proto(s: JobState) -> Option<State> {
        Some(match s {
            JobState::Queued => State::Queued,
            JobState::Scheduled => State::Scheduled,
            JobState::Running => State::Running,
            JobState::Succeeded => State::Succeeded,
            JobState::Failed => State::Failed,
            JobState::Cancelled => State::Cancelled,
            JobState::Unspecified => return None,
        })
    }
}

#[derive(Debug)]
struct ModelJob {
    id: String,
    state: State,
    lease: Option<LeasedJob>,
    /// Tokens of leases that ended, with the job id they were for.
    stale: Vec<String>,
    /// The token whose Complete finished the job (a repeat may be told
    /// SUCCEEDED).
    completed_with: Option<String>,
    attempts_used: u32,
    max_attempts: u32,
    cancel_requested: bool,
    /// `None` when the model does not know (after a re-queue).
    checkpoint: Option<Option<Vec<u8>>>,
}

struct Run<'a> {
    srv: &'a TestServer,
    /// The queue of this run (one per seed, so runs on one server are
    /// independent).
    queue: String,
    rng: StdRng,
    jobs: Vec<ModelJob>,
    tokens_seen: HashSet<(String, String)>,
    trace: String,
    step: usize,
}

impl Run<'_> {
    fn log(&mut self, line: String) {
        let _ = writeln!(self.trace, "{:4} {line}", self.step);
    }

    fn fail(&self, problem: String) -> ! {
        panic!("{problem}\nafter these operations:\n{}", self.trace);
    }

    fn pick(&mut self, filter: impl Fn(&ModelJob) -> bool) -> Option<usize> {
        let eligible: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| filter(&self.jobs[i]))
            .collect();
        if eligible.is_empty() {
            None
        } else {
            Some(eligible[self.rng.random_range(0..eligible.len())])
        }
    }

    fn end_lease(&mut self, i: usize) {
        if let Some(lease) = self.jobs[i].lease.take() {
            self.jobs[i].stale.push(lease.lease_token);
        }
    }

    async fn submit(&mut self) {
        let max_attempts = self.rng.random_range(1..=3);
        let priority = self.rng.random_range(-2..=2);
        let id = submit(
            &self.srv.job,
            SubmitRequest {
                max_attempts,
                priority,
                lease_ttl: Some(pb_duration(Duration::from_secs(60))),
                retry: Some(backoff(
                    Duration::from_millis(10),
                    Duration::from_millis(10),
                    1.0,
                )),
                ..submit_request(&self.queue, "k", format!("{}", self.jobs.len()))
            },
        )
        .await;
        self.log(format!("submit {id} max_attempts={max_attempts}"));
        self.jobs.push(ModelJob {
            id,
            state: State::Queued,
            lease: None,
            stale: Vec::new(),
            completed_with: None,
            attempts_used: 0,
            max_attempts,
            cancel_requested: false,
            checkpoint: Some(None),
        });
    }

    async fn lease(&mut self) {
        let max = self.rng.random_range(1..=3u32);
        let ready = self
            .jobs
            .iter()
            .filter(|j| j.state == State::Queued)
            .count();
        let leased = lease(&self.srv.worker, &self.queue, max).await;
        self.log(format!(
            "lease max={max} -> {:?}",
            leased.iter().map(|l| &l.job_id).collect::<Vec<_>>()
        ));
        if leased.len() < ready.min(max as usize) {
            self.fail(format!(
                "Lease(max_jobs={max}) returned {} jobs while {ready} were QUEUED",
                leased.len()
            ));
        }
        if leased.len() > max as usize {
            self.fail(format!(
                "Lease(max_jobs={max}) returned {} jobs",
                leased.len()
            ));
        }
        for l in leased {
            let Some(i) = self.jobs.iter().position(|j| j.id == l.job_id) else {
                self.fail(format!("leased an unknown job {}", l.job_id));
            };
            let job = &self.jobs[i];
            if !matches!(job.state, State::Queued | State::Scheduled) {
                self.fail(format!("leased {} while it is {:?}", job.id, job.state));
            }
            if l.attempt != job.attempts_used + 1 {
                self.fail(format!(
                    "leased {} as attempt {}, expected {}",
                    job.id,
                    l.attempt,
                    job.attempts_used + 1
                ));
            }
            if let Some(cp) = &job.checkpoint
                && l.checkpoint != *cp
            {
                self.fail(format!(
                    "leased {} with checkpoint {:?}, expected {cp:?}",
                    job.id, l.checkpoint
                ));
            }
            if job.stale.contains(&l.lease_token)
                || !self
                    .tokens_seen
                    .insert((l.job_id.clone(), l.lease_token.clone()))
            {
                self.fail(format!("leased {} with a token it had before", job.id));
            }
            let job = &mut self.jobs[i];
            job.state = State::Running;
            job.lease = Some(l);
        }
    }

    async fn heartbeat(&mut self) {
        let Some(i) = self.pick(|j| j.state == State::Running) else {
            return;
        };
        let lease = self.jobs[i].lease.clone().expect("running job has a lease");
        let checkpoint = self
            .rng
            .random_bool(0.5)
            .then(|| format!("cp-{}", self.step).into_bytes());
        let r = self
            .srv
            .worker()
            .heartbeat(HeartbeatRequest {
                checkpoint: checkpoint.clone(),
                ..heartbeat_request(&lease)
            })
            .await;
        self.log(format!(
            "heartbeat {} checkpoint={checkpoint:?} -> {}",
            lease.job_id,
            brief(&r)
        ));
        match r {
            Ok(r) => {
                if r.into_inner().cancel_requested != self.jobs[i].cancel_requested {
                    self.fail(format!(
                        "heartbeat of {}: wrong cancel_requested",
                        lease.job_id
                    ));
                }
                if checkpoint.is_some() {
                    self.jobs[i].checkpoint = Some(checkpoint);
                }
            }
            Err(s) => self.fail(format!("heartbeat of {} refused: {s:?}", lease.job_id)),
        }
    }

    async fn complete(&mut self) {
        let Some(i) = self.pick(|j| j.state == State::Running) else {
            return;
        };
        let lease = self.jobs[i].lease.clone().expect("lease");
        let r = self
            .srv
            .worker()
            .complete(complete_request(&lease, b"done"))
            .await;
        self.log(format!("complete {} -> {}", lease.job_id, brief(&r)));
        let state = match r {
            Ok(r) => r.into_inner().state(),
            Err(s) => self.fail(format!("complete of {} refused: {s:?}", lease.job_id)),
        };
        let allowed: &[JobState] = if self.jobs[i].cancel_requested {
            &[JobState::Succeeded, JobState::Cancelled]
        } else {
            &[JobState::Succeeded]
        };
        if !allowed.contains(&state) {
            self.fail(format!("complete of {} ended {state:?}", lease.job_id));
        }
        self.end_lease(i);
        let job = &mut self.jobs[i];
        job.attempts_used += 1;
        job.state = State::from_proto(state).expect("state");
        job.completed_with = Some(lease.lease_token);
    }

    async fn fail_job(&mut self) {
        let Some(i) = self.pick(|j| j.state == State::Running) else {
            return;
        };
        let lease = self.jobs[i].lease.clone().expect("lease");
        let retryable = self.rng.random_bool(0.7);
        let checkpoint = self
            .rng
            .random_bool(0.3)
            .then(|| format!("fail-cp-{}", self.step).into_bytes());
        let r = self
            .srv
            .worker()
            .fail(FailRequest {
                checkpoint: checkpoint.clone(),
                ..fail_request(&lease, "model failure", retryable)
            })
            .await;
        self.log(format!(
            "fail {} retryable={retryable} -> {}",
            lease.job_id,
            brief(&r)
        ));
        let state = match r {
            Ok(r) => r.into_inner().state(),
            Err(s) => self.fail(format!("fail of {} refused: {s:?}", lease.job_id)),
        };
        let job = &self.jobs[i];
        let used = job.attempts_used + 1;
        let expected = if job.cancel_requested {
            JobState::Cancelled
        } else if !retryable || used >= job.max_attempts {
            JobState::Failed
        } else {
            JobState::Scheduled
        };
        if state != expected {
            self.fail(format!(
                "fail of {} answered {state:?}, expected {expected:?}",
                job.id
            ));
        }
        self.end_lease(i);
        let job = &mut self.jobs[i];
        job.attempts_used = used;
        job.state = State::from_proto(state).expect("state");
        if checkpoint.is_some() {
            job.checkpoint = Some(checkpoint);
        }
    }

    async fn release(&mut self) {
        let Some(i) = self.pick(|j| j.state == State::Running) else {
            return;
        };
        let lease = self.jobs[i].lease.clone().expect("lease");
        let r = self
            .srv
            .worker()
            .release(ReleaseRequest {
                job_id: lease.job_id.clone(),
                lease_token: lease.lease_token.clone(),
                checkpoint: None,
            })
            .await;
        self.log(format!("release {} -> {}", lease.job_id, brief(&r)));
        let state = match r {
            Ok(r) => r.into_inner().state(),
            Err(s) => self.fail(format!("release of {} refused: {s:?}", lease.job_id)),
        };
        let allowed: &[JobState] = if self.jobs[i].cancel_requested {
            &[JobState::Cancelled]
        } else {
            &[JobState::Queued]
        };
        if !allowed.contains(&state) {
            self.fail(format!("release of {} answered {state:?}", lease.job_id));
        }
        self.end_lease(i);
        self.jobs[i].state = State::from_proto(state).expect("state");
    }

    async fn cancel(&mut self) {
        let Some(i) = self.pick(|_| true) else {
            return;
        };
        let id = self.jobs[i].id.clone();
        let r = self
            .srv
            .job()
            .cancel(CancelRequest {
                job_id: id.clone(),
                reason: "model".into(),
            })
            .await;
        self.log(format!(
            "cancel {id} ({:?}) -> {}",
            self.jobs[i].state,
            brief(&r)
        ));
        let before = self.jobs[i].state;
        match (before, r) {
            (State::Queued | State::Scheduled, Ok(r))
                if r.get_ref().state() == JobState::Cancelled =>
            {
                self.jobs[i].state = State::Cancelled;
            }
            (State::Running, Ok(r))
                if r.get_ref().state() == JobState::Running && r.get_ref().cancel_requested =>
            {
                self.jobs[i].cancel_requested = true;
            }
            (s, Ok(r)) if s.terminal() && s.allows(r.get_ref().state()) => {}
            (s, Err(e)) if s.terminal() && e.code() == Code::FailedPrecondition => {}
            (s, other) => self.fail(format!("cancel of {id} while {s:?}: {other:?}")),
        }
    }

    async fn requeue(&mut self) {
        let Some(i) = self.pick(|_| true) else {
            return;
        };
        let id = self.jobs[i].id.clone();
        let r = self
            .srv
            .admin()
            .requeue(RequeueRequest { job_id: id.clone() })
            .await;
        self.log(format!(
            "requeue {id} ({:?}) -> {}",
            self.jobs[i].state,
            brief(&r)
        ));
        match (self.jobs[i].state, r) {
            (State::Failed, Ok(r)) if r.get_ref().state() == JobState::Queued => {
                let job = &mut self.jobs[i];
                job.state = State::Queued;
                job.attempts_used = 0;
                job.checkpoint = None;
            }
            (s, Err(e)) if s != State::Failed && e.code() == Code::FailedPrecondition => {}
            (s, other) => self.fail(format!("requeue of {id} while {s:?}: {other:?}")),
        }
    }

    /// A call with a lease token from an earlier lease of the job.
    async fn stale_call(&mut self) {
        let Some(i) = self.pick(|j| !j.stale.is_empty()) else {
            return;
        };
        let job = &self.jobs[i];
        let token = job.stale[self.rng.random_range(0..job.stale.len())].clone();
        let fake = LeasedJob {
            job_id: job.id.clone(),
            lease_token: token.clone(),
            ..LeasedJob::default()
        };
        let repeat_of_complete = job.completed_with.as_deref() == Some(token.as_str());
        let op = self.rng.random_range(0..4);
        let mut worker = self.srv.worker();
        let (what, r): (&str, Result<Option<JobState>, Status>) = match op {
            0 => (
                "heartbeat",
                worker
                    .heartbeat(heartbeat_request(&fake))
                    .await
                    .map(|_| None),
            ),
            1 => (
                "complete",
                worker
                    .complete(complete_request(&fake, b"zombie"))
                    .await
                    .map(|r| Some(r.into_inner().state())),
            ),
            2 => (
                "fail",
                worker
                    .fail(fail_request(&fake, "zombie", true))
                    .await
                    .map(|r| Some(r.into_inner().state())),
            ),
            _ => (
                "release",
                worker
                    .release(ReleaseRequest {
                        job_id: fake.job_id.clone(),
                        lease_token: token,
                        checkpoint: Some(b"zombie".to_vec()),
                    })
                    .await
                    .map(|r| Some(r.into_inner().state())),
            ),
        };
        self.log(format!("stale {what} {} -> {r:?}", fake.job_id));
        match r {
            Err(s) if s.code() == Code::FailedPrecondition => {}
            Ok(Some(JobState::Succeeded)) if what == "complete" && repeat_of_complete => {}
            other => self.fail(format!("stale {what} of {}: {other:?}", fake.job_id)),
        }
    }

    async fn check_all(&mut self) {
        for i in 0..self.jobs.len() {
            let job = &self.jobs[i];
            let actual = get_job(&self.srv.job, &job.id).await;
            if !job.state.allows(actual.state()) {
                self.fail(format!(
                    "{} is {:?}, the model says {:?}",
                    job.id,
                    actual.state(),
                    job.state
                ));
            }
            if job.state == State::Running {
                if actual.attempt != job.attempts_used + 1 {
                    self.fail(format!("{} runs attempt {}", job.id, actual.attempt));
                }
                if actual.cancel_requested != job.cancel_requested {
                    self.fail(format!(
                        "{} cancel_requested={}",
                        job.id, actual.cancel_requested
                    ));
                }
            }
            if let Some(cp) = &job.checkpoint
                && actual.checkpoint != *cp
            {
                self.fail(format!(
                    "{} has checkpoint {:?}, expected {cp:?}",
                    job.id, actual.checkpoint
                ));
            }
        }
    }

    async fn check_lists(&mut self) {
        let dead: BTreeSet<String> = self
            .srv
            .admin()
            .list_failed(ListFailedRequest {
                queue: self.queue.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("list_failed")
            .into_inner()
            .jobs
            .into_iter()
            .map(|j| j.id)
            .collect();
        let expected: BTreeSet<String> = self
            .jobs
            .iter()
            .filter(|j| j.state == State::Failed)
            .map(|j| j.id.clone())
            .collect();
        if dead != expected {
            self.fail(format!("ListFailed gave {dead:?}, expected {expected:?}"));
        }
        let stats = self
            .srv
            .admin()
            .get_queue_stats(GetQueueStatsRequest {
                queue: self.queue.clone(),
            })
            .await
            .expect("stats")
            .into_inner();
        let count =
            |f: &dyn Fn(State) -> bool| self.jobs.iter().filter(|j| f(j.state)).count() as u64;
        let expected = (
            count(&|s| matches!(s, State::Queued | State::Scheduled)),
            count(&|s| s == State::Running),
            count(&|s| s == State::Failed),
            count(&|s| s.terminal()),
        );
        let got = (
            stats.queued + stats.scheduled,
            stats.running,
            stats.failed,
            stats.finished,
        );
        if got != expected {
            self.fail(format!(
                "queue stats (waiting, running, failed, finished) = {got:?}, expected {expected:?}"
            ));
        }
    }
}

async fn run_sequence(srv: &TestServer, seed: u64, steps: usize) {
    let mut run = Run {
        srv,
        queue: format!("model-{seed}"),
        rng: StdRng::seed_from_u64(seed),
        jobs: Vec::new(),
        tokens_seen: HashSet::new(),
        trace: format!("seed {seed}\n"),
        step: 0,
    };
    for step in 0..steps {
        run.step = step;
        let roll = run.rng.random_range(0..100);
        match roll {
            0..12 => run.submit().await,
            12..32 => run.lease().await,
            32..42 => run.heartbeat().await,
            42..52 => run.complete().await,
            52..64 => run.fail_job().await,
            64..70 => run.release().await,
            70..78 => run.cancel().await,
            78..84 => run.requeue().await,
            84..96 => run.stale_call().await,
            _ => run.check_all().await,
        }
    }
    run.check_all().await;
    run.check_lists().await;
    let per_state: HashMap<String, usize> = run.jobs.iter().fold(HashMap::new(), |mut m, j| {
        *m.entry(format!("{:?}", j.state)).or_default() += 1;
        m
    });
    assert!(run.jobs.len() > 5, "{per_state:?}");
    assert_no_panics();
}

async fn random_operation_sequences_keep_every_invariant(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let seeds: Vec<u64> = match std::env::var("JOBCTL_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("JOBCTL_TEST_SEED is a number")],
        Err(_) => vec![1, 2, 3, 4],
    };
    for seed in seeds {
        run_sequence(&srv, seed, 400).await;
    }
}
