//! The performance shape of the design brief, as far as it is observable:
//! waiting costs Redis nothing, and watchers and long polls share the
//! server's Redis connections instead of opening one each.

use std::time::Duration;

use jobctl_proto::v1::LeaseRequest;
use jobctl_tests::*;

/// The lines of `INFO <section>`.
async fn info(redis: &RedisServer, section: &str) -> String {
    let mut conn = redis.conn().await;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .expect("INFO")
}

async fn info_field(redis: &RedisServer, section: &str, field: &str) -> u64 {
    info(redis, section)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
}

/// Twenty watchers and twenty idle long polls on one server: Redis sees no
/// new connection per waiter, and (with the default 1s maintenance tick)
/// only a trickle of commands while they all wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_watchers_and_long_polls_cost_redis_no_connections_and_few_commands() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &["--maintenance-interval", "1s"]).await;
    let id = submit(&srv.job, submit_request("busy", "k", "x")).await;
    // Warm up: whatever connections the server keeps are open now.
    lease(&srv.worker, "idle-0", 1).await;
    let _ = watch(&srv.job, &id, 0).await.message().await;
    let clients_before = info_field(&redis, "clients", "connected_clients").await;

    let mut watchers = Vec::new();
    for _ in 0..20 {
        let mut stream = watch(&srv.job, &id, 0).await;
        stream.message().await.expect("first event");
        watchers.push(stream);
    }
    let polls: Vec<_> = (0..20)
        .map(|i| {
            let mut worker = srv.worker();
            tokio::spawn(async move {
                worker
                    .lease(LeaseRequest {
                        wait: Some(pb_duration(Duration::from_secs(6))),
                        ..lease_request(&format!("idle-{i}"), 1)
                    })
                    .await
            })
        })
        .collect();
    // Let the polls arrive and settle into waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients_waiting = info_field(&redis, "clients", "connected_clients").await;
    let commands_before = info_field(&redis, "stats", "total_commands_processed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commands_after = info_field(&redis, "stats", "total_commands_processed").await;

    assert!(
        clients_waiting <= clients_before + 3,
        "20 watchers and 20 long polls opened {} Redis connections",
        clients_waiting - clients_before
    );
    let commands = commands_after - commands_before;
    assert!(
        commands < 150,
        "{commands} Redis commands in 2s while everything waited (polling instead of waiting?)"
    );
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "the long polls are still waiting"
    );
    for p in polls {
        p.abort();
    }
    drop(watchers);
}

/// A thousand watchers of one job, over ten client connections: every one of
/// them gets the whole history in order and ends with the terminal event,
/// while the server's Redis connections stay what they were with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_watchers_of_one_job_get_every_event_over_the_same_redis_connections() {
    const CONNECTIONS: usize = 10;
    const PER_CONNECTION: usize = 100;
    let redis = RedisServer::start().await;
    let flags = [["--maintenance-interval", "1s"], WATCH_EVERY_UPDATE].concat();
    let srv = TestServer::start(&redis, &flags).await;
    let id = submit(&srv.job, submit_request("crowd", "k", "x")).await;
    let leased = lease_one(&srv.worker, "crowd").await;
    // One watcher first: whatever connections a watch needs are open now.
    let mut first = watch(&srv.job, &id, 0).await;
    first.message().await.expect("watch").expect("first event");
    let clients_with_one = info_field(&redis, "clients", "connected_clients").await;

    let mut readers = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Endpoint::from_shared(srv.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        for _ in 0..PER_CONNECTION {
            let client = JobClient::new(channel.clone());
            let id = id.clone();
            readers.push(tokio::spawn(async move {
                read_to_end(watch(&client, &id, 0).await).await
            }));
        }
    }
    let watching = CONNECTIONS * PER_CONNECTION + 1;
    eventually(
        "every watcher is attached",
        Duration::from_secs(60),
        || async {
            let open = srv.metric("jobctl_watchers").await;
            (open >= watching as f64).then_some(()).ok_or(open)
        },
    )
    .await;
    let clients_with_all = info_field(&redis, "clients", "connected_clients").await;

    let mut worker = srv.worker();
    for pct in 1..=20 {
        worker
            .heartbeat(jobctl_proto::v1::HeartbeatRequest {
                progress: Some(jobctl_proto::v1::Progress {
                    percent: f64::from(pct) * 5.0,
                    current: 0,
                    total: 0,
                    message: String::new(),
                }),
                ..heartbeat_request(&leased)
            })
            .await
            .expect("heartbeat");
    }
    complete(&srv.worker, &leased, b"done").await;
    let last = get_job(&srv.job, &id).await.last_seq;
    let expected: Vec<u64> = (1..=last).collect();
    for reader in readers {
        let events = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every stream ends after the terminal event")
            .expect("reader");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, expected, "a watcher missed or repeated events");
        assert_eq!(
            events.last().map(|e| e.state()),
            Some(jobctl_proto::v1::JobState::Succeeded)
        );
    }
    assert!(
        clients_with_all <= clients_with_one + 2,
        "{} watchers opened {} more Redis connections",
        watching,
        clients_with_all - clients_with_one
    );
    drop(first);
}

/// Calls of one Redis command so far (`INFO commandstats`; commands run by
/// scripts included).
async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    info(redis, "commandstats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A job's events are published only once someone watches it: jobs nobody
/// watches cost no PUBLISH beyond their queue's wake-up, and a watched
/// job's events still reach its watcher as they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_nobody_watches_publish_no_events() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
    let before = command_calls(&redis, "publish").await;
    const JOBS: u64 = 10;
    for i in 0..JOBS {
        submit(&srv.job, submit_request("unwatched", "k", format!("{i}"))).await;
        let leased = lease_one(&srv.worker, "unwatched").await;
        srv.worker()
            .heartbeat(jobctl_proto::v1::HeartbeatRequest {
                progress: Some(jobctl_proto::v1::Progress {
                    percent: 50.0,
                    ..Default::default()
                }),
                ..heartbeat_request(&leased)
            })
            .await
            .expect("heartbeat");
        complete(&srv.worker, &leased, b"ok").await;
    }
    let after = command_calls(&redis, "publish").await;
    assert_eq!(after - before, JOBS, "one wake-up per submit, no event");

    let id = submit(&srv.job, submit_request("watched", "k", "x")).await;
    let mut stream = watch(&srv.job, &id, 0).await;
    let created = stream.message().await.expect("watch").expect("first event");
    assert_eq!(created.event.expect("event").seq, 1);
    let leased = lease_one(&srv.worker, "watched").await;
    complete(&srv.worker, &leased, b"ok").await;
    let rest = read_to_end(stream).await;
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    let watched = command_calls(&redis, "publish").await - after;
    assert_eq!(watched, 3, "the wake-up, then RUNNING and SUCCEEDED");
}
