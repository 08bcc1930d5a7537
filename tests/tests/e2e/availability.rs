//! Redis-only: Redis going away and coming back, and server replicas (the
//! `jobctl-server` binary, sharing one Redis) killed with SIGKILL. Worker
//! processes killed mid-job run on both stores: `conformance::worker_processes`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::{
    GetQueueStatsRequest, GetStatusRequest, JobState, SubmitRequest, WatchProgressRequest,
};
use jobctl_tests::*;
use tonic::{Code, Status};

const SEC: Duration = Duration::from_secs(1);

/// With Redis gone every call is answered UNAVAILABLE (promptly, not hung);
/// once Redis is back the same server works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_redis_is_down_and_recovers_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
    let id = submit(&srv.job, submit_request("q", "k", "x")).await;
    redis.stop();

    type Call = fn(&TestServer, String) -> futures::future::BoxFuture<'static, Result<(), Status>>;
    let calls: Vec<(&str, Call)> = vec![
        ("GetStatus", |srv, id| {
            let mut c = srv.job();
            Box::pin(async move {
                c.get_status(GetStatusRequest { job_id: id })
                    .await
                    .map(drop)
            })
        }),
        ("Submit", |srv, _| {
            let mut c = srv.job();
            Box::pin(async move { c.submit(submit_request("q", "k", "y")).await.map(drop) })
        }),
        ("Lease", |srv, _| {
            let mut c = srv.worker();
            Box::pin(async move { c.lease(lease_request("q", 1)).await.map(drop) })
        }),
        ("GetQueueStats", |srv, _| {
            let mut c = srv.admin();
            Box::pin(async move {
                c.get_queue_stats(GetQueueStatsRequest { queue: "q".into() })
                    .await
                    .map(drop)
            })
        }),
    ];
    for (name, call) in &calls {
        let started = Instant::now();
        eventually(
            &format!("{name} to answer UNAVAILABLE"),
            Duration::from_secs(10),
            || {
                let fut = call(&srv, id.clone());
                async move {
                    match tokio::time::timeout(Duration::from_secs(5), fut).await {
                        Err(_) => Err("hung for 5s".to_owned()),
                        Ok(Err(s)) if s.code() == Code::Unavailable => Ok(()),
                        Ok(other) => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert!(!srv.has_stopped(), "the server outlives Redis");

    redis.restart().await;
    // The data is gone (no persistence), but the service is back.
    let id = eventually("Submit to work again", Duration::from_secs(10), || {
        let mut c = srv.job();
        async move {
            c.submit(submit_request("q", "k", "again"))
                .await
                .map(|r| r.into_inner().job_id)
                .map_err(|s| format!("{s:?}"))
        }
    })
    .await;
    let leased = lease_one(&srv.worker, "q").await;
    assert_eq!(leased.job_id, id);
    complete(&srv.worker, &leased, b"ok").await;
    assert_eq!(get_job(&srv.job, &id).await.state(), JobState::Succeeded);
    // Long polls are woken again too (the server re-subscribed).
    let mut worker = srv.worker();
    let poll = tokio::spawn(async move {
        worker
            .lease(jobctl_proto::v1::LeaseRequest {
                wait: Some(pb_duration(Duration::from_secs(10))),
                ..lease_request("woken", 1)
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitted = Instant::now();
    let woken = submit(&srv.job, submit_request("woken", "k", "x")).await;
    let jobs = tokio::time::timeout(Duration::from_secs(8), poll)
        .await
        .expect("the long poll returns")
        .expect("task")
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(
        jobs.first().map(|j| j.job_id.as_str()),
        Some(woken.as_str())
    );
    assert!(
        submitted.elapsed() < Duration::from_secs(3),
        "after Redis came back a submit woke a long poll only after {:?}",
        submitted.elapsed()
    );
}

fn replica_job(payload: &str, priority: i32) -> SubmitRequest {
    SubmitRequest {
        priority,
        lease_ttl: Some(pb_duration(SEC)),
        max_attempts: 10,
        retry: Some(backoff(
            Duration::from_millis(10),
            Duration::from_millis(50),
            2.0,
        )),
        ..submit_request("replicas", "sleep", payload)
    }
}

async fn finished(srv: &TestServer, queue: &str) -> Result<(u64, u64), String> {
    let stats = srv
        .admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((stats.finished, stats.running))
}

/// A server replica (the real binary) killed with SIGKILL while a worker
/// uses it: every job still finishes, through another replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_replica_killed_with_sigkill_loses_no_jobs() {
    const JOBS: usize = 40;
    let redis = RedisServer::start().await;
    let mut doomed = ServerProcess::start(&redis.url(), &[]).await;
    assert!(doomed.output().contains("listening on"));
    let survivor = TestServer::start(&redis, &[]).await;
    let doomed_jobs = JobServiceClient::connect(doomed.endpoint.clone())
        .await
        .expect("connect to the replica");
    let ids: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|_| {
            let c = doomed_jobs.clone();
            async move { submit(&c, replica_job(r#"{"ms": 150, "retry_ms": 20}"#, 0)).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let _w1 = WorkerProcess::spawn(
        test_worker_bin!(),
        &doomed.endpoint,
        "on-doomed",
        "replicas",
        4,
    );
    eventually("some jobs to finish", Duration::from_secs(15), || async {
        match finished(&survivor, "replicas").await? {
            (done, running) if done >= 5 && running > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    doomed.kill().await;
    // The first worker is cut off (its server is gone); a second one works
    // through the surviving replica.
    let _w2 = WorkerProcess::spawn(
        test_worker_bin!(),
        &survivor.endpoint,
        "on-survivor",
        "replicas",
        8,
    );
    for id in &ids {
        wait_for_state(
            &survivor.job,
            id,
            JobState::Succeeded,
            Duration::from_secs(15),
        )
        .await;
    }
}

/// Invariant 6 across a replica kill: a watch on a replica that is killed,
/// resumed on another replica with `after_seq` = the last seq seen, gets
/// every later event exactly once, in order, and ends after the terminal
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_6_watch_resumed_on_another_replica_after_a_kill_misses_and_repeats_nothing() {
    let redis = RedisServer::start().await;
    // The live watches must see every event, however loaded the machine.
    let mut doomed = ServerProcess::start(&redis.url(), &WATCH_EVERY_UPDATE).await;
    let survivor = TestServer::start(&redis, &WATCH_EVERY_UPDATE).await;
    let doomed_jobs = JobServiceClient::connect(doomed.endpoint.clone())
        .await
        .expect("connect to the replica");
    let watched = submit(
        &doomed_jobs,
        replica_job(r#"{"ms": 1500, "retry_ms": 1500}"#, 0),
    )
    .await;
    let mut stream = doomed_jobs
        .clone()
        .watch_progress(WatchProgressRequest {
            job_id: watched.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seqs = Vec::new();
    // Events arrive while a worker (through the doomed replica) runs the job
    // and reports progress.
    let _w1 = WorkerProcess::spawn(
        test_worker_bin!(),
        &doomed.endpoint,
        "on-doomed",
        "replicas",
        1,
    );
    let mut running = false;
    while !running {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10s")
            .expect("watch stream")
            .expect("the stream goes on");
        let event = m.event.expect("event");
        running = event.state() == JobState::Running;
        seqs.push(event.seq);
    }
    doomed.kill().await;
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(200), stream.message()).await
    {
        seqs.push(m.event.expect("event").seq);
    }
    let _w2 = WorkerProcess::spawn(
        test_worker_bin!(),
        &survivor.endpoint,
        "on-survivor",
        "replicas",
        1,
    );
    let last_seen = *seqs.last().expect("seq");
    let mut resumed = survivor
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: watched.clone(),
            after_seq: last_seen,
        })
        .await
        .expect("resumed watch")
        .into_inner();
    let mut last_state = None;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(15), resumed.message())
        .await
        .expect("the resumed watch ends after the terminal event")
        .expect("resumed stream")
    {
        let event = m.event.expect("event");
        seqs.push(event.seq);
        last_state = Some(event.state());
    }
    assert_eq!(last_state, Some(JobState::Succeeded));
    let all: Vec<u64> = survivor
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: watched.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner()
        .map(|m| m.expect("event").event.expect("event").seq)
        .collect()
        .await;
    assert_eq!(
        seqs, all,
        "the watch before and after the kill saw every event once, in order"
    );
    for pair in all.windows(2) {
        assert!(pair[0] < pair[1], "seq strictly increasing: {all:?}");
    }
}
