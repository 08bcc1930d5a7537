//! The Redis job store: one Lua script round trip per transition.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use jobctl_proto::v1::{self, JobState};
use prost::Message;
use redis::aio::ConnectionManager;
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, PushInfo, Value};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

mod schedules;

use super::codec::{self, Record, Reply, encode_map};
use super::combine::{Combiner, Write};
use super::conn::{self, RedisConn, Sentinel, Target, WaitReplicas};
use super::scripts::Scripts;
use super::submits::{Created, Writer};
use super::{
    AttemptEnded, Completion, Failure, Heartbeat, Leased, Maintained, Maintenance, Store, Submitted,
};
use crate::error::{Error, Result};
use crate::keys::{JobId, Keyspace, QueueKeys};
use crate::model::NewJob;
use crate::signals::Signals;

mod admin;

/// How many times one Lease tries again after losing every candidate to
/// other replicas before it answers empty-handed.
const LEASE_RACES: usize = 64;

/// How many due jobs one maintenance script call handles.
const MAINTENANCE_BATCH: usize = 100;

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub key_prefix: String,
    /// Events kept per job.
    pub event_cap: u32,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// A `WAIT` after every transition (`--redis-wait-replicas`).
    pub wait_replicas: Option<WaitReplicas>,
}

/// Where the signal subscription connects.
enum Subscriber {
    /// One Redis: a connection of its own (SUBSCRIBE, PSUBSCRIBE).
    Single(Box<redis::Client>),
    /// The master the Sentinels name, asked again after each lost
    /// subscription.
    Sentinel(Arc<Sentinel>),
    /// A cluster: sharded subscriptions on the store's own cluster
    /// connection (RESP3 pushes arrive on the receiver), taken by the relay.
    Cluster(Mutex<Option<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>)>>),
}

/// The job store over one Redis, a Redis Cluster or a Sentinel-managed
/// Redis ([`Target`]).
pub struct RedisStore {
    conn: RedisConn,
    subscriber: Subscriber,
    keys: Keyspace,
    scripts: Scripts,
    options: StoreOptions,
    /// Serialises this process's leases per queue, so its own Lease calls
    /// do not race each other for the same head of the ready set.
    lease_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When this process last recorded each queue in the registry.
    registered: Mutex<HashMap<String, std::time::Instant>>,
    /// The registry as last read by the maintenance pass, and the passes
    /// since.
    registry_cache: Mutex<(u32, Vec<(String, String)>)>,
    /// Writes new jobs (submit_batch.lua): SubmitBatch directly, single
    /// Submits combined per queue.
    submits: Combiner<Writer>,
    /// Ends attempts with success (complete_batch.lua): CompleteBatch
    /// directly, single Completes combined per queue.
    completes: Combiner<Completer>,
}

/// The maintenance pass reads the queue registry every this many passes
/// (queues this process registers are maintained from the first pass on).
const REGISTRY_EVERY: u32 = 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a transition was refused, from a script's status word.
fn refusal(reply: &Reply<'_>, id: &JobId, what: &str) -> Error {
    match reply.str(0) {
        "missing" => Error::NotFound(id.to_string()),
        "stale" => Error::FailedPrecondition(format!(
            "{what} refused: the lease token of job {id} is stale (the job is {})",
            state_name(codec::state(reply.int(1)))
        )),
        other => Error::Corrupt(format!("unexpected script status {other:?}")),
    }
}

fn state_name(state: JobState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("JOB_STATE_")
        .unwrap_or("UNSPECIFIED")
}

fn jitter() -> String {
    rand::random::<f64>().to_string()
}

/// A single Complete's call, owned so that it can wait in its queue's lane.
pub struct OwnedCompletion {
    id: JobId,
    token: String,
    result: Vec<u8>,
}

/// Ends running attempts of one queue with success: `complete_batch.lua`.
struct Completer {
    conn: RedisConn,
    script: redis::Script,
    cap: u32,
}

impl Completer {
    /// One script call for `items` (all of `qk`'s queue), one answer each.
    async fn complete(
        &self,
        qk: &QueueKeys,
        items: &[&Completion<'_>],
    ) -> Result<Vec<Result<AttemptEnded>>> {
        let mut inv = self.script.prepare_invoke();
        inv.key(qk.active()).key(qk.done());
        for c in items {
            inv.key(qk.job(&c.id)).key(qk.events(&c.id));
        }
        inv.arg(self.cap);
        for c in items {
            inv.arg(c.id.to_string()).arg(c.token).arg(c.result);
        }
        let value: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let Value::Array(entries) = value else {
            return Err(Error::Corrupt("unexpected complete batch reply".into()));
        };
        if entries.len() != items.len() {
            return Err(Error::Corrupt(
                "complete batch reply of the wrong length".into(),
            ));
        }
        items
            .iter()
            .zip(&entries)
            .map(|(c, entry)| {
                let reply = Reply::of(entry)?;
                Ok(match reply.str(0) {
                    "ok" => Ok(AttemptEnded {
                        state: codec::state(reply.int(1)),
                        retry_in: None,
                        run_time: (reply.int(2) >= 0).then(|| reply.millis(2)),
                    }),
                    _ => Err(refusal(&reply, &c.id, "complete")),
                })
            })
            .collect()
    }
}

/// Single Completes, combined per queue.
impl Write for Completer {
    type Call = OwnedCompletion;
    type Answer = Result<AttemptEnded>;

    async fn write(
        &self,
        qk: &QueueKeys,
        calls: Vec<OwnedCompletion>,
    ) -> Result<Vec<Result<AttemptEnded>>> {
        let items: Vec<Completion<'_>> = calls
            .iter()
            .map(|c| Completion {
                id: c.id.clone(),
                token: &c.token,
                result: &c.result,
            })
            .collect();
        let refs: Vec<&Completion<'_>> = items.iter().collect();
        self.complete(qk, &refs).await
    }
}

impl RedisStore {
    /// Connects lazily: the first command dials, and a lost connection is
    /// re-established on a later command.
    pub fn new(url: &str, options: StoreOptions) -> Result<Self> {
        Self::with_tls(url, None, options)
    }

    /// [`RedisStore::new`] for a `rediss://` URL whose server is verified
    /// against `tls.root_cert` (else the system's roots), presenting
    /// `tls.client_tls` when Redis asks for a client certificate.
    pub fn with_tls(
        url: &str,
        tls: Option<redis::TlsCertificates>,
        options: StoreOptions,
    ) -> Result<Self> {
        // Never echo the URL: it may hold a password.
        let target = Target::parse(url)?;
        let (conn, subscriber) = match &target {
            Target::Single(url) => {
                let client = match tls {
                    Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(|e| Error::Startup(format!("invalid redis url: {e}")))?;
                let conn =
                    ConnectionManager::new_lazy_with_config(client.clone(), conn::manager_config())
                        .map_err(|e| Error::Startup(format!("redis connection: {e}")))?;
                (
                    RedisConn::single(conn),
                    Subscriber::Single(Box::new(client)),
                )
            }
            Target::Cluster(nodes) => {
                let (pushes, received) = mpsc::unbounded_channel();
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .retries(conn::CLUSTER_RETRIES)
                    .min_retry_wait(conn::CLUSTER_MIN_RETRY_WAIT_MS)
                    .max_retry_wait(conn::CLUSTER_MAX_RETRY_WAIT_MS)
                    .overall_response_timeout(Some(conn::RESPONSE_TIMEOUT));
                if let Some(certs) = tls {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| Error::Startup(format!("invalid redis cluster url: {e}")))?;
                let cluster = client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(conn::CONNECT_TIMEOUT)
                        .set_response_timeout(conn::RESPONSE_TIMEOUT),
                );
                (
                    RedisConn::cluster(cluster.clone()),
                    Subscriber::Cluster(Mutex::new(Some((cluster, received)))),
                )
            }
            Target::Sentinel { .. } => {
                let sentinel = Sentinel::new(&target, tls)?;
                (
                    RedisConn::sentinel(sentinel.clone()),
                    Subscriber::Sentinel(sentinel),
                )
            }
        };
        let conn = conn.waiting(options.wait_replicas);
        let keys = if target.is_cluster() {
            Keyspace::sharded(&options.key_prefix)
        } else {
            Keyspace::new(&options.key_prefix)
        };
        let scripts = Scripts::new(target.is_cluster());
        let writer = Writer {
            conn: conn.clone(),
            script: scripts.submit_batch.clone(),
            idempotency_ttl_ms: u64::try_from(options.idempotency_ttl.as_millis())
                .unwrap_or(u64::MAX),
        };
        let completer = Completer {
            conn: conn.clone(),
            script: scripts.complete_batch.clone(),
            cap: options.event_cap,
        };
        Ok(RedisStore {
            conn,
            subscriber,
            keys,
            scripts,
            submits: Combiner::new(writer),
            completes: Combiner::new(completer),
            options,
            lease_locks: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            registry_cache: Mutex::new((0, Vec::new())),
        })
    }

    /// The states of the jobs the duplicates among `created` were answered
    /// with, read in one round trip (none when there is no duplicate).
    async fn duplicate_states(
        &self,
        ns: &str,
        created: &[Created],
    ) -> Result<HashMap<String, JobState>> {
        let ids: Vec<JobId> = created
            .iter()
            .filter_map(|c| match c {
                Created::Duplicate { job_id } => JobId::parse(job_id).ok(),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.keys.queue(ns, id.queue()).job(id), "st");
        }
        let states: Vec<Option<i64>> = pipe.query_async(&mut self.conn()).await?;
        Ok(ids
            .iter()
            .zip(states)
            .map(|(id, st)| {
                (
                    id.to_string(),
                    st.map_or(JobState::Unspecified, codec::state),
                )
            })
            .collect())
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    fn cap(&self) -> u32 {
        self.options.event_cap
    }

    /// Records the queue for the maintenance passes (idempotent). A queue
    /// this process recorded recently is not recorded again, which saves a
    /// round trip per Submit; "recently" is short, so a registry lost with
    /// a Redis restart is restored within a minute.
    async fn register(&self, qk: &QueueKeys) -> Result<()> {
        const FRESH: Duration = Duration::from_secs(60);
        let fresh = lock(&self.registered)
            .get(qk.tag())
            .is_some_and(|at| at.elapsed() < FRESH);
        if !fresh {
            let _: i64 = self.conn().sadd(self.keys.registry(), qk.tag()).await?;
            let mut registered = lock(&self.registered);
            if registered.len() > 10_000 {
                registered.retain(|_, at| at.elapsed() < FRESH);
            }
            registered.insert(qk.tag().to_owned(), std::time::Instant::now());
        }
        Ok(())
    }

    fn lease_lock(&self, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.lease_locks);
        if locks.len() > 10_000 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(tag.to_owned()).or_default().clone()
    }

    /// One maintenance pass over a queue: promotes due scheduled jobs, reaps
    /// expired leases, deletes finished jobs past their retention. Safe in
    /// every replica at once: the scripts re-check each job on Redis's clock.
    async fn maintain_queue(&self, ns: &str, queue: &str) -> Result<Maintained> {
        let qk = self.keys.queue(ns, queue);
        // No caller waits for these writes: no WAIT.
        let mut conn = self.conn.without_wait();
        let mut out = Maintained::default();
        let batch = isize::try_from(MAINTENANCE_BATCH).unwrap_or(100) - 1;
        loop {
            type Scored = Vec<(String, f64)>;
            let ((secs, micros), sched, active, done): ((u64, u64), Scored, Scored, Scored) =
                redis::pipe()
                    .cmd("TIME")
                    .zrange_withscores(qk.sched(), 0, batch)
                    .zrange_withscores(qk.active(), 0, batch)
                    .zrange_withscores(qk.done(), 0, batch)
                    .query_async(&mut conn)
                    .await?;
            // Redis's clock only picks candidates; each script re-checks.
            let now = (secs * 1000 + micros / 1000) as f64;
            let due = |set: &[(String, f64)]| -> Vec<JobId> {
                set.iter()
                    .take_while(|(_, at)| *at <= now)
                    .filter_map(|(id, _)| JobId::parse(id).ok())
                    .collect()
            };
            let (to_promote, to_reap, to_expire) = (due(&sched), due(&active), due(&done));
            out.next_due_in_ms = sched
                .iter()
                .find(|(_, at)| *at > now)
                .map(|(_, at)| (*at - now) as u64);
            if !to_promote.is_empty() {
                let mut inv = self.scripts.promote.prepare_invoke();
                inv.key(qk.sched()).key(qk.ready()).key(qk.seq());
                with_job_keys(&mut inv, &qk, &to_promote);
                inv.arg(self.cap()).arg(qk.wake_channel()).arg(qk.tag());
                with_ids(&mut inv, &to_promote);
                let n: u64 = inv.invoke_async(&mut conn).await?;
                out.promoted += n;
            }
            if !to_reap.is_empty() {
                let expired = v1::JobError {
                    message: "lease expired: the worker stopped heartbeating".into(),
                    code: "lease_expired".into(),
                    details: String::new(),
                };
                let timed_out = v1::JobError {
                    message: "the attempt ran past the job's timeout".into(),
                    code: "timeout".into(),
                    details: String::new(),
                };
                let mut inv = self.scripts.reap.prepare_invoke();
                inv.key(qk.active())
                    .key(qk.sched())
                    .key(qk.dead())
                    .key(qk.done())
                    .key(qk.ready())
                    .key(qk.seq());
                with_job_keys(&mut inv, &qk, &to_reap);
                inv.arg(self.cap())
                    .arg(jitter())
                    .arg(expired.encode_to_vec())
                    .arg(timed_out.encode_to_vec())
                    .arg(qk.wake_channel())
                    .arg(qk.tag());
                with_ids(&mut inv, &to_reap);
                let reaped: Vec<String> = inv.invoke_async(&mut conn).await?;
                for id in &reaped {
                    tracing::info!(job_id = %id, "lease expired");
                }
                out.reaped += reaped.len() as u64;
            }
            if !to_expire.is_empty() {
                let mut inv = self.scripts.expire.prepare_invoke();
                inv.key(qk.done()).key(qk.dead());
                with_job_keys(&mut inv, &qk, &to_expire);
                inv.key(qk.all());
                with_ids(&mut inv, &to_expire);
                let n: u64 = inv.invoke_async(&mut conn).await?;
                out.expired += n;
            }
            let full = |v: &[JobId]| v.len() >= MAINTENANCE_BATCH;
            if !(full(&to_promote) || full(&to_reap) || full(&to_expire)) {
                return Ok(out);
            }
        }
    }
}

#[tonic::async_trait]
impl Store for RedisStore {
    fn schedules(&self) -> &dyn super::ScheduleStore {
        self
    }

    /// Every known `(namespace, queue)`.
    async fn queues(&self) -> Result<Vec<(String, String)>> {
        let tags: Vec<String> = self.conn().smembers(self.keys.registry()).await?;
        Ok(tags
            .into_iter()
            .filter_map(|t| {
                t.split_once(':')
                    .map(|(ns, q)| (ns.to_owned(), q.to_owned()))
            })
            .collect())
    }

    /// Answers once Redis does.
    async fn maintain(&self) -> Result<Maintenance> {
        let mut report = Maintenance::default();
        // The registry is read every REGISTRY_EVERY passes, not every pass:
        // an idle replica's cost is what its queues need, nothing more.
        let cached = {
            let mut cache = lock(&self.registry_cache);
            cache.0 = (cache.0 + 1) % REGISTRY_EVERY;
            (cache.0 != 1).then(|| cache.1.clone())
        };
        let mut queues = match cached {
            Some(queues) => queues,
            None => match self.queues().await {
                Ok(queues) => {
                    lock(&self.registry_cache).1 = queues.clone();
                    queues
                }
                Err(e) => {
                    lock(&self.registry_cache).0 = 0;
                    return Err(e);
                }
            },
        };
        for tag in lock(&self.registered).keys() {
            if let Some((ns, q)) = tag.split_once(':')
                && !queues.iter().any(|(n, x)| n == ns && x == q)
            {
                queues.push((ns.to_owned(), q.to_owned()));
            }
        }
        for (ns, queue) in queues {
            match self.maintain_queue(&ns, &queue).await {
                Ok(done) => {
                    if let Some(ms) = done.next_due_in_ms {
                        let due = Duration::from_millis(ms);
                        report.next_due = Some(report.next_due.map_or(due, |d| d.min(due)));
                    }
                    if done.reaped > 0 {
                        report.lease_expiries.push((ns, queue, done.reaped));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, namespace = %ns, %queue, "maintenance pass failed");
                }
            }
        }
        Ok(report)
    }

    async fn relay_signals(&self, signals: Arc<Signals>, shutdown: CancellationToken) {
        match &self.subscriber {
            Subscriber::Single(client) => {
                let client = (**client).clone();
                let source: conn::ClientSource =
                    Box::new(move || futures::future::ready(Ok(client.clone())).boxed());
                signals.relay(source, &self.keys, shutdown).await;
            }
            Subscriber::Sentinel(sentinel) => {
                let sentinel = sentinel.clone();
                let source: conn::ClientSource = Box::new(move || {
                    let sentinel = sentinel.clone();
                    async move { sentinel.master_client().await }.boxed()
                });
                signals.relay(source, &self.keys, shutdown).await;
            }
            Subscriber::Cluster(taken) => {
                let Some((cluster, pushes)) = lock(taken).take() else {
                    return;
                };
                signals
                    .relay_sharded(cluster, pushes, &self.keys, shutdown)
                    .await;
            }
        }
    }

    async fn events(
        &self,
        ns: &str,
        id: &JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::JobEvent>> {
        let qk = self.keys.queue(ns, id.queue());
        let (record, first, entries): (Vec<Option<Vec<u8>>>, Value, Value) = self
            .scripts
            .events
            .key(qk.job(id))
            .key(qk.events(id))
            .arg(format!("({after}-0"))
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await?;
        let job_id = id.to_string();
        let Some(in_record) = codec::record_events(&record, &job_id)? else {
            return Err(Error::NotFound(job_id));
        };
        let oldest_in_stream = codec::stream_events(&first, &job_id)?
            .first()
            .map(|e| e.seq);
        // The record's events (see prelude.lua) come first, unless the
        // stream's history was trimmed past them.
        let next_in_record = in_record.last().map_or(1, |e| e.seq + 1);
        let in_record = if oldest_in_stream.is_none_or(|seq| seq == next_in_record) {
            in_record
        } else {
            Vec::new()
        };
        let oldest = in_record.first().map(|e| e.seq).or(oldest_in_stream);
        if let Some(oldest) = oldest
            && oldest > after + 1
        {
            return Err(Error::OutOfRange(format!(
                "events after {after} of job {id} are no longer kept; the oldest kept is {oldest}"
            )));
        }
        let mut events: Vec<v1::JobEvent> =
            in_record.into_iter().filter(|e| e.seq > after).collect();
        events.extend(codec::stream_events(&entries, &job_id)?);
        events.truncate(limit);
        Ok(events)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Creates a job, or finds the one its idempotency key already made;
    /// written together with the queue's other waiting Submits
    /// (`submits.rs`).
    async fn submit(&self, ns: &str, job: &NewJob) -> Result<Submitted> {
        let qk = self.keys.queue(ns, job.queue());
        self.register(&qk).await?;
        let created = self.submits.call(&qk, job.clone()).await?;
        let states = self
            .duplicate_states(ns, std::slice::from_ref(&created))
            .await?;
        submitted(created, job.idempotency_key.as_deref(), &states)
    }

    /// Creates several jobs of one queue in one script call, all or none.
    async fn submit_batch(&self, ns: &str, jobs: &[NewJob]) -> Result<Vec<Submitted>> {
        let Some(first) = jobs.first() else {
            return Ok(Vec::new());
        };
        if jobs.iter().any(|j| j.queue() != first.queue()) {
            return Err(Error::InvalidArgument {
                field: "jobs",
                reason: "every job of a batch must name the same queue".into(),
            });
        }
        let qk = self.keys.queue(ns, first.queue());
        self.register(&qk).await?;
        match self.submits.inner().write(&qk, jobs, false).await? {
            Ok(created) => {
                let states = self.duplicate_states(ns, &created).await?;
                created
                    .into_iter()
                    .zip(jobs)
                    .map(|(c, job)| submitted(c, job.idempotency_key.as_deref(), &states))
                    .collect()
            }
            Err(conflict) => Err(Error::IdempotencyConflict {
                key: conflict
                    .index
                    .checked_sub(1)
                    .and_then(|i| jobs.get(i))
                    .and_then(|j| j.idempotency_key.clone())
                    .unwrap_or_default(),
                job_id: conflict.job_id,
            }),
        }
    }

    /// The job's record.
    async fn get(&self, ns: &str, id: &JobId) -> Result<v1::Job> {
        let qk = self.keys.queue(ns, id.queue());
        let fields: HashMap<String, Vec<u8>> = self.conn().hgetall(qk.job(id)).await?;
        Record::new(fields)
            .ok_or_else(|| Error::NotFound(id.to_string()))?
            .into_job(id.to_string())
    }

    /// Cancels a job; returns its state after the call and whether a cancel
    /// was requested.
    async fn cancel(&self, ns: &str, id: &JobId, reason: &str) -> Result<(JobState, bool)> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .scripts
            .cancel
            .key(qk.job(id))
            .key(qk.events(id))
            .key(qk.ready())
            .key(qk.sched())
            .key(qk.done())
            .arg(id.to_string())
            .arg(reason)
            .arg(self.cap())
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok((codec::state(reply.int(1)), reply.int(2) == 1)),
            _ => Err(refusal(&reply, id, "cancel")),
        }
    }

    /// Leases up to `max` ready jobs of one queue, at once (no waiting).
    async fn lease(
        &self,
        ns: &str,
        queue: &str,
        worker_id: &str,
        max: usize,
    ) -> Result<Vec<Leased>> {
        let qk = self.keys.queue(ns, queue);
        let lock = self.lease_lock(qk.tag());
        let _guard = lock.lock().await;
        let mut conn = self.conn();
        // Another replica may take the candidates first. Each lost race means
        // someone else made progress, so try again while the ready set is
        // not empty: an empty answer must mean an empty queue, or a long
        // poll would wait for a wake-up that already came.
        for _ in 0..LEASE_RACES {
            let limit = isize::try_from(max).unwrap_or(isize::MAX) - 1;
            let candidates: Vec<String> = conn.zrange(qk.ready(), 0, limit).await?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<JobId> = candidates
                .iter()
                .filter_map(|c| JobId::parse(c).ok())
                .collect();
            let nonce = format!("{:016x}", rand::random::<u64>());
            let mut inv = self.scripts.lease.prepare_invoke();
            inv.key(qk.ready()).key(qk.active());
            with_job_keys(&mut inv, &qk, &ids);
            inv.key(qk.paused());
            inv.arg(worker_id).arg(&nonce).arg(self.cap());
            with_ids(&mut inv, &ids);
            let value: Value = inv.invoke_async(&mut conn).await?;
            let entries = match value {
                Value::Array(entries) => entries,
                // A paused queue hands out nothing (PauseQueue).
                Value::BulkString(_) | Value::SimpleString(_) => return Ok(Vec::new()),
                _ => return Err(Error::Corrupt("unexpected lease reply".into())),
            };
            let jobs = entries
                .iter()
                .map(|e| {
                    let reply = Reply::of(e)?;
                    Ok(Leased {
                        job: reply.leased_job()?,
                        queue_wait: reply.millis(12),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
        }
        Ok(Vec::new())
    }

    async fn heartbeat(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        progress: Option<&v1::Progress>,
        checkpoint: Option<&[u8]>,
    ) -> Result<Heartbeat> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .scripts
            .heartbeat
            .key(qk.job(id))
            .key(qk.events(id))
            .key(qk.active())
            .arg(id.to_string())
            .arg(token)
            .arg(self.cap())
            .arg(if progress.is_some() { "1" } else { "0" })
            .arg(progress.map(Message::encode_to_vec).unwrap_or_default())
            .arg(if checkpoint.is_some() { "1" } else { "0" })
            .arg(checkpoint.unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok(Heartbeat {
                cancel_requested: reply.int(1) == 1,
                cancel_reason: reply.str(2).to_owned(),
                lease_expires_at_ms: u64::try_from(reply.int(3)).unwrap_or_default(),
            }),
            _ => Err(refusal(&reply, id, "heartbeat")),
        }
    }

    /// Combined with the queue's other Completes waiting (`combine.rs`),
    /// each checked against its own lease token.
    async fn complete(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        result: &[u8],
    ) -> Result<AttemptEnded> {
        let qk = self.keys.queue(ns, id.queue());
        let call = OwnedCompletion {
            id: id.clone(),
            token: token.to_owned(),
            result: result.to_vec(),
        };
        self.completes.call(&qk, call).await?
    }

    /// One script call per queue named (normally one).
    async fn complete_batch(
        &self,
        ns: &str,
        completions: &[Completion<'_>],
    ) -> Result<Vec<Result<AttemptEnded>>> {
        let mut out: Vec<Option<Result<AttemptEnded>>> = completions.iter().map(|_| None).collect();
        let mut queues: Vec<&str> = completions.iter().map(|c| c.id.queue()).collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            let qk = self.keys.queue(ns, queue);
            let group: Vec<usize> = (0..completions.len())
                .filter(|&i| completions[i].id.queue() == queue)
                .collect();
            let items: Vec<&Completion<'_>> = group.iter().map(|&i| &completions[i]).collect();
            let answers = self.completes.inner().complete(&qk, &items).await?;
            for (&i, answer) in group.iter().zip(answers) {
                out[i] = Some(answer);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Corrupt("no answer".into()))))
            .collect())
    }

    async fn fail(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        failure: &Failure,
    ) -> Result<AttemptEnded> {
        let qk = self.keys.queue(ns, id.queue());
        let retry_after_ms = failure
            .retry_after
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let checkpoint = failure.checkpoint.as_deref();
        let value: Value = self
            .scripts
            .fail
            .key(qk.job(id))
            .key(qk.events(id))
            .key(qk.active())
            .key(qk.sched())
            .key(qk.dead())
            .key(qk.done())
            .key(qk.ready())
            .key(qk.seq())
            .arg(id.to_string())
            .arg(token)
            .arg(self.cap())
            .arg(failure.error.encode_to_vec())
            .arg(if failure.retryable { "1" } else { "0" })
            .arg(retry_after_ms)
            .arg(jitter())
            .arg(if checkpoint.is_some() { "1" } else { "0" })
            .arg(checkpoint.unwrap_or_default())
            .arg(qk.wake_channel())
            .arg(qk.tag())
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => {
                let state = codec::state(reply.int(1));
                let retry_in = (state == JobState::Scheduled).then(|| reply.millis(2));
                Ok(AttemptEnded {
                    state,
                    retry_in,
                    run_time: Some(reply.millis(3)),
                })
            }
            _ => Err(refusal(&reply, id, "fail")),
        }
    }

    /// Hands a running job back without using up its attempt.
    async fn release(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        checkpoint: Option<&[u8]>,
    ) -> Result<JobState> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .scripts
            .release
            .key(qk.job(id))
            .key(qk.events(id))
            .key(qk.active())
            .key(qk.ready())
            .key(qk.seq())
            .key(qk.done())
            .arg(id.to_string())
            .arg(token)
            .arg(self.cap())
            .arg(if checkpoint.is_some() { "1" } else { "0" })
            .arg(checkpoint.unwrap_or_default())
            .arg(qk.wake_channel())
            .arg(qk.tag())
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok(codec::state(reply.int(1))),
            _ => Err(refusal(&reply, id, "release")),
        }
    }

    /// Puts a FAILED job back in its queue.
    async fn requeue(&self, ns: &str, id: &JobId) -> Result<JobState> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .scripts
            .requeue
            .key(qk.job(id))
            .key(qk.events(id))
            .key(qk.ready())
            .key(qk.dead())
            .key(qk.done())
            .key(qk.seq())
            .arg(id.to_string())
            .arg(self.cap())
            .arg(qk.wake_channel())
            .arg(qk.tag())
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok(codec::state(reply.int(1))),
            "stale" => Err(Error::FailedPrecondition(format!(
                "only a FAILED job can be re-queued; job {id} is {}",
                state_name(codec::state(reply.int(1)))
            ))),
            _ => Err(refusal(&reply, id, "requeue")),
        }
    }

    /// A page of a queue's dead letters, newest first. The cursor is the
    /// offset into the dead-letter set.
    async fn list_failed(
        &self,
        ns: &str,
        queue: &str,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<v1::Job>, Option<usize>)> {
        let qk = self.keys.queue(ns, queue);
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(limit).unwrap_or(isize::MAX));
        let ids: Vec<String> = self.conn().zrevrange(qk.dead(), start, stop).await?;
        let more = ids.len() > limit;
        let ids: Vec<JobId> = ids
            .iter()
            .take(limit)
            .filter_map(|id| JobId::parse(id).ok())
            .collect();
        if ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(qk.job(id));
        }
        let records: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut self.conn()).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(records) {
            if let Some(record) = Record::new(fields) {
                jobs.push(record.into_job(id.to_string())?);
            }
        }
        Ok((jobs, more.then_some(offset + limit)))
    }

    /// Counts a queue's jobs by state.
    async fn queue_stats(&self, ns: &str, queue: &str) -> Result<v1::GetQueueStatsResponse> {
        let qk = self.keys.queue(ns, queue);
        let (scheduled, queued, running, failed, finished, paused): (
            u64,
            u64,
            u64,
            u64,
            u64,
            bool,
        ) = redis::pipe()
            .zcard(qk.sched())
            .zcard(qk.ready())
            .zcard(qk.active())
            .zcard(qk.dead())
            .zcard(qk.done())
            .exists(qk.paused())
            .query_async(&mut self.conn())
            .await?;
        Ok(v1::GetQueueStatsResponse {
            queue: queue.to_owned(),
            scheduled,
            queued,
            running,
            failed,
            finished,
            paused,
        })
    }

    async fn list_jobs(&self, ns: &str, query: &super::ListQuery) -> Result<super::ListPage> {
        self.list_jobs_page(ns, query).await
    }

    async fn set_paused(&self, ns: &str, queue: &str, paused: bool) -> Result<()> {
        self.set_queue_paused(ns, queue, paused).await
    }

    async fn delete(&self, ns: &str, id: &JobId) -> Result<()> {
        self.delete_job(ns, id).await
    }

    async fn purge(&self, ns: &str, query: &super::ListQuery) -> Result<(u64, Option<String>)> {
        self.purge_page(ns, query).await
    }

    async fn requeue_failed(&self, ns: &str, queue: &str, limit: usize) -> Result<(u64, u64)> {
        self.requeue_dead(ns, queue, limit).await
    }
}

/// A Submit's answer from its job's outcome; `states` holds the states of
/// the jobs duplicates were answered with.
fn submitted(
    created: Created,
    idempotency_key: Option<&str>,
    states: &HashMap<String, JobState>,
) -> Result<Submitted> {
    match created {
        Created::New { job_id, state } => Ok(Submitted {
            job_id,
            deduplicated: false,
            state,
        }),
        Created::Duplicate { job_id } => Ok(Submitted {
            state: states
                .get(&job_id)
                .copied()
                .unwrap_or(JobState::Unspecified),
            job_id,
            deduplicated: true,
        }),
        Created::Conflict { job_id } => Err(Error::IdempotencyConflict {
            key: idempotency_key.unwrap_or_default().to_owned(),
            job_id,
        }),
    }
}

/// The job hash's initial fields (see prelude.lua), as name/value pairs.
pub(super) fn job_fields(job: &NewJob) -> Vec<(&'static str, Cow<'_, [u8]>)> {
    let num = |n: &dyn ToString| Cow::Owned(n.to_string().into_bytes());
    let mut fields = vec![
        ("k", Cow::Borrowed(job.kind.as_bytes())),
        (
            "o",
            Cow::Owned(codec::Options::of(job).to_string().into_bytes()),
        ),
    ];
    // A payload over Redis's hash-max-listpack-value (64 bytes by default)
    // would turn the whole record into a hash table, several times larger
    // and slower: up to PAYLOAD_CHUNKS pieces of at most 64 bytes keep it
    // a listpack (see prelude.lua).
    let chunks = job.payload.len().div_ceil(codec::PAYLOAD_CHUNK);
    if chunks > 1 && chunks <= codec::PAYLOAD_CHUNKS {
        fields.push(("pn", num(&chunks)));
        for (i, chunk) in job.payload.chunks(codec::PAYLOAD_CHUNK).enumerate() {
            fields.push((codec::PAYLOAD_FIELDS[i], Cow::Borrowed(chunk)));
        }
    } else {
        fields.push(("p", Cow::Borrowed(job.payload.as_slice())));
    }
    if let Some(key) = &job.idempotency_key {
        fields.push(("ik", Cow::Borrowed(key.as_bytes())));
    }
    if !job.labels.is_empty() {
        fields.push(("lb", Cow::Owned(encode_map(&job.labels))));
    }
    if !job.trace_context.is_empty() {
        fields.push(("tc", Cow::Owned(encode_map(&job.trace_context))));
    }
    fields
}

fn with_job_keys(inv: &mut redis::ScriptInvocation<'_>, qk: &QueueKeys, ids: &[JobId]) {
    for id in ids {
        inv.key(qk.job(id)).key(qk.events(id));
    }
}

fn with_ids(inv: &mut redis::ScriptInvocation<'_>, ids: &[JobId]) {
    for id in ids {
        inv.arg(id.to_string());
    }
}
