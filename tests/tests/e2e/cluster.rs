//! jobctl on a real Redis Cluster of three masters with a replica each
//! (`RedisCluster`), through `--redis-url redis+cluster://…`: the
//! conformance lifecycle and watch scenarios, queues on every shard, and a
//! master killed under load.
//!
//! A cluster is six processes, so there are few of these tests: the
//! conformance scenarios all share one cluster, each under a key prefix of
//! its own.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jobctl_proto::v1::{JobState, LeaseRequest, WatchProgressRequest};
use jobctl_tests::*;

use crate::conformance::{lifecycle, watch};

/// How many scenarios run at once on the shared cluster.
const AT_ONCE: usize = 4;

/// Every lifecycle and watch scenario of the conformance suite, on one
/// three-shard cluster (their queues fall on every shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_lifecycle_and_watch_scenarios_pass_on_a_three_shard_cluster() {
    let cluster = Arc::new(RedisCluster::start().await);
    let scenarios: Vec<(&str, Scenario)> = lifecycle::scenarios()
        .into_iter()
        .chain(watch::scenarios())
        .collect();
    let total = scenarios.len();
    let ran: Vec<&str> = futures::stream::iter(scenarios)
        .map(|(name, run)| {
            let backend = Backend::Cluster(cluster.clone(), format!("jc-{name}"));
            async move {
                // Shown with a failure: which scenarios were running.
                eprintln!("scenario {name} starts on the cluster");
                run(backend).await;
                eprintln!("scenario {name} passed on the cluster");
                name
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    assert_eq!(ran.len(), total);
}

/// Queues on every shard: their keys live on their own master, one Lease
/// call takes jobs from all of them, long polls on each are woken by a
/// Submit (sharded wake channels), and a watch of a job on each shard
/// streams to its terminal event (sharded event channels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_every_shard_lease_together_wake_long_polls_and_stream_events() {
    let cluster = RedisCluster::start().await;
    let queues = cluster.queue_per_shard("spread").await;
    assert_eq!(queues.len(), 3);
    let srv = TestServer::start_with_url(&cluster.url(), &[]).await;

    // One job per queue; each queue's keys are on its own shard's master.
    let mut ids = Vec::new();
    for queue in &queues {
        ids.push(submit(&srv.job, submit_request(queue, "k", queue.as_str())).await);
    }
    for (shard, queue) in queues.iter().enumerate() {
        let ready = format!("jobctl:{{default:{queue}}}:ready");
        let n: u64 = redis::cmd("ZCARD")
            .arg(&ready)
            .query_async(&mut cluster.serving(shard).await)
            .await
            .expect("ZCARD on the shard's master");
        assert_eq!(n, 1, "{ready} on shard {shard}");
    }

    // One Lease naming every queue takes from every shard.
    let leased = srv
        .worker()
        .lease(LeaseRequest {
            worker_id: "w".into(),
            queues: queues.clone(),
            max_jobs: 10,
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    let mut got: Vec<String> = leased.iter().map(|j| j.job_id.clone()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "one job from each shard");

    // Watches of the leased jobs, one per shard, see them to the end.
    let mut watches = Vec::new();
    for job in &leased {
        let stream = srv
            .job()
            .watch_progress(WatchProgressRequest {
                job_id: job.job_id.clone(),
                after_seq: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        watches.push(stream);
    }
    for job in &leased {
        complete(&srv.worker, job, b"done").await;
    }
    for mut stream in watches {
        let mut last = None;
        while let Some(event) = stream.next().await {
            last = event.expect("event").event.map(|e| e.state());
        }
        assert_eq!(last, Some(JobState::Succeeded));
    }

    // A long poll on each shard's queue is woken by a Submit to it.
    for queue in &queues {
        let mut worker = srv.worker();
        let queue_name = queue.clone();
        let poll = tokio::spawn(async move {
            worker
                .lease(LeaseRequest {
                    worker_id: "w".into(),
                    queues: vec![queue_name],
                    max_jobs: 1,
                    wait: Some(pb_duration(Duration::from_secs(30))),
                })
                .await
                .expect("long poll")
                .into_inner()
                .jobs
        });
        // Let the poll reach the server and wait (part of the scenario, as
        // in the conformance suite's long-poll scenario): without a wake-up
        // it would answer empty after 30s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!poll.is_finished(), "Lease with nothing ready waits");
        let id = submit(&srv.job, submit_request(queue, "k", "late")).await;
        let jobs = tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .expect("the long poll was woken")
            .expect("poll task");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].job_id, id);
    }
}

/// What a failover under load cost: acknowledged writes the cluster no
/// longer has, and how the calls made meanwhile were answered.
#[derive(Debug, Default)]
struct FailoverOutcome {
    acknowledged_submits: usize,
    acknowledged_completions: usize,
    /// Acknowledged Submits whose job is gone.
    lost_submits: usize,
    /// Acknowledged Completes whose job is not SUCCEEDED.
    lost_completions: usize,
    /// Calls answered UNAVAILABLE while the shard had no master (or too
    /// few replicas to confirm a write).
    unavailable: usize,
}

/// Longest any call may take: the server's --request-timeout, plus slack
/// for the transport. A call that takes longer hung.
const CALL_LIMIT: Duration = Duration::from_secs(15);

/// Submits and completes jobs on a queue of every shard while shard 0's
/// master is killed (SIGKILL): its replica takes over, then the old master
/// comes back as a replica. The replica is paused (SIGSTOP) for the last
/// writes before the kill and resumed after it, so it lags behind its
/// master as a replica on a slow link would. (On one machine the kernel
/// still buffers the replication stream for the paused replica, so even
/// without `WAIT` little or nothing is lost here; on a real network the
/// stream in flight dies with the master.) Every call answers OK or UNAVAILABLE within
/// [`CALL_LIMIT`]; writes resume on the same server (no restart). Returns
/// what was lost of what was acknowledged.
async fn failover_under_load(server_flags: &[&str]) -> FailoverOutcome {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mut cluster = RedisCluster::start_with(ClusterOptions {
        node_timeout: Duration::from_millis(1500),
        ..ClusterOptions::default()
    })
    .await;
    let queues = cluster.queue_per_shard("fo").await;
    let victim = queues[0].clone();
    let mut flags = vec!["--max-lease-wait", "2s", "--request-timeout", "10s"];
    flags.extend_from_slice(server_flags);
    let srv = TestServer::start_with_url(&cluster.url(), &flags).await;

    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(Mutex::new(Vec::<String>::new()));
    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let victim_acks = Arc::new(AtomicUsize::new(0));
    let answered = |what: &str, status: tonic::Status, unavailable: &AtomicUsize| {
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{what} during the failover: {status:?}"
        );
        unavailable.fetch_add(1, Ordering::Relaxed);
    };
    let mut load = tokio::task::JoinSet::new();
    for (i, queue) in queues.iter().cycle().take(6).enumerate() {
        let (mut jobs, queue) = (srv.job(), queue.clone());
        let (stop, submitted, unavailable) = (stop.clone(), submitted.clone(), unavailable.clone());
        let victim_acks = victim_acks.clone();
        let is_victim = queue == victim;
        load.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let request = submit_request(&queue, "k", format!("{i}-{n}"));
                let answer = tokio::time::timeout(CALL_LIMIT, jobs.submit(request))
                    .await
                    .expect("a Submit hung past the request timeout");
                match answer {
                    Ok(r) => {
                        submitted.lock().expect("lock").push(r.into_inner().job_id);
                        if is_victim {
                            victim_acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(status) => answered("Submit", status, &unavailable),
                }
            }
        });
    }
    for _ in 0..2 {
        let mut worker = srv.worker();
        let queues = queues.clone();
        let (stop, completed, unavailable) = (stop.clone(), completed.clone(), unavailable.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = LeaseRequest {
                    worker_id: "fo-worker".into(),
                    queues: queues.clone(),
                    max_jobs: 16,
                    wait: Some(pb_duration(Duration::from_millis(200))),
                };
                let leased = match tokio::time::timeout(CALL_LIMIT, worker.lease(request))
                    .await
                    .expect("a Lease hung past the request timeout")
                {
                    Ok(r) => r.into_inner().jobs,
                    Err(status) => {
                        answered("Lease", status, &unavailable);
                        continue;
                    }
                };
                for job in leased {
                    let answer = tokio::time::timeout(
                        CALL_LIMIT,
                        worker.complete(complete_request(&job, b"ok")),
                    )
                    .await
                    .expect("a Complete hung past the request timeout");
                    match answer {
                        Ok(_) => completed.lock().expect("lock").push(job.job_id),
                        Err(status) => answered("Complete", status, &unavailable),
                    }
                }
            }
        });
    }

    let acks_before = |n: usize| {
        let victim_acks = victim_acks.clone();
        async move {
            let seen = victim_acks.load(Ordering::Relaxed);
            if seen >= n { Ok(seen) } else { Err(seen) }
        }
    };
    let before = eventually(
        "Submits acknowledged on every shard",
        Duration::from_secs(30),
        || acks_before(100),
    )
    .await;
    // The replica falls behind: paused, while its master takes more writes.
    let replica_pid = cluster.shards[0].replicas[0].pid().expect("replica runs");
    signal(replica_pid, "STOP");
    let acked_at_pause = submitted.lock().expect("lock").len();
    eventually(
        "more Submits acknowledged on the other shards",
        Duration::from_secs(30),
        || {
            let n = submitted.lock().expect("lock").len();
            async move {
                if n >= acked_at_pause + 300 {
                    Ok(())
                } else {
                    Err(n)
                }
            }
        },
    )
    .await;
    // SIGKILL shard 0's master in the middle of the load; the replica
    // resumes and takes over.
    eprintln!("killing shard 0's master after {before} Submits to it");
    cluster.shards[0].master.stop();
    signal(replica_pid, "CONT");
    // Its replica takes over...
    let replica_port = cluster.shards[0].replicas[0].port();
    eventually(
        "the replica to become a master",
        Duration::from_secs(60),
        || async {
            let mut conn = cluster.shards[0].replicas[0].conn().await;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if info.contains("role:master") {
                Ok(())
            } else {
                Err(format!("{replica_port}: {info}"))
            }
        },
    )
    .await;
    // ...and the old master comes back as its replica.
    eprintln!("the replica took over; restarting the old master");
    cluster.shards[0].master.restart().await;
    cluster.until_ready().await;
    eprintln!("the old master is a replica again");
    // The same server writes to the shard again.
    let resumed = victim_acks.load(Ordering::Relaxed);
    eventually(
        "Submits acknowledged again on the failed-over shard",
        Duration::from_secs(60),
        || acks_before(resumed.max(before) + 50),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = load.join_next().await {
        done.expect("a load task failed");
    }

    let submitted = std::mem::take(&mut *submitted.lock().expect("lock"));
    let completed = std::mem::take(&mut *completed.lock().expect("lock"));
    let mut outcome = FailoverOutcome {
        acknowledged_submits: submitted.len(),
        acknowledged_completions: completed.len(),
        unavailable: unavailable.load(Ordering::Relaxed),
        ..FailoverOutcome::default()
    };
    for id in &submitted {
        match try_get_job(&srv.job, id).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => outcome.lost_submits += 1,
            Err(status) => panic!("GetStatus of {id} after the failover: {status:?}"),
        }
    }
    for id in &completed {
        match try_get_job(&srv.job, id).await {
            Ok(job) if job.state() == JobState::Succeeded => {}
            Ok(_) => outcome.lost_completions += 1,
            Err(status) if status.code() == tonic::Code::NotFound => outcome.lost_completions += 1,
            Err(status) => panic!("GetStatus of {id} after the failover: {status:?}"),
        }
    }
    eprintln!("failover with {server_flags:?}: {outcome:?}");
    outcome
}

/// Sends a signal (`STOP`, `CONT`) to a process.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// With `--redis-wait-replicas 1`, a master killed under load loses none of
/// the Submits and Completes it acknowledged, even though its replica
/// lagged: each acknowledged write was on the replica that took over before
/// the caller heard OK (while the replica was paused, the shard's writes
/// were answered UNAVAILABLE instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_master_fails_over_and_no_acknowledged_write_is_lost_with_wait_replicas() {
    let outcome =
        failover_under_load(&["--redis-wait-replicas", "1", "--redis-wait-timeout", "2s"]).await;
    assert!(outcome.acknowledged_submits > 0 && outcome.acknowledged_completions > 0);
    // The writes the paused replica could not confirm were refused, not
    // acknowledged.
    assert!(outcome.unavailable > 0, "{outcome:?}");
    assert_eq!(
        (outcome.lost_submits, outcome.lost_completions),
        (0, 0),
        "acknowledged writes lost: {outcome:?}"
    );
}

/// The same failover without `WAIT`: what it loses is measured, not
/// bounded (asynchronous replication may drop the last writes a master
/// acknowledged). `cargo nextest run -p jobctl-tests --run-ignored only
/// failover_loss_without_wait --no-capture` prints it (README, "Scaling
/// past one Redis").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not an invariant"]
async fn failover_loss_without_wait_is_measured() {
    failover_under_load(&[]).await;
}
