//! Schedules across replicas that only Redis can show: replicas with
//! skewed clocks and replicas killed mid-fire still make exactly one job
//! per fire time, and lose none.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobctl_proto::v1::schedule_service_client::ScheduleServiceClient;
use jobctl_proto::v1::{
    CreateScheduleRequest, CronTiming, GetQueueStatsRequest, OverlapPolicy, PauseScheduleRequest,
    ScheduleSpec, schedule_spec::Timing,
};
use jobctl_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn every_second(queue: &str) -> ScheduleSpec {
    ScheduleSpec {
        timing: Some(Timing::Cron(CronTiming {
            expression: "* * * * * *".into(),
            time_zone: String::new(),
        })),
        template: Some(submit_request(queue, "tick", "")),
        overlap: OverlapPolicy::Allow.into(),
        ..Default::default()
    }
}

async fn create(srv: &TestServer, name: &str, queue: &str) -> String {
    ScheduleServiceClient::new(srv.channel())
        .create_schedule(CreateScheduleRequest {
            name: name.into(),
            spec: Some(every_second(queue)),
            paused: false,
        })
        .await
        .expect("create schedule")
        .into_inner()
        .schedule
        .expect("schedule")
        .id
}

async fn pause(srv: &TestServer, id: &str) {
    ScheduleServiceClient::new(srv.channel())
        .pause_schedule(PauseScheduleRequest {
            schedule_id: id.into(),
        })
        .await
        .expect("pause schedule");
}

async fn queued(srv: &TestServer, queue: &str) -> u64 {
    srv.admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .expect("queue stats")
        .into_inner()
        .queued
}

/// Leases every job of `queue`; counts them by (schedule name, fire time),
/// read from their idempotency keys (`schedule:<name>:<fire ms>`).
async fn jobs_by_fire_time(srv: &TestServer, queue: &str) -> BTreeMap<(String, u64), usize> {
    let mut by_fire = BTreeMap::new();
    loop {
        let leased = lease(&srv.worker, queue, 100).await;
        if leased.is_empty() {
            return by_fire;
        }
        for job in leased {
            let key = get_job(&srv.job, &job.job_id).await.idempotency_key;
            let mut parts = key.rsplitn(2, ':');
            let fire: u64 = parts
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("job {} has key {key:?}", job.job_id));
            let name = parts.next().unwrap_or_default().to_owned();
            *by_fire.entry((name, fire)).or_default() += 1;
        }
    }
}

/// Each schedule's fire times made one job each, with no second left out
/// between its first and its last.
fn assert_one_job_per_second(by_fire: &BTreeMap<(String, u64), usize>) {
    let mut per_schedule: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for ((name, fire), n) in by_fire {
        assert_eq!(*n, 1, "{name} at {fire} made {n} jobs");
        per_schedule.entry(name).or_default().push(*fire);
    }
    for (name, fires) in per_schedule {
        let (first, last) = (fires[0], fires[fires.len() - 1]);
        assert_eq!(
            fires.len() as u64,
            (last - first) / 1000 + 1,
            "{name} lost a fire time: {fires:?}"
        );
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Three replicas whose clocks are an hour apart fire one schedule: every
/// fire time on Redis's clock makes exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_skewed_clocks_make_one_job_per_fire_time() {
    let libfaketime = jobctl_tests::redis_server::find_libfaketime()
        .expect("libfaketime is not installed (apt-get install faketime)");
    let preload = libfaketime.to_string_lossy().into_owned();
    let redis = RedisServer::start().await;
    let honest = TestServer::start(&redis, &[]).await;
    let mut skewed = Vec::new();
    for skew in ["+1h", "-1h"] {
        skewed.push(
            ServerProcess::start_wrapped(
                &[],
                &[
                    ("LD_PRELOAD", preload.as_str()),
                    ("FAKETIME", skew),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ],
                &redis.url(),
                &[],
            )
            .await,
        );
    }
    let created = redis.time().await;
    let id = create(&honest, "skewed", "skew").await;
    eventually("six fires", WAIT, || async {
        let n = queued(&honest, "skew").await;
        if n >= 6 { Ok(()) } else { Err(n) }
    })
    .await;
    pause(&honest, &id).await;
    let by_fire = jobs_by_fire_time(&honest, "skew").await;
    assert_one_job_per_second(&by_fire);
    // The fire times are Redis's: none an hour off.
    let first = by_fire.keys().next().map(|(_, t)| *t).unwrap_or_default();
    let created = ms(created);
    assert!(
        first > created && first - created < 30_000,
        "first fire time {first} vs created at {created} on Redis's clock"
    );
    drop(skewed);
}

/// Replicas are killed (SIGKILL) and started again while 20 every-second
/// schedules fire: each fire time still makes exactly one job, and none is
/// lost while any replica runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_killed_mid_fire_make_one_job_per_fire_time() {
    const SCHEDULES: usize = 20;
    let redis = RedisServer::start().await;
    let survivor = TestServer::start(&redis, &[]).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(ServerProcess::start(&redis.url(), &[]).await);
    }
    let mut ids = Vec::new();
    for i in 0..SCHEDULES {
        ids.push(create(&survivor, &format!("s{i}"), "kills").await);
    }
    // Kill a replica and start another, round after round, while they fire.
    for round in 0..6 {
        let before = queued(&survivor, "kills").await;
        eventually("more fires", WAIT, || async {
            let n = queued(&survivor, "kills").await;
            if n > before { Ok(()) } else { Err(n) }
        })
        .await;
        let doomed = round % replicas.len();
        replicas[doomed].kill().await;
        replicas[doomed] = ServerProcess::start(&redis.url(), &[]).await;
    }
    let target = queued(&survivor, "kills").await + SCHEDULES as u64;
    eventually("fires after the last kill", WAIT, || async {
        let n = queued(&survivor, "kills").await;
        if n >= target { Ok(()) } else { Err(n) }
    })
    .await;
    for id in &ids {
        pause(&survivor, id).await;
    }
    let by_fire = jobs_by_fire_time(&survivor, "kills").await;
    assert!(by_fire.len() >= SCHEDULES * 3, "{}", by_fire.len());
    assert_one_job_per_second(&by_fire);
}
