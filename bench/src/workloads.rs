//! The workloads. Jobs are no-ops with 100-byte payloads; workers are the
//! Rust worker SDK in this process; every client call goes over real gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use jobctl_proto::v1::admin_service_client::AdminServiceClient;
use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::worker_service_client::WorkerServiceClient;
use jobctl_proto::v1::{
    CompleteBatchRequest, CompleteRequest, EventKind, JobFilter, JobState, LeaseRequest,
    ListJobsRequest, ListOrder, SubmitBatchRequest, SubmitRequest, WatchProgressRequest,
};
use jobctl_worker::{JobContext, Worker};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::Options;
use crate::env::{Env, calls_delta};
use crate::report::{Metric, histogram, quantile_ms};

type Progress<'a> = &'a dyn Fn(&str);
type Result<T> = std::result::Result<T, String>;

const PAYLOAD: [u8; 100] = [b'x'; 100];
const KIND: &str = "noop";

fn job(queue: &str) -> SubmitRequest {
    SubmitRequest {
        queue: queue.into(),
        kind: KIND.into(),
        payload: PAYLOAD.to_vec(),
        ..SubmitRequest::default()
    }
}

fn err(what: &str) -> impl Fn(tonic::Status) -> String + '_ {
    move |s| format!("{what}: {:?} {}", s.code(), s.message())
}

/// Submits `n` jobs to `queue` in batches of 1,000, four calls at a time.
async fn preload(env: &Env, queue: &str, n: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let mut client = JobServiceClient::new(env.channel());
        let (next, queue) = (next.clone(), queue.to_owned());
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(1000, Ordering::Relaxed);
                if start >= n {
                    return Ok(());
                }
                let jobs = (start..n.min(start + 1000)).map(|_| job(&queue)).collect();
                client
                    .submit_batch(SubmitBatchRequest { jobs })
                    .await
                    .map_err(err("preload"))?;
            }
        });
    }
    join_all(tasks).await
}

async fn join_all(mut tasks: JoinSet<Result<()>>) -> Result<()> {
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("task: {e}"))??;
    }
    Ok(())
}

/// SDK workers running no-op jobs of `queue` until `stop`.
fn start_workers(
    env: &Env,
    queue: &str,
    count: usize,
    concurrency: usize,
    lease_wait: Duration,
    stop: &CancellationToken,
) -> Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    for i in 0..count {
        let worker = Worker::builder(env.endpoint.clone())
            .worker_id(format!("bench-{queue}-{i}"))
            .queues([queue])
            .concurrency(concurrency)
            .lease_wait(lease_wait)
            .shutdown_grace(Duration::from_secs(5))
            .handler(KIND, |_ctx: JobContext| async { Ok(Vec::new()) })
            .build()
            .map_err(|e| format!("worker: {e}"))?;
        let stop = stop.clone();
        set.spawn(async move {
            let _ = worker.run(stop.cancelled_owned()).await;
        });
    }
    Ok(set)
}

async fn wait_finished(env: &Env, queue: &str, n: usize, limit: Duration) -> Result<()> {
    let mut admin = AdminServiceClient::new(env.channel());
    let deadline = Instant::now() + limit;
    while env.finished(&mut admin, queue).await < n as u64 {
        if Instant::now() > deadline {
            return Err(format!("{queue}: {n} jobs did not finish within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Single submits from `--concurrency` clients, then batched submits.
pub async fn submit(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let env = Env::start(o).await?;
    let channels: Vec<Channel> = (0..o.concurrency.clamp(1, 8))
        .map(|_| env.channel())
        .collect();
    let mut single = Metric::new("submit", "single_jobs_per_sec", "jobs/s").target(">= 20,000");
    let mut batched = Metric::new("submit", "batch_jobs_per_sec", "jobs/s").target(">= 100,000");
    let mut cpu = CpuPerJob::new("submit", &["single", "batch"]);
    for run in 0..o.runs {
        let n = o.jobs.unwrap_or(20_000);
        let queue = format!("submit-{run}");
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let cpu_before = env.cpu().await;
        let started = Instant::now();
        for i in 0..o.concurrency.max(1) {
            let mut client = JobServiceClient::new(channels[i % channels.len()].clone());
            let (next, queue) = (next.clone(), queue.clone());
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    client.submit(job(&queue)).await.map_err(err("submit"))?;
                }
                Ok(())
            });
        }
        join_all(tasks).await?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let cpu_text = cpu.add(0, n, cpu_before, env.cpu().await);
        progress(&format!(
            "submit run {run}: {rate:.0} single submits/s; {cpu_text}"
        ));
        single.values.push(rate);

        let n = o.jobs.unwrap_or(100_000);
        let queue = format!("submit-batch-{run}");
        let cpu_before = env.cpu().await;
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let size = o.batch_size.max(1);
        for i in 0..4 {
            let mut client = JobServiceClient::new(channels[i % channels.len()].clone());
            let (next, queue) = (next.clone(), queue.clone());
            tasks.spawn(async move {
                loop {
                    let start = next.fetch_add(size, Ordering::Relaxed);
                    if start >= n {
                        return Ok(());
                    }
                    let jobs = (start..n.min(start + size)).map(|_| job(&queue)).collect();
                    client
                        .submit_batch(SubmitBatchRequest { jobs })
                        .await
                        .map_err(err("submit batch"))?;
                }
            });
        }
        join_all(tasks).await?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let cpu_text = cpu.add(1, n, cpu_before, env.cpu().await);
        progress(&format!(
            "submit run {run}: {rate:.0} batched submits/s; {cpu_text}"
        ));
        batched.values.push(rate);
    }
    let mut out = vec![single, batched];
    out.extend(cpu.metrics());
    Ok(out)
}

/// One producer submitting one job at a time, as a web request does: the
/// rate, each call's latency, and CPU per job.
pub async fn submit_seq(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let env = Env::start(o).await?;
    let mut client = JobServiceClient::new(env.channel());
    let mut rate = Metric::new("submit_seq", "jobs_per_sec", "jobs/s").target(">= 6,000");
    let mut p50 = Metric::new("submit_seq", "p50", "ms");
    let mut p99 = Metric::new("submit_seq", "p99", "ms").target("<= 0.5");
    let mut p999 = Metric::new("submit_seq", "p99.9", "ms");
    let mut cpu = CpuPerJob::new("submit_seq", &["single"]);
    // The floor: one gRPC round trip through the same server (a health
    // check: no store) plus one Redis round trip (PING) from this process.
    let mut grpc_floor = Metric::new("submit_seq", "floor_grpc_health_p50", "ms");
    let mut redis_floor = Metric::new("submit_seq", "floor_redis_ping_p50", "ms");
    let mut health = tonic_health::pb::health_client::HealthClient::new(env.channel());
    let mut redis = env.redis().await;
    for run in 0..o.runs {
        let n = o.jobs.unwrap_or(20_000);
        let (mut hg, mut hr) = (histogram(), histogram());
        for _ in 0..n.min(5_000) {
            let call = Instant::now();
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map_err(err("health check"))?;
            let _ = hg.record(call.elapsed().as_micros() as u64);
            if let Some(conn) = redis.as_mut() {
                let call = Instant::now();
                let _: redis::RedisResult<String> = redis::cmd("PING").query_async(conn).await;
                let _ = hr.record(call.elapsed().as_micros() as u64);
            }
        }
        grpc_floor.values.push(quantile_ms(&hg, 0.5));
        if redis.is_some() {
            redis_floor.values.push(quantile_ms(&hr, 0.5));
        }
        let queue = format!("submit-seq-{run}");
        for _ in 0..200.min(n) {
            client.submit(job(&queue)).await.map_err(err("submit"))?;
        }
        let mut h = histogram();
        let cpu_before = env.cpu().await;
        let started = Instant::now();
        for _ in 0..n {
            let call = Instant::now();
            client.submit(job(&queue)).await.map_err(err("submit"))?;
            let _ = h.record(call.elapsed().as_micros() as u64);
        }
        let r = n as f64 / started.elapsed().as_secs_f64();
        let cpu_text = cpu.add(0, n, cpu_before, env.cpu().await);
        progress(&format!(
            "submit-seq run {run}: {r:.0} jobs/s, p50 {:.3} ms, p99 {:.3} ms; {cpu_text}",
            quantile_ms(&h, 0.5),
            quantile_ms(&h, 0.99)
        ));
        rate.values.push(r);
        p50.values.push(quantile_ms(&h, 0.5));
        p99.values.push(quantile_ms(&h, 0.99));
        p999.values.push(quantile_ms(&h, 0.999));
    }
    let mut out = vec![rate, p50, p99, p999, grpc_floor];
    if !redis_floor.values.is_empty() {
        out.push(redis_floor);
    }
    out.extend(cpu.metrics());
    Ok(out)
}

/// A preloaded queue drained by `--loops` plain loops on the raw contract,
/// each on its own connection: Lease up to 100, then one `Complete` per
/// job in turn; then the same with one `CompleteBatch` per lease.
pub async fn workers(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let n = o.jobs.unwrap_or(100_000);
    let env = Env::start(o).await?;
    let mut single = Metric::new("workers", "complete_jobs_per_sec", "jobs/s").target(">= 30,000");
    let mut batched =
        Metric::new("workers", "complete_batch_jobs_per_sec", "jobs/s").target(">= 50,000");
    let mut cpu = CpuPerJob::new("workers", &["complete", "complete_batch"]);
    for run in 0..o.runs {
        for (phase, batch) in [(0, false), (1, true)] {
            let queue = format!("workers-{run}-{phase}");
            preload(&env, &queue, n).await?;
            let done = Arc::new(AtomicUsize::new(0));
            let cpu_before = env.cpu().await;
            let started = Instant::now();
            let mut tasks = JoinSet::new();
            for i in 0..o.loops.max(1) {
                let mut client = WorkerServiceClient::new(env.channel());
                let (done, queue) = (done.clone(), queue.clone());
                tasks.spawn(async move {
                    plain_worker(&mut client, &format!("loop-{i}"), &queue, n, &done, batch).await
                });
            }
            join_all(tasks).await?;
            let r = n as f64 / started.elapsed().as_secs_f64();
            let cpu_text = cpu.add(phase, n, cpu_before, env.cpu().await);
            let how = if batch { "CompleteBatch" } else { "Complete" };
            progress(&format!(
                "workers run {run}: {r:.0} jobs/s with {how}; {cpu_text}"
            ));
            if batch {
                batched.values.push(r);
            } else {
                single.values.push(r);
            }
        }
    }
    let mut out = vec![single, batched];
    out.extend(cpu.metrics());
    Ok(out)
}

/// One loop of the workers workload, until `n` jobs of the queue are done.
async fn plain_worker(
    client: &mut WorkerServiceClient<Channel>,
    worker_id: &str,
    queue: &str,
    n: usize,
    done: &AtomicUsize,
    batch: bool,
) -> Result<()> {
    while done.load(Ordering::Relaxed) < n {
        let jobs = client
            .lease(LeaseRequest {
                worker_id: worker_id.into(),
                queues: vec![queue.into()],
                max_jobs: 100,
                wait: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
            })
            .await
            .map_err(err("lease"))?
            .into_inner()
            .jobs;
        let count = jobs.len();
        if batch {
            let completions = jobs
                .into_iter()
                .map(|j| CompleteRequest {
                    job_id: j.job_id,
                    lease_token: j.lease_token,
                    result: Vec::new(),
                })
                .collect();
            client
                .complete_batch(CompleteBatchRequest {
                    completions,
                    ..CompleteBatchRequest::default()
                })
                .await
                .map_err(err("complete batch"))?;
        } else {
            for j in jobs {
                client
                    .complete(CompleteRequest {
                        job_id: j.job_id,
                        lease_token: j.lease_token,
                        result: Vec::new(),
                    })
                    .await
                    .map_err(err("complete"))?;
            }
        }
        done.fetch_add(count, Ordering::Relaxed);
    }
    Ok(())
}

/// CPU microseconds per job of Redis and of the bench process (the
/// in-process jobctl server and the clients or workers), for named phases
/// of a workload; the load-independent side of a throughput number.
struct CpuPerJob {
    redis: Vec<Metric>,
    jobctl: Vec<Metric>,
}

impl CpuPerJob {
    fn new(workload: &str, phases: &[&str]) -> Self {
        let metrics = |who: &str| {
            phases
                .iter()
                .map(|p| Metric::new(workload, &format!("{p}_{who}_cpu_us_per_job"), "us"))
                .collect()
        };
        CpuPerJob {
            redis: metrics("redis"),
            jobctl: metrics("jobctl_and_clients"),
        }
    }

    /// Adds a phase's run of `n` jobs; returns it as text.
    fn add(
        &mut self,
        phase: usize,
        n: usize,
        before: (Option<f64>, Option<f64>),
        after: (Option<f64>, Option<f64>),
    ) -> String {
        let per_job =
            |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b) * 1e6 / n as f64);
        let (redis, jobctl) = (per_job(after.0, before.0), per_job(after.1, before.1));
        self.redis[phase].values.extend(redis);
        self.jobctl[phase].values.extend(jobctl);
        format!(
            "CPU per job: redis {:.1} us, jobctl and clients {:.1} us",
            redis.unwrap_or(f64::NAN),
            jobctl.unwrap_or(f64::NAN)
        )
    }

    fn metrics(self) -> impl Iterator<Item = Metric> {
        self.redis
            .into_iter()
            .chain(self.jobctl)
            .filter(|m| !m.values.is_empty())
    }
}

/// A preloaded queue drained by SDK workers; Redis commands per job.
pub async fn drain(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let n = o.jobs.unwrap_or(100_000);
    let env = Env::start(o).await?;
    let mut rate = Metric::new("drain", "jobs_per_sec", "jobs/s").target(">= 20,000");
    let mut per_job = Metric::new("drain", "redis_commands_per_job", "commands");
    let mut by_command: BTreeMap<String, Metric> = BTreeMap::new();
    let mut redis_cpu = Metric::new("drain", "redis_cpu_us_per_job", "us");
    let mut script_time = Metric::new("drain", "redis_script_us_per_job", "us");
    let mut jobctl_cpu = Metric::new("drain", "jobctl_and_worker_cpu_us_per_job", "us");
    for run in 0..o.runs {
        let queue = format!("drain-{run}");
        preload(&env, &queue, n).await?;
        let before = env.command_calls().await;
        let usec_before = env.command_usec().await;
        let cpu_before = env.cpu().await;
        let stop = CancellationToken::new();
        let started = Instant::now();
        let workers = start_workers(
            &env,
            &queue,
            o.workers.max(1),
            o.worker_concurrency.max(1),
            Duration::from_secs(1),
            &stop,
        )?;
        let limit = Duration::from_secs(60 + (n / 200) as u64);
        let finished = wait_finished(&env, &queue, n, limit).await;
        let elapsed = started.elapsed();
        let after = env.command_calls().await;
        let usec_after = env.command_usec().await;
        let cpu_after = env.cpu().await;
        stop.cancel();
        workers.join_all().await;
        finished?;
        let r = n as f64 / elapsed.as_secs_f64();
        rate.values.push(r);
        let us_per_job =
            |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b) * 1e6 / n as f64);
        let r_cpu = us_per_job(cpu_after.0, cpu_before.0);
        let j_cpu = us_per_job(cpu_after.1, cpu_before.1);
        progress(&format!(
            "drain run {run}: {r:.0} jobs/s in {:.2} s; CPU per job: redis {:.1} us, jobctl and workers {:.1} us",
            elapsed.as_secs_f64(),
            r_cpu.unwrap_or(f64::NAN),
            j_cpu.unwrap_or(f64::NAN)
        ));
        redis_cpu.values.extend(r_cpu);
        let usec = calls_delta(&usec_before, &usec_after);
        if let Some(evalsha) = usec.get("evalsha") {
            script_time.values.push(*evalsha as f64 / n as f64);
        }
        jobctl_cpu.values.extend(j_cpu);
        let delta = calls_delta(&before, &after);
        if !delta.is_empty() {
            per_job
                .values
                .push(delta.values().sum::<u64>() as f64 / n as f64);
            for (command, calls) in delta {
                by_command
                    .entry(command.clone())
                    .or_insert_with(|| {
                        Metric::new("drain", &format!("redis_{command}_per_job"), "calls")
                    })
                    .values
                    .push(calls as f64 / n as f64);
            }
        }
    }
    let mut out = vec![rate];
    for m in [per_job, redis_cpu, script_time, jobctl_cpu] {
        if !m.values.is_empty() {
            out.push(m);
        }
    }
    out.extend(by_command.into_values().filter(|m| m.median() >= 0.01));
    Ok(out)
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Submit → a watcher sees SUCCEEDED, one job at a time.
pub async fn roundtrip(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let n = o.jobs.unwrap_or(2_000);
    let env = Env::start(o).await?;
    let stop = CancellationToken::new();
    let workers = start_workers(&env, "rt", 1, 8, Duration::from_secs(20), &stop)?;
    let mut client = JobServiceClient::new(env.channel());
    let mut p50 = Metric::new("roundtrip", "p50", "ms");
    let mut p99 = Metric::new("roundtrip", "p99", "ms").target("<= 5");
    let mut p999 = Metric::new("roundtrip", "p99.9", "ms");
    for run in 0..o.runs {
        let mut h = histogram();
        let warmup = 50.min(n / 10);
        for i in 0..n + warmup {
            let started = Instant::now();
            let id = client
                .submit(job("rt"))
                .await
                .map_err(err("submit"))?
                .into_inner()
                .job_id;
            let mut stream = client
                .watch_progress(WatchProgressRequest {
                    job_id: id,
                    after_seq: 0,
                })
                .await
                .map_err(err("watch"))?
                .into_inner();
            loop {
                let Some(msg) = stream.message().await.map_err(err("watch stream"))? else {
                    return Err("a watch ended before the job did".into());
                };
                let event = msg.event.unwrap_or_default();
                if event.kind() == EventKind::StateChanged && event.state() == JobState::Succeeded {
                    break;
                }
            }
            if i >= warmup {
                let _ = h.record(started.elapsed().as_micros() as u64);
            }
            // Read the stream to its end (it ends after the terminal event)
            // rather than resetting it.
            while let Ok(Some(_)) = stream.message().await {}
        }
        progress(&format!(
            "round trip run {run}: p50 {:.2} ms, p99 {:.2} ms",
            quantile_ms(&h, 0.5),
            quantile_ms(&h, 0.99)
        ));
        p50.values.push(quantile_ms(&h, 0.5));
        p99.values.push(quantile_ms(&h, 0.99));
        p999.values.push(quantile_ms(&h, 0.999));
    }
    stop.cancel();
    workers.join_all().await;
    Ok(vec![p50, p99, p999])
}

/// One job sends progress at 50 Hz to many watchers.
pub async fn fanout(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    const HZ: u64 = 50;
    let duration = o.duration_or(Duration::from_secs(5));
    let updates = (duration.as_secs_f64() * HZ as f64).ceil().max(1.0) as u64;
    let env = Env::start(o).await?;
    let gate = Arc::new(Semaphore::new(0));
    let stop = CancellationToken::new();
    let worker = {
        let gate = gate.clone();
        Worker::builder(env.endpoint.clone())
            .queues(["fan"])
            .progress_interval(Duration::from_millis(5))
            .handler("fan", move |ctx: JobContext| {
                let gate = gate.clone();
                async move {
                    let _ = gate.acquire().await.map(|p| p.forget());
                    let mut tick = tokio::time::interval(Duration::from_millis(1000 / HZ));
                    for i in 0..updates {
                        tick.tick().await;
                        let percent = (i + 1) as f64 * 100.0 / updates as f64;
                        ctx.set_progress(percent, now_micros().to_string());
                    }
                    Ok(Vec::new())
                }
            })
            .build()
            .map_err(|e| format!("worker: {e}"))?
    };
    let worker_task = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    let mut out = Vec::new();
    for &watchers in &o.watchers {
        let mut p50 = Metric::new("fanout", &format!("p50_{watchers}_watchers"), "ms");
        let mut p99 = Metric::new("fanout", &format!("p99_{watchers}_watchers"), "ms");
        if watchers >= 10_000 {
            p99 = p99.target("<= 50");
        }
        let mut delivered = Metric::new("fanout", &format!("delivered_{watchers}_watchers"), "%");
        let mut clients = Metric::new(
            "fanout",
            &format!("redis_clients_added_{watchers}_watchers"),
            "connections",
        )
        .target("0 (no growth)");
        for run in 0..o.runs {
            let clients_before = env.info_u64("clients", "connected_clients").await;
            let mut client = JobServiceClient::new(env.channel());
            let id = client
                .submit(SubmitRequest {
                    kind: "fan".into(),
                    ..job("fan")
                })
                .await
                .map_err(err("submit"))?
                .into_inner()
                .job_id;
            let ready = Arc::new(AtomicUsize::new(0));
            let channels: Vec<Channel> =
                (0..watchers.div_ceil(100)).map(|_| env.channel()).collect();
            let mut tasks = JoinSet::new();
            for i in 0..watchers {
                let mut client = JobServiceClient::new(channels[i % channels.len()].clone());
                let (ready, id) = (ready.clone(), id.clone());
                tasks.spawn(async move {
                    // Latencies in µs, added to one histogram at the end: a
                    // histogram per stream (280 KB each) would cost the
                    // client 2.8 GB of page faults at 10,000 watchers.
                    let mut h: Vec<u64> = Vec::with_capacity(updates as usize);
                    let mut count = 0u64;
                    let stream = client
                        .watch_progress(WatchProgressRequest {
                            job_id: id,
                            after_seq: 0,
                        })
                        .await;
                    let Ok(stream) = stream else {
                        ready.fetch_add(1, Ordering::Relaxed);
                        return (h, count);
                    };
                    let mut stream = stream.into_inner();
                    let mut first = true;
                    while let Ok(Some(msg)) = stream.message().await {
                        if first {
                            ready.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        }
                        let event = msg.event.unwrap_or_default();
                        if event.kind() == EventKind::Progress
                            && let Some(sent) =
                                event.progress.and_then(|p| p.message.parse::<u128>().ok())
                        {
                            h.push(now_micros().saturating_sub(sent) as u64);
                            count += 1;
                        }
                    }
                    (h, count)
                });
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while ready.load(Ordering::Relaxed) < watchers {
                if Instant::now() > deadline {
                    return Err(format!("{watchers} watchers did not all start"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let clients_during = env.info_u64("clients", "connected_clients").await;
            gate.add_permits(1);
            let mut all: Histogram<u64> = histogram();
            let mut count = 0;
            while let Some(done) = tasks.join_next().await {
                let (h, c) = done.map_err(|e| format!("watcher: {e}"))?;
                for micros in h {
                    let _ = all.record(micros);
                }
                count += c;
            }
            let share = count as f64 * 100.0 / (watchers as u64 * updates) as f64;
            progress(&format!(
                "fan-out to {watchers} run {run}: p50 {:.1} ms, p99 {:.1} ms, {share:.0}% of updates delivered",
                quantile_ms(&all, 0.5),
                quantile_ms(&all, 0.99)
            ));
            p50.values.push(quantile_ms(&all, 0.5));
            p99.values.push(quantile_ms(&all, 0.99));
            delivered.values.push(share);
            if let (Some(b), Some(d)) = (clients_before, clients_during) {
                clients.values.push(d as f64 - b as f64);
            }
        }
        out.extend([p50, p99, delivered]);
        if !clients.values.is_empty() {
            out.push(clients);
        }
    }
    stop.cancel();
    let _ = worker_task.await;
    Ok(out)
}

/// Lease-then-complete `samples` times; the Lease call times in ms.
async fn lease_times(env: &Env, queue: &str, samples: usize) -> Result<Histogram<u64>> {
    let mut worker = WorkerServiceClient::new(env.channel());
    let mut h = histogram();
    for _ in 0..samples {
        let started = Instant::now();
        let jobs = worker
            .lease(LeaseRequest {
                worker_id: "bench-lease".into(),
                queues: vec![queue.into()],
                max_jobs: 1,
                wait: None,
            })
            .await
            .map_err(err("lease"))?
            .into_inner()
            .jobs;
        let _ = h.record(started.elapsed().as_micros() as u64);
        for j in jobs {
            worker
                .complete(CompleteRequest {
                    job_id: j.job_id,
                    lease_token: j.lease_token,
                    result: Vec::new(),
                })
                .await
                .map_err(err("complete"))?;
        }
    }
    Ok(h)
}

/// Redis memory per queued job; Lease time deep vs shallow.
pub async fn memory(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let n = o.jobs.unwrap_or(1_000_000);
    let env = Env::start(o).await?;
    // Warm up the server's connection and scripts.
    preload(&env, "mem-small", 1_000).await?;
    let before = env.info_u64("memory", "used_memory").await;
    let started = Instant::now();
    preload(&env, "mem", n).await?;
    progress(&format!(
        "memory: {n} jobs queued in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let after = env.info_u64("memory", "used_memory").await;
    let mut out = Vec::new();
    if let (Some(b), Some(a)) = (before, after) {
        let per_job = a.saturating_sub(b) as f64 / n as f64;
        progress(&format!("memory: {per_job:.0} bytes per queued job"));
        out.push(
            Metric::new("memory", "redis_bytes_per_queued_job", "bytes")
                .target("<= 600")
                .with(per_job),
        );
    }
    let mut shallow = Metric::new("memory", "lease_p50_at_1000", "ms");
    let mut deep = Metric::new("memory", &format!("lease_p50_at_{n}"), "ms");
    let mut ratio = Metric::new("memory", "lease_p50_deep_over_shallow", "x").target("~1 (flat)");
    for run in 0..o.runs {
        let samples = 200.min(n / 2).max(1);
        let s = lease_times(&env, "mem-small", samples).await?;
        let d = lease_times(&env, "mem", samples).await?;
        let (s, d) = (quantile_ms(&s, 0.5), quantile_ms(&d, 0.5));
        progress(&format!(
            "memory run {run}: lease p50 {s:.3} ms at 1,000, {d:.3} ms at {n}"
        ));
        shallow.values.push(s);
        deep.values.push(d);
        ratio.values.push(d / s);
    }
    out.extend([shallow, deep, ratio]);
    Ok(out)
}

/// Redis commands/s while workers long-poll an empty queue.
pub async fn idle(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let duration = o.duration_or(Duration::from_secs(30));
    let env = Env::start(o).await?;
    let stop = CancellationToken::new();
    let workers = start_workers(
        &env,
        "idle",
        o.idle_workers.max(1),
        1,
        Duration::from_secs(20),
        &stop,
    )?;
    // One job first, so the queue is known and maintained like any other.
    preload(&env, "idle", 1).await?;
    wait_finished(&env, "idle", 1, Duration::from_secs(30)).await?;
    // Let every worker connect and settle into its long poll.
    tokio::time::sleep(Duration::from_secs(2).min(duration * 2)).await;
    let mut rate = Metric::new("idle", "redis_commands_per_sec", "commands/s").target("<= 5");
    for run in 0..o.runs {
        let before = env.command_calls().await;
        tokio::time::sleep(duration).await;
        let after = env.command_calls().await;
        let delta = calls_delta(&before, &after);
        let per_sec = delta.values().sum::<u64>() as f64 / duration.as_secs_f64();
        progress(&format!(
            "idle run {run}: {per_sec:.2} Redis commands/s with {} workers waiting ({delta:?})",
            o.idle_workers
        ));
        rate.values.push(per_sec);
    }
    stop.cancel();
    workers.join_all().await;
    Ok(vec![rate])
}

/// ListJobs page times (50 jobs a page) with `--jobs` (1,000,000) jobs in
/// one queue, a few hundred of them running.
pub async fn list(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    let n = o.jobs.unwrap_or(1_000_000);
    let env = Env::start(o).await?;
    let started = Instant::now();
    preload(&env, "list", n / 2).await?;
    let middle = SystemTime::now();
    preload(&env, "list", n - n / 2).await?;
    progress(&format!(
        "list: {n} jobs queued in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let mut worker = WorkerServiceClient::new(env.channel());
    worker
        .lease(LeaseRequest {
            worker_id: "bench-list".into(),
            queues: vec!["list".into()],
            max_jobs: 300,
            wait: None,
        })
        .await
        .map_err(err("lease"))?;
    let mut admin = AdminServiceClient::new(env.channel());
    let request = |filter: JobFilter| ListJobsRequest {
        queue: "list".into(),
        filter: Some(filter),
        order: ListOrder::NewestFirst.into(),
        page_size: 50,
        page_token: String::new(),
    };
    let cases = [
        ("newest_page", request(JobFilter::default())),
        (
            "page_before_the_middle",
            request(JobFilter {
                created_before: Some(prost_types::Timestamp::from(middle)),
                ..JobFilter::default()
            }),
        ),
        (
            "running_page",
            request(JobFilter {
                states: vec![JobState::Running.into()],
                ..JobFilter::default()
            }),
        ),
        (
            "no_match_scan_page",
            request(JobFilter {
                kind: "nothing-has-this-kind".into(),
                ..JobFilter::default()
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, req) in cases {
        let mut metric = Metric::new("list", &format!("{name}_p50_at_{n}"), "ms");
        for run in 0..o.runs {
            let mut h = histogram();
            let mut listed = 0;
            for _ in 0..50 {
                let t = Instant::now();
                let page = admin
                    .list_jobs(req.clone())
                    .await
                    .map_err(err("list jobs"))?
                    .into_inner();
                let _ = h.record(t.elapsed().as_micros() as u64);
                listed = page.jobs.len();
            }
            let p50 = quantile_ms(&h, 0.5);
            progress(&format!(
                "list run {run}: {name} p50 {p50:.3} ms ({listed} jobs a page)"
            ));
            metric.values.push(p50);
        }
        out.push(metric);
    }
    Ok(out)
}

/// Single Submits, then a drain by SDK workers, over `--queues` queues on a
/// Redis Cluster of one master and of three (no replicas): jobs/s and each
/// master's CPU per job. On one machine the shards share its cores, so the
/// throughput says little; the CPU per job on each shard shows the load
/// spread (each of three carries about a third).
pub async fn shards(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    use jobctl_tests::{ClusterOptions, RedisCluster};
    let n = o.jobs.unwrap_or(30_000);
    let mut out = Vec::new();
    for masters in [1usize, 3] {
        let cluster = RedisCluster::start_with(ClusterOptions {
            masters,
            replicas_per_master: 0,
            ..ClusterOptions::default()
        })
        .await;
        let options = Options {
            redis_url: Some(cluster.url()),
            ..o.clone()
        };
        let env = Env::start(&options).await?;
        let queues: Vec<String> = (0..o.queues.max(1)).map(|i| format!("sh-{i}")).collect();
        let label = format!("{masters}_shard{}", if masters == 1 { "" } else { "s" });
        let mut submit_rate =
            Metric::new("shards", &format!("submit_jobs_per_sec_{label}"), "jobs/s");
        let mut drain_rate =
            Metric::new("shards", &format!("drain_jobs_per_sec_{label}"), "jobs/s");
        let mut busiest = Metric::new(
            "shards",
            &format!("busiest_shard_redis_cpu_us_per_job_{label}"),
            "us",
        );
        let mut total = Metric::new(
            "shards",
            &format!("all_shards_redis_cpu_us_per_job_{label}"),
            "us",
        );
        let shard_cpu = || -> Vec<f64> {
            cluster
                .shards
                .iter()
                .map(|s| {
                    s.master
                        .pid()
                        .and_then(crate::env::cpu_seconds)
                        .unwrap_or(f64::NAN)
                })
                .collect()
        };
        for run in 0..o.runs {
            let cpu_before = shard_cpu();
            // Single Submits, round robin over the queues.
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = JoinSet::new();
            let started = Instant::now();
            for _ in 0..o.concurrency.max(1) {
                let mut client = JobServiceClient::new(env.channel());
                let (next, queues) = (next.clone(), queues.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let queue = format!("{}-r{run}", queues[i % queues.len()]);
                        client.submit(job(&queue)).await.map_err(err("submit"))?;
                    }
                });
            }
            join_all(tasks).await?;
            let submitted = n as f64 / started.elapsed().as_secs_f64();
            // Drain them: one SDK worker per `--workers`, leasing from every queue.
            let run_queues: Vec<String> = queues.iter().map(|q| format!("{q}-r{run}")).collect();
            let stop = CancellationToken::new();
            let started = Instant::now();
            let mut workers = JoinSet::new();
            for i in 0..o.workers.max(1) {
                let worker = Worker::builder(env.endpoint.clone())
                    .worker_id(format!("bench-shards-{i}"))
                    .queues(run_queues.clone())
                    .concurrency(o.worker_concurrency.max(1))
                    .lease_wait(Duration::from_millis(200))
                    .shutdown_grace(Duration::from_secs(5))
                    .handler(KIND, |_ctx: JobContext| async { Ok(Vec::new()) })
                    .build()
                    .map_err(|e| format!("worker: {e}"))?;
                let stop = stop.clone();
                workers.spawn(async move {
                    let _ = worker.run(stop.cancelled_owned()).await;
                });
            }
            let mut admin = AdminServiceClient::new(env.channel());
            let deadline = Instant::now() + Duration::from_secs(120 + (n / 100) as u64);
            loop {
                let mut done = 0;
                for q in &run_queues {
                    done += env.finished(&mut admin, q).await;
                }
                if done >= n as u64 {
                    break;
                }
                if Instant::now() > deadline {
                    stop.cancel();
                    return Err(format!("shards: {done} of {n} jobs finished in time"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let drained = n as f64 / started.elapsed().as_secs_f64();
            stop.cancel();
            workers.join_all().await;
            let per_job: Vec<f64> = shard_cpu()
                .iter()
                .zip(&cpu_before)
                .map(|(a, b)| (a - b) * 1e6 / n as f64)
                .collect();
            progress(&format!(
                "shards {masters}: run {run}: submit {submitted:.0} jobs/s, drain {drained:.0} jobs/s; \
                 Redis CPU per job (submit + drain) by shard: {}",
                per_job
                    .iter()
                    .map(|c| format!("{c:.1} us"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            submit_rate.values.push(submitted);
            drain_rate.values.push(drained);
            busiest
                .values
                .push(per_job.iter().copied().fold(0.0, f64::max));
            total.values.push(per_job.iter().sum());
        }
        out.extend([submit_rate, drain_rate, busiest, total]);
    }
    Ok(out)
}

/// `schedules`: `--jobs` schedules (10,000 by default) firing every second
/// on one Redis. Reports the fire lag (each job's creation on Redis's clock
/// minus its fire time, sampled from 200 schedules' last runs) and Redis
/// CPU per fire.
pub async fn schedules(o: &Options, progress: Progress<'_>) -> Result<Vec<Metric>> {
    use futures::StreamExt;
    use jobctl_proto::v1::schedule_service_client::ScheduleServiceClient;
    use jobctl_proto::v1::{
        CreateScheduleRequest, CronTiming, GetScheduleRequest, GetStatusRequest, OverlapPolicy,
        PauseScheduleRequest, ScheduleSpec, schedule_spec::Timing,
    };
    let n = o.jobs.unwrap_or(10_000);
    let duration = o.duration_or(Duration::from_secs(10));
    let env = Env::start(o).await?;
    let queue = "sched";
    let spec = ScheduleSpec {
        timing: Some(Timing::Cron(CronTiming {
            expression: "* * * * * *".into(),
            time_zone: String::new(),
        })),
        template: Some(job(queue)),
        overlap: OverlapPolicy::Allow.into(),
        ..ScheduleSpec::default()
    };
    let client = ScheduleServiceClient::new(env.channel());
    progress(&format!("creating {n} every-second schedules"));
    futures::stream::iter(0..n)
        .map(|i| {
            let (mut c, spec) = (client.clone(), spec.clone());
            async move {
                c.create_schedule(CreateScheduleRequest {
                    name: format!("s{i}"),
                    spec: Some(spec),
                    paused: false,
                })
                .await
                .map_err(err("create schedule"))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut admin = AdminServiceClient::new(env.channel());
    let queued = |admin: &mut AdminServiceClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_queue_stats(jobctl_proto::v1::GetQueueStatsRequest {
                    queue: queue.into(),
                })
                .await
                .map(|r| r.into_inner().queued)
                .map_err(err("queue stats"))
        }
    };
    // Let every schedule fire once before measuring.
    let start = Instant::now();
    while queued(&mut admin).await? < n as u64 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("the schedules did not all fire within 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut fires = Metric::new("schedules", "fires_per_sec", "fires/s").target(&format!("{n}"));
    let mut cpu = Metric::new("schedules", "redis_cpu_us_per_fire", "µs");
    let mut lag_p50 = Metric::new("schedules", "fire_lag_p50_ms", "ms");
    let mut lag_p99 = Metric::new("schedules", "fire_lag_p99_ms", "ms").target("< 1000");
    let mut jobs = JobServiceClient::new(env.channel());
    for run in 0..o.runs {
        let (redis_before, _) = env.cpu().await;
        let before = queued(&mut admin).await?;
        let began = Instant::now();
        tokio::time::sleep(duration).await;
        let (redis_after, _) = env.cpu().await;
        let made = queued(&mut admin).await?.saturating_sub(before);
        let secs = began.elapsed().as_secs_f64();
        // Lag of the last runs of a sample of schedules.
        let mut h = histogram();
        for i in (0..n).step_by((n / 200).max(1)) {
            let got = client
                .clone()
                .get_schedule(GetScheduleRequest {
                    schedule_id: format!("{queue}:s{i}"),
                    next_fire_times: 1,
                })
                .await
                .map_err(err("get schedule"))?
                .into_inner();
            for r in got.recent_runs.iter().take(5) {
                let job = jobs
                    .get_status(GetStatusRequest {
                        job_id: r.job_id.clone(),
                    })
                    .await
                    .map_err(err("get status"))?
                    .into_inner()
                    .job
                    .ok_or("no job")?;
                let at = |t: Option<&prost_types::Timestamp>| {
                    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                };
                let lag = at(job.created_at.as_ref()) - at(r.fire_time.as_ref());
                let _ = h.record((u64::try_from(lag).unwrap_or(0) * 1000).max(1));
            }
        }
        let per_fire = match (redis_before, redis_after) {
            (Some(a), Some(b)) if made > 0 => (b - a) * 1e6 / made as f64,
            _ => f64::NAN,
        };
        progress(&format!(
            "schedules run {run}: {:.0} fires/s, {per_fire:.1} µs of Redis CPU per fire, lag p50 {:.0} ms p99 {:.0} ms",
            made as f64 / secs,
            quantile_ms(&h, 0.5),
            quantile_ms(&h, 0.99)
        ));
        fires.values.push(made as f64 / secs);
        cpu.values.push(per_fire);
        lag_p50.values.push(quantile_ms(&h, 0.5));
        lag_p99.values.push(quantile_ms(&h, 0.99));
    }
    for i in 0..n {
        let _ = client
            .clone()
            .pause_schedule(PauseScheduleRequest {
                schedule_id: format!("{queue}:s{i}"),
            })
            .await;
    }
    Ok(vec![fires, lag_p50, lag_p99, cpu])
}
