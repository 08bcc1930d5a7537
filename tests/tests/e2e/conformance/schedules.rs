//! Periodic schedules (`ScheduleService`): each fire time makes exactly one
//! job, whichever replicas fire it; the overlap policies; pause, resume,
//! trigger and delete; bad specs are refused and write nothing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use jobctl_proto::v1::schedule_service_client::ScheduleServiceClient;
use jobctl_proto::v1::{
    CreateScheduleRequest, CronTiming, DeleteScheduleRequest, GetScheduleRequest,
    GetScheduleResponse, IntervalTiming, JobState, ListSchedulesRequest, OverlapPolicy,
    PauseScheduleRequest, ResumeScheduleRequest, ScheduleRunOutcome, ScheduleSpec,
    TriggerScheduleRequest, schedule_spec::Timing,
};
use jobctl_tests::*;
use tonic::Code;
use tonic::transport::Channel;

conformance! {
    an_every_second_schedule_makes_one_job_per_fire_time;
    two_replicas_make_one_job_per_fire_time;
    overlap_skip_waits_for_the_previous_run;
    overlap_buffer_one_runs_the_buffered_fire_after_the_previous_run;
    overlap_cancel_previous_cancels_the_previous_run;
    pause_resume_trigger_and_delete;
    get_schedule_shows_next_fire_times_in_the_time_zone;
    bad_schedules_are_refused_and_write_nothing;
}

const WAIT: Duration = Duration::from_secs(30);

fn client(srv: &TestServer) -> ScheduleServiceClient<Channel> {
    ScheduleServiceClient::new(srv.channel())
}

fn every_second(queue: &str) -> ScheduleSpec {
    ScheduleSpec {
        timing: Some(Timing::Cron(CronTiming {
            expression: "* * * * * *".into(),
            time_zone: String::new(),
        })),
        template: Some(submit_request(queue, "tick", "payload")),
        ..Default::default()
    }
}

async fn create(srv: &TestServer, name: &str, spec: ScheduleSpec) -> String {
    client(srv)
        .create_schedule(CreateScheduleRequest {
            name: name.into(),
            spec: Some(spec),
            paused: false,
        })
        .await
        .expect("create schedule")
        .into_inner()
        .schedule
        .expect("schedule")
        .id
}

async fn get(srv: &TestServer, id: &str) -> GetScheduleResponse {
    client(srv)
        .get_schedule(GetScheduleRequest {
            schedule_id: id.into(),
            next_fire_times: 0,
        })
        .await
        .expect("get schedule")
        .into_inner()
}

async fn queued(srv: &TestServer, queue: &str) -> u64 {
    queue_stats(srv, queue).await.queued
}

async fn queue_stats(srv: &TestServer, queue: &str) -> jobctl_proto::v1::GetQueueStatsResponse {
    srv.admin()
        .get_queue_stats(jobctl_proto::v1::GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .expect("queue stats")
        .into_inner()
}

/// Leases every queued job of `queue` and counts them by fire time (from
/// each job's idempotency key, `schedule:<name>:<fire ms>`).
async fn jobs_by_fire_time(srv: &TestServer, queue: &str) -> BTreeMap<u64, usize> {
    let mut by_fire = BTreeMap::new();
    loop {
        let leased = lease(&srv.worker, queue, 100).await;
        if leased.is_empty() {
            return by_fire;
        }
        for job in leased {
            let key = get_job(&srv.job, &job.job_id).await.idempotency_key;
            let fire: u64 = key
                .rsplit(':')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("job {} has key {key:?}", job.job_id));
            *by_fire.entry(fire).or_default() += 1;
        }
    }
}

/// Every fire time made one job, and no second between the first and the
/// last was left out.
fn assert_one_job_per_second(by_fire: &BTreeMap<u64, usize>) {
    for (fire, n) in by_fire {
        assert_eq!(*n, 1, "fire time {fire} made {n} jobs: {by_fire:?}");
        assert_eq!(fire % 1000, 0, "fire times are whole seconds: {by_fire:?}");
    }
    let (first, last) = (
        by_fire.keys().next().copied().unwrap_or_default(),
        by_fire.keys().last().copied().unwrap_or_default(),
    );
    assert_eq!(
        by_fire.len() as u64,
        (last - first) / 1000 + 1,
        "a fire time was lost: {by_fire:?}"
    );
}

async fn an_every_second_schedule_makes_one_job_per_fire_time(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let spec = ScheduleSpec {
        overlap: OverlapPolicy::Allow.into(),
        ..every_second("ticks")
    };
    let id = create(&srv, "every-second", spec).await;
    assert_eq!(id, "ticks:every-second");
    eventually("three fires", WAIT, || async {
        let n = queued(&srv, "ticks").await;
        if n >= 3 { Ok(()) } else { Err(n) }
    })
    .await;
    let got = get(&srv, &id).await;
    let schedule = got.schedule.expect("schedule");
    assert!(schedule.fired >= 3, "{schedule:?}");
    let fired: Vec<_> = got
        .recent_runs
        .iter()
        .filter(|r| r.outcome() == ScheduleRunOutcome::Fired)
        .collect();
    assert!(fired.len() >= 3, "{:?}", got.recent_runs);
    for run in &fired {
        let job = get_job(&srv.job, &run.job_id).await;
        assert_eq!(job.kind, "tick");
        assert_eq!(job.payload, b"payload");
        let fire_ms = system_time(run.fire_time.as_ref().expect("fire time"))
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        assert_eq!(
            job.idempotency_key,
            format!("schedule:every-second:{fire_ms}")
        );
    }
    client(&srv)
        .delete_schedule(DeleteScheduleRequest {
            schedule_id: id.clone(),
        })
        .await
        .expect("delete");
    assert_one_job_per_second(&jobs_by_fire_time(&srv, "ticks").await);
}

async fn two_replicas_make_one_job_per_fire_time(backend: Backend) {
    // The embedded store is one process's: one replica is all it has.
    let a = TestServer::start_on(&backend, &[]).await;
    let b = match backend.kind() {
        BackendKind::Embedded => None,
        _ => Some(TestServer::start_on(&backend, &[]).await),
    };
    let spec = ScheduleSpec {
        overlap: OverlapPolicy::Allow.into(),
        ..every_second("shared")
    };
    let id = create(&a, "both", spec).await;
    eventually("five fires", WAIT, || async {
        let n = queued(&a, "shared").await;
        if n >= 5 { Ok(()) } else { Err(n) }
    })
    .await;
    client(&a)
        .pause_schedule(PauseScheduleRequest {
            schedule_id: id.clone(),
        })
        .await
        .expect("pause");
    drop(b);
    let by_fire = jobs_by_fire_time(&a, "shared").await;
    assert!(by_fire.len() >= 5, "{by_fire:?}");
    assert_one_job_per_second(&by_fire);
    let schedule = get(&a, &id).await.schedule.expect("schedule");
    assert_eq!(schedule.fired as usize, by_fire.len(), "{schedule:?}");
}

async fn overlap_skip_waits_for_the_previous_run(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = create(&srv, "skipper", every_second("skip")).await;
    // The first job stays queued: the next fires are skipped.
    eventually("two skipped fires", WAIT, || async {
        let s = get(&srv, &id).await.schedule.expect("schedule");
        if s.skipped >= 2 { Ok(()) } else { Err(s) }
    })
    .await;
    let stats = queue_stats(&srv, "skip").await;
    assert_eq!(stats.queued, 1, "{stats:?}");
    let first = lease_one(&srv.worker, "skip").await;
    complete(&srv.worker, &first, b"done").await;
    eventually("a second job once the first ended", WAIT, || async {
        let n = queued(&srv, "skip").await;
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;
}

async fn overlap_buffer_one_runs_the_buffered_fire_after_the_previous_run(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let spec = ScheduleSpec {
        overlap: OverlapPolicy::BufferOne.into(),
        ..every_second("buffer")
    };
    let id = create(&srv, "buffered", spec).await;
    let first = lease_one(&srv.worker, "buffer").await;
    let buffered = eventually("a buffered fire and a skipped one", WAIT, || async {
        let got = get(&srv, &id).await;
        let s = got.schedule.clone().expect("schedule");
        match &s.buffered_fire_time {
            Some(t) if s.skipped >= 1 => Ok(system_time(t)),
            _ => Err(got),
        }
    })
    .await;
    assert_eq!(queued(&srv, "buffer").await, 0);
    complete(&srv.worker, &first, b"done").await;
    let next = lease_one(&srv.worker, "buffer").await;
    let key = get_job(&srv.job, &next.job_id).await.idempotency_key;
    let buffered_ms = buffered
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    assert_eq!(key, format!("schedule:buffered:{buffered_ms}"));
}

async fn overlap_cancel_previous_cancels_the_previous_run(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let spec = ScheduleSpec {
        overlap: OverlapPolicy::CancelPrevious.into(),
        ..every_second("cancel")
    };
    let id = create(&srv, "canceller", spec).await;
    let runs = eventually("two fires", WAIT, || async {
        let got = get(&srv, &id).await;
        let fired: Vec<String> = got
            .recent_runs
            .iter()
            .filter(|r| r.outcome() == ScheduleRunOutcome::Fired)
            .map(|r| r.job_id.clone())
            .collect();
        if fired.len() >= 2 {
            Ok(fired)
        } else {
            Err(got)
        }
    })
    .await;
    // Newest first: the older run was cancelled by the newer fire.
    let older = get_job(&srv.job, &runs[1]).await;
    assert_eq!(older.state(), JobState::Cancelled, "{older:?}");
}

async fn pause_resume_trigger_and_delete(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut c = client(&srv);
    let created = c
        .create_schedule(CreateScheduleRequest {
            name: "paused".into(),
            spec: Some(ScheduleSpec {
                overlap: OverlapPolicy::Allow.into(),
                ..every_second("pr")
            }),
            paused: true,
        })
        .await
        .expect("create")
        .into_inner()
        .schedule
        .expect("schedule");
    assert!(created.paused);
    assert_eq!(created.next_fire_time, None);
    let id = created.id;
    // Taken ids are refused.
    expect_code(
        c.create_schedule(CreateScheduleRequest {
            name: "paused".into(),
            spec: Some(every_second("pr")),
            paused: false,
        })
        .await,
        Code::AlreadyExists,
        "a second create",
    );
    // A trigger runs it now, paused or not.
    let job_id = c
        .trigger_schedule(TriggerScheduleRequest {
            schedule_id: id.clone(),
        })
        .await
        .expect("trigger")
        .into_inner()
        .job_id;
    let job = get_job(&srv.job, &job_id).await;
    assert_eq!((job.kind.as_str(), job.state()), ("tick", JobState::Queued));
    let got = get(&srv, &id).await;
    assert_eq!(got.recent_runs.len(), 1, "{got:?}");
    assert_eq!(got.recent_runs[0].outcome(), ScheduleRunOutcome::Triggered);
    assert_eq!(got.recent_runs[0].job_id, job_id);
    assert!(got.next_fire_times.is_empty());
    // A paused schedule does not fire.
    holds_for(
        "a paused schedule stays quiet",
        Duration::from_millis(1500),
        || async {
            let n = queued(&srv, "pr").await;
            if n == 1 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    let resumed = c
        .resume_schedule(ResumeScheduleRequest {
            schedule_id: id.clone(),
        })
        .await
        .expect("resume")
        .into_inner()
        .schedule
        .expect("schedule");
    assert!(
        !resumed.paused && resumed.next_fire_time.is_some(),
        "{resumed:?}"
    );
    eventually("a fire after resume", WAIT, || async {
        let n = queued(&srv, "pr").await;
        if n >= 2 { Ok(()) } else { Err(n) }
    })
    .await;
    let listed = c
        .list_schedules(ListSchedulesRequest {
            queue: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .schedules;
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    c.delete_schedule(DeleteScheduleRequest {
        schedule_id: id.clone(),
    })
    .await
    .expect("delete");
    expect_code(
        c.get_schedule(GetScheduleRequest {
            schedule_id: id.clone(),
            next_fire_times: 0,
        })
        .await,
        Code::NotFound,
        "a deleted schedule",
    );
    expect_code(
        c.trigger_schedule(TriggerScheduleRequest { schedule_id: id })
            .await,
        Code::NotFound,
        "triggering a deleted schedule",
    );
}

async fn get_schedule_shows_next_fire_times_in_the_time_zone(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let spec = ScheduleSpec {
        timing: Some(Timing::Cron(CronTiming {
            expression: "30 2 * * *".into(),
            time_zone: "Asia/Tokyo".into(),
        })),
        ..every_second("tz")
    };
    let id = create(&srv, "nightly", spec).await;
    let got = get(&srv, &id).await;
    assert_eq!(got.next_fire_times.len(), 5);
    let mut previous = None;
    for t in &got.next_fire_times {
        // 02:30 in Tokyo (UTC+9, no daylight saving time) is 17:30 UTC.
        assert_eq!(t.seconds.rem_euclid(86_400), 17 * 3600 + 30 * 60, "{t:?}");
        if let Some(p) = previous {
            assert_eq!(t.seconds - p, 86_400);
        }
        previous = Some(t.seconds);
    }
    assert_eq!(
        got.schedule.expect("schedule").next_fire_time.as_ref(),
        got.next_fire_times.first()
    );
}

async fn bad_schedules_are_refused_and_write_nothing(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--max-payload-bytes", "1024"]).await;
    let before = StateSnapshot::take(&backend, &srv, &[], &["bad"]).await;
    let cron = |expression: &str, zone: &str| ScheduleSpec {
        timing: Some(Timing::Cron(CronTiming {
            expression: expression.into(),
            time_zone: zone.into(),
        })),
        ..every_second("bad")
    };
    let mut huge = every_second("bad");
    if let Some(t) = huge.template.as_mut() {
        t.payload = vec![b'x'; 1025];
    }
    let cases = vec![
        ("bad cron", cron("not a cron", ""), "spec.cron.expression"),
        (
            "seven fields",
            cron("0 0 0 * * * 2030", ""),
            "spec.cron.expression",
        ),
        (
            "unknown zone",
            cron("* * * * *", "Atlantis/Capital"),
            "spec.cron.time_zone",
        ),
        (
            "interval 0",
            ScheduleSpec {
                timing: Some(Timing::Interval(IntervalTiming {
                    every: Some(pb_duration(Duration::ZERO)),
                    offset: None,
                })),
                ..every_second("bad")
            },
            "spec.interval.every",
        ),
        ("payload over the limit", huge, "spec.template.payload"),
        (
            "bad template queue",
            ScheduleSpec {
                template: Some(submit_request("no spaces allowed", "k", "")),
                ..every_second("bad")
            },
            "spec.template.queue",
        ),
    ];
    for (what, spec, field) in cases {
        let status = expect_code(
            client(&srv)
                .create_schedule(CreateScheduleRequest {
                    name: "bad".into(),
                    spec: Some(spec),
                    paused: false,
                })
                .await,
            Code::InvalidArgument,
            what,
        );
        assert!(status_mentions(&status, field), "{what}: {status:?}");
    }
    let status = expect_code(
        client(&srv)
            .create_schedule(CreateScheduleRequest {
                name: "bad name".into(),
                spec: Some(every_second("bad")),
                paused: false,
            })
            .await,
        Code::InvalidArgument,
        "a bad name",
    );
    assert!(status_mentions(&status, "name"), "{status:?}");
    let listed = client(&srv)
        .list_schedules(ListSchedulesRequest {
            queue: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .schedules;
    assert!(listed.is_empty(), "{listed:?}");
    let after = StateSnapshot::take(&backend, &srv, &[], &["bad"]).await;
    assert_eq!(before, after);
}
