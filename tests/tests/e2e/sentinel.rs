//! jobctl on a Sentinel-managed Redis (`redis+sentinel://…/<master>`): real
//! `redis-server --sentinel` processes watch a master and its replica; the
//! master is killed and the same server follows them to the new one.

use std::time::{Duration, Instant};

use jobctl_proto::v1::{JobState, LeaseRequest};
use jobctl_tests::*;

/// The master is killed with SIGKILL; the Sentinels promote its replica;
/// meanwhile calls answer UNAVAILABLE (never hang), afterwards the same
/// server writes to the new master, keeps what it acknowledged before
/// (with `--redis-wait-replicas 1`) and its long polls are woken again
/// (its subscription moved to the new master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_follows_the_sentinels_to_the_new_master_after_a_kill() {
    let mut set = RedisSentinels::start(Duration::from_millis(1000)).await;
    let old_port = set.master.port();
    let srv = TestServer::start_with_url(
        &set.url(),
        &[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout",
            "2s",
            "--max-lease-wait",
            "30s",
            "--request-timeout",
            "40s",
        ],
    )
    .await;
    let before = submit(&srv.job, submit_request("st", "k", "before")).await;

    set.master.stop();
    // Until the Sentinels promote the replica (and while the new master has
    // no replica to confirm a write), Submits fail UNAVAILABLE, each within
    // the request timeout.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while set.master_port().await == Some(old_port) {
        assert!(
            Instant::now() < deadline,
            "the Sentinels promoted no replica within 90s"
        );
        let started = Instant::now();
        let status = srv
            .job()
            .submit(submit_request("st", "k", "during"))
            .await
            .expect_err("no master can confirm a write");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(40), "a Submit hung");
        refused += 1;
    }
    assert!(refused > 0, "calls failed while no master served");
    // The old master comes back (as a replica the Sentinels reconfigure),
    // so writes that wait for one replica are confirmed again.
    set.master.restart().await;
    eventually(
        "the old master to replicate the new one",
        Duration::from_secs(60),
        || async {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut set.master.conn().await)
                .await
                .map_err(|e| e.to_string())?;
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                Ok(())
            } else {
                Err(info)
            }
        },
    )
    .await;
    // The same server writes to the new master.
    let after = eventually(
        "a Submit on the new master",
        Duration::from_secs(60),
        || {
            let mut jobs = srv.job();
            async move {
                jobs.submit(submit_request("st", "k", "after"))
                    .await
                    .map(|r| r.into_inner().job_id)
                    .map_err(|s| format!("{:?} {}", s.code(), s.message()))
            }
        },
    )
    .await;

    // What was acknowledged before the kill is on the new master.
    assert_eq!(get_job(&srv.job, &before).await.state(), JobState::Queued);
    assert_eq!(get_job(&srv.job, &after).await.state(), JobState::Queued);
    for _ in 0..2 {
        let job = lease_one(&srv.worker, "st").await;
        complete(&srv.worker, &job, b"ok").await;
    }

    // The subscription followed: a long poll is woken by a Submit.
    let mut worker = srv.worker();
    let poll = tokio::spawn(async move {
        worker
            .lease(LeaseRequest {
                worker_id: "w".into(),
                queues: vec!["st-wake".into()],
                max_jobs: 1,
                wait: Some(pb_duration(Duration::from_secs(30))),
            })
            .await
            .map(|r| r.into_inner().jobs)
    });
    // Let the poll reach the server and wait (part of the scenario).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "Lease with nothing ready waits");
    let woken = submit(&srv.job, submit_request("st-wake", "k", "x")).await;
    let jobs = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("the long poll was woken, not timed out")
        .expect("poll task")
        .expect("long poll");
    assert_eq!(
        jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        [woken.as_str()]
    );
}
