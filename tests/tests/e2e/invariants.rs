//! The invariants of the design brief that only Redis can show: one clock
//! (8: Redis's clock, not each replica's) and cluster-ready keys (9: one hash
//! tag per queue). Every other invariant runs on both stores, in
//! `conformance::invariants`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use jobctl_proto::v1::{
    CancelRequest, FailRequest, GetQueueStatsRequest, HeartbeatRequest, JobState,
    ListFailedRequest, Progress, ReleaseRequest, RequeueRequest, SubmitRequest,
    WatchProgressRequest,
};
use jobctl_tests::*;
use tonic::Code;

const SEC: Duration = Duration::from_secs(1);

async fn queue_stats(srv: &TestServer, queue: &str) -> jobctl_proto::v1::GetQueueStatsResponse {
    srv.admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .expect("get_queue_stats")
        .into_inner()
}

/// Invariant 8 (one clock): with Redis's clock two hours ahead of the
/// server's, lease deadlines and schedules follow Redis's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_leases_and_schedules_use_redis_clock() {
    let redis = RedisServer::start_with_faketime("+2h").await;
    let skew = secs_between(redis.time().await, SystemTime::now());
    assert!(
        (skew - 7200.0).abs() < 60.0,
        "redis-server under libfaketime should run 2h ahead, but is {skew}s ahead"
    );
    let srv = TestServer::start(&redis, &[]).await;
    let ttl = Duration::from_secs(3);
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(ttl)),
            ..submit_request("clock", "k", "x")
        },
    )
    .await;
    let redis_before = redis.time().await;
    let leased = lease_one(&srv.worker, "clock").await;
    let redis_after = redis.time().await;
    let expires = system_time(leased.lease_expires_at.as_ref().expect("lease_expires_at"));
    let low = secs_between(expires, redis_before + ttl);
    let high = secs_between(expires, redis_after + ttl);
    assert!(
        low >= -0.5 && high <= 0.5,
        "lease_expires_at should be Redis TIME + ttl: it is {low:.3}s from (Redis before + ttl) and \
         {high:.3}s from (Redis after + ttl); local clock + ttl would be {:.0}s off",
        secs_between(expires, SystemTime::now() + ttl)
    );

    // Not reaped early by a reaper that mixes clocks.
    holds_for("the 3s lease", Duration::from_millis(1500), || async {
        let job = get_job(&srv.job, &id).await;
        if job.state() == JobState::Running {
            Ok(())
        } else {
            Err(format!("{:?}", job.state()))
        }
    })
    .await;
    let hb = srv
        .worker()
        .heartbeat(heartbeat_request(&leased))
        .await
        .expect("the lease is still ours")
        .into_inner();
    let extended = system_time(hb.lease_expires_at.as_ref().expect("lease_expires_at"));
    let now_redis = redis.time().await;
    assert!(
        secs_between(extended, now_redis + ttl).abs() < 1.0,
        "a heartbeat extends the lease to Redis TIME + ttl"
    );
    complete(&srv.worker, &leased, b"ok").await;

    // A delay of 1s is 1s on Redis's clock.
    let submitted = Instant::now();
    let delayed = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(SEC),
            )),
            ..submit_request("clock", "k", "later")
        },
    )
    .await;
    let job = get_job(&srv.job, &delayed).await;
    assert_eq!(job.state(), JobState::Scheduled);
    let run_at = system_time(job.run_at.as_ref().expect("run_at"));
    assert!(
        secs_between(run_at, redis.time().await).abs() < 1.5,
        "run_at is Redis TIME + delay"
    );
    assert!(lease(&srv.worker, "clock", 1).await.is_empty());
    let leased = lease_one(&srv.worker, "clock").await;
    let waited = submitted.elapsed();
    assert_eq!(leased.job_id, delayed);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "a job delayed by 1s became leasable after {waited:?}"
    );
}

/// The time at the start of a log line like `2026-11-22T03:02:57.579323Z ...`.
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z')?;
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + hh * 3600 + mm * 60)
            + Duration::from_secs_f64(ss),
    )
}

/// Invariant 8 across replicas: a replica whose clock runs an hour fast
/// neither reaps leases early nor hands out leases that never expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_replica_with_skewed_clock_does_not_change_lease_deadlines() {
    let libfaketime = jobctl_tests::redis_server::find_libfaketime()
        .expect("libfaketime is not installed (apt-get install faketime)");
    let redis = RedisServer::start().await;
    let honest = TestServer::start(&redis, &[]).await;
    let preload = libfaketime.to_string_lossy().into_owned();
    let fast = ServerProcess::start_wrapped(
        &[],
        &[
            ("LD_PRELOAD", preload.as_str()),
            ("FAKETIME", "+1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &redis.url(),
        &[],
    )
    .await;
    // Its log lines carry its own clock: check that it really runs fast.
    let logged = eventually("a timestamped log line", Duration::from_secs(5), || async {
        fast.output()
            .lines()
            .find_map(log_time)
            .ok_or_else(|| fast.output())
    })
    .await;
    let skew = secs_between(logged, SystemTime::now());
    assert!(
        (skew - 3600.0).abs() < 60.0,
        "the replica under libfaketime should log 1h ahead, but is {skew:.0}s off"
    );
    let fast_worker = jobctl_proto::v1::worker_service_client::WorkerServiceClient::connect(
        fast.endpoint.clone(),
    )
    .await
    .expect("connect to the fast replica");
    let fast_jobs =
        jobctl_proto::v1::job_service_client::JobServiceClient::connect(fast.endpoint.clone())
            .await
            .expect("connect to the fast replica");

    let ttl = Duration::from_secs(2);
    let id = submit(
        &fast_jobs,
        SubmitRequest {
            lease_ttl: Some(pb_duration(ttl)),
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("skew", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&fast_worker, "skew").await;
    let expires = system_time(leased.lease_expires_at.as_ref().expect("lease_expires_at"));
    let off = secs_between(expires, redis.time().await + ttl);
    assert!(
        off.abs() < 1.0,
        "lease_expires_at is {off:.1}s away from Redis TIME + ttl"
    );
    let leased_at = Instant::now();
    holds_for("the lease on both replicas", SEC, || async {
        let job = get_job(&honest.job, &id).await;
        if job.state() == JobState::Running {
            Ok(())
        } else {
            Err(format!("{:?}", job.state()))
        }
    })
    .await;
    // Without heartbeats it does expire, on time.
    eventually("the lease to expire", Duration::from_secs(5), || async {
        let job = get_job(&honest.job, &id).await;
        if job.state() != JobState::Running {
            Ok(())
        } else {
            Err("still running")
        }
    })
    .await;
    assert!(leased_at.elapsed() >= Duration::from_millis(1800));

    // A 1s delay submitted through the fast replica is 1s.
    let submitted = Instant::now();
    let delayed = submit(
        &fast_jobs,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(SEC),
            )),
            ..submit_request("skew-delay", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&honest.worker, "skew-delay").await;
    assert_eq!(leased.job_id, delayed);
    let waited = submitted.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "a job delayed by 1s via the fast replica became leasable after {waited:?}"
    );
}

/// Invariant 9: the whole lifecycle works on a Redis Cluster node (which
/// refuses scripts whose keys span hash slots); every key carries its
/// queue's hash tag, and a job's keys follow from its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_9_every_transition_works_on_redis_cluster_with_one_hash_tag_per_queue() {
    const PREFIX: &str = "jc9";
    let redis = RedisServer::start_cluster().await;
    let srv = TestServer::start(&redis, &["--key-prefix", PREFIX]).await;
    let (qa, qb) = ("alpha.q-1", "beta_q");
    let mut worker = srv.worker();
    let mut jobs = srv.job();
    let fast_retry = Some(backoff(
        Duration::from_millis(10),
        Duration::from_millis(10),
        1.0,
    ));

    // submit, duplicate submit
    let j1_request = SubmitRequest {
        priority: 5,
        idempotency_key: "once".into(),
        labels: labels(&[("team", "a")]),
        max_attempts: 3,
        retry: fast_retry,
        ..submit_request(qa, "k", "one")
    };
    let j1 = submit(&srv.job, j1_request.clone()).await;
    let dup = jobs
        .submit(j1_request)
        .await
        .expect("duplicate")
        .into_inner();
    assert!(dup.deduplicated);
    assert_eq!(
        (dup.job_id.as_str(), dup.state()),
        (j1.as_str(), JobState::Queued)
    );
    // promote
    let j2 = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(Duration::from_millis(200)),
            )),
            ..submit_request(qa, "k", "two")
        },
    )
    .await;
    // lease, heartbeat, fail (retry), promote, lease, complete
    let l1 = lease_one(&srv.worker, qa).await;
    assert_eq!(l1.job_id, j1);
    worker
        .heartbeat(HeartbeatRequest {
            progress: Some(Progress {
                percent: 50.0,
                current: 1,
                total: 2,
                message: "half".into(),
            }),
            checkpoint: Some(b"half".to_vec()),
            ..heartbeat_request(&l1)
        })
        .await
        .expect("heartbeat");
    worker
        .fail(FailRequest {
            retry_after: Some(pb_duration(Duration::from_millis(10))),
            ..fail_request(&l1, "again", true)
        })
        .await
        .expect("fail");
    let mut seen = BTreeSet::new();
    let mut l1b = None;
    let mut l2 = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while l1b.is_none() || l2.is_none() {
        assert!(Instant::now() < deadline, "j1 and j2 leased again");
        for l in lease(&srv.worker, qa, 2).await {
            seen.insert(l.job_id.clone());
            if l.job_id == j1 {
                l1b = Some(l);
            } else if l.job_id == j2 {
                l2 = Some(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (l1b, l2) = (l1b.expect("j1"), l2.expect("j2"));
    assert_eq!(l1b.checkpoint.as_deref(), Some(&b"half"[..]));
    complete(&srv.worker, &l1b, b"done").await;
    // cancel while running, heartbeat sees it, fail -> CANCELLED
    jobs.cancel(CancelRequest {
        job_id: j2.clone(),
        reason: "no".into(),
    })
    .await
    .expect("cancel running");
    assert!(
        worker
            .heartbeat(heartbeat_request(&l2))
            .await
            .expect("heartbeat")
            .into_inner()
            .cancel_requested
    );
    worker
        .fail(fail_request(&l2, "cancelled", true))
        .await
        .expect("fail after cancel");
    // cancel while queued
    let j4 = submit(&srv.job, submit_request(qa, "k", "four")).await;
    jobs.cancel(CancelRequest {
        job_id: j4.clone(),
        reason: String::new(),
    })
    .await
    .expect("cancel queued");
    // reap -> FAILED, list, requeue, lease, release, lease, complete
    let j3 = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 1,
            ..submit_request(qb, "k", "three")
        },
    )
    .await;
    let l3 = lease_one(&srv.worker, qb).await;
    assert_eq!(l3.job_id, j3);
    wait_for_state(&srv.job, &j3, JobState::Failed, Duration::from_secs(5)).await;
    let dead = srv
        .admin()
        .list_failed(ListFailedRequest {
            queue: qb.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("list_failed")
        .into_inner();
    assert_eq!(dead.jobs.len(), 1);
    srv.admin()
        .requeue(RequeueRequest { job_id: j3.clone() })
        .await
        .expect("requeue");
    let l3 = lease_one(&srv.worker, qb).await;
    worker
        .release(ReleaseRequest {
            job_id: j3.clone(),
            lease_token: l3.lease_token.clone(),
            checkpoint: None,
        })
        .await
        .expect("release");
    let l3 = lease_one(&srv.worker, qb).await;
    complete(&srv.worker, &l3, b"three").await;
    // retention: a finished job's record is deleted when it expires
    let short = submit(
        &srv.job,
        SubmitRequest {
            retention: Some(pb_duration(SEC)),
            ..submit_request(qb, "k", "short-lived")
        },
    )
    .await;
    let l5 = lease_one(&srv.worker, qb).await;
    assert_eq!(l5.job_id, short);
    complete(&srv.worker, &l5, b"gone soon").await;
    eventually(
        "the short-lived job to expire",
        Duration::from_secs(5),
        || async {
            match try_get_job(&srv.job, &short).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // watch, stats
    // (WatchProgress is a read, not a transition; its own tests in
    // lifecycle.rs fail if it is missing.)
    match jobs
        .watch_progress(WatchProgressRequest {
            job_id: j1.clone(),
            after_seq: 0,
        })
        .await
    {
        Err(s) if s.code() == Code::Unimplemented => {}
        Err(s) => panic!("watch: {s:?}"),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut events = Vec::new();
            while let Some(m) = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the watch ends after the terminal event")
                .expect("watch stream")
            {
                events.push(m.event.expect("event"));
            }
            assert_eq!(events.last().map(|e| e.state()), Some(JobState::Succeeded));
        }
    }
    for q in [qa, qb] {
        queue_stats(&srv, q).await;
    }
    for (id, state) in [
        (&j1, JobState::Succeeded),
        (&j2, JobState::Cancelled),
        (&j3, JobState::Succeeded),
        (&j4, JobState::Cancelled),
    ] {
        assert_eq!(get_job(&srv.job, id).await.state(), state, "{id}");
    }

    // Keys: every one but the queue registry (one set, naming every queue;
    // scripts never touch it) carries its queue's hash tag.
    let mut conn = redis.conn().await;
    let snapshot = Snapshot::take(&mut conn).await;
    let tags: BTreeSet<String> = [qa, qb].iter().map(|q| format!("default:{q}")).collect();
    let mut untagged = Vec::new();
    for (key, value) in &snapshot.keys {
        assert!(
            key.starts_with(&format!("{PREFIX}:")),
            "{key} lacks the key prefix"
        );
        let tag = key
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag.to_owned());
        match tag {
            Some(tag) => assert!(
                tags.contains(&tag),
                "key {key} carries the hash tag {tag:?}, not one of its queue's {tags:?}"
            ),
            None => untagged.push((key.clone(), value.clone())),
        }
    }
    assert_eq!(
        untagged.len(),
        1,
        "exactly one key (the queue registry) without a hash tag: {:?}",
        untagged.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let (registry, value) = &untagged[0];
    assert!(
        [
            format!("{PREFIX}:ns:default:queues"),
            format!("{PREFIX}:queues")
        ]
        .contains(registry),
        "the untagged key {registry} is the queue registry"
    );
    let StoredValue::Set(members) = value else {
        panic!("{registry} should be a set, is {}", value.type_name());
    };
    let members: Vec<String> = members
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    for q in [qa, qb] {
        assert!(
            members
                .iter()
                .any(|m| m == q || m.ends_with(&format!(":{q}"))),
            "the registry {registry} names queue {q}: {members:?}"
        );
    }
    // A job's keys follow from its id. Its event stream exists once an
    // event did not fit in the record (see prelude.lua).
    let mut streams = 0;
    for id in [&j1, &j2, &j3, &j4] {
        let (queue, ulid) = split_job_id(id);
        let job_key = format!("{PREFIX}:{{default:{queue}}}:job:{ulid}");
        let events_key = format!("{PREFIX}:{{default:{queue}}}:ev:{ulid}");
        assert_eq!(
            snapshot.keys.get(&job_key).map(StoredValue::type_name),
            Some("hash"),
            "{job_key}"
        );
        match snapshot.keys.get(&events_key).map(StoredValue::type_name) {
            Some("stream") => streams += 1,
            None => {}
            Some(other) => panic!("{events_key} should be a stream, is {other}"),
        }
    }
    assert!(streams > 0, "no job's events went to a stream");
    // And they all hash to the slot of their queue.
    for q in [qa, qb] {
        let slots: BTreeSet<i64> = {
            let mut slots = BTreeSet::new();
            for key in snapshot.keys_containing(&format!("{{default:{q}}}")) {
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("CLUSTER KEYSLOT");
                slots.insert(slot);
            }
            slots
        };
        assert_eq!(slots.len(), 1, "keys of queue {q} span slots {slots:?}");
    }
    let log = redis.log();
    assert!(!log.contains("CROSSSLOT"), "{log}");
}
