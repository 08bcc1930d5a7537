//! Every workload runs at a tiny size, to prove the harness works (this
//! measures nothing: the numbers of a debug build on a busy machine mean
//! little, and no assertion is about speed).

use jobctl_bench::{Metric, Options, Workload};

fn tiny(workload: Workload) -> Options {
    let mut o = Options::defaults(workload);
    o.runs = 1;
    o.jobs = Some(100);
    o.concurrency = 4;
    o.batch_size = 50;
    o.workers = 1;
    o.worker_concurrency = 8;
    o.watchers = vec![5];
    o.duration = Some(0.3);
    o.idle_workers = 3;
    o
}

async fn run(workload: Workload) -> Vec<Metric> {
    let metrics = jobctl_bench::run(&tiny(workload), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{workload:?}: {e}"));
    assert!(!metrics.is_empty(), "{workload:?} measured nothing");
    for m in &metrics {
        assert_eq!(m.values.len(), 1, "{m:?}");
        assert!(m.values.iter().all(|v| v.is_finite()), "{m:?}");
    }
    metrics
}

fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {metrics:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_workers_and_drain_measure_rates_and_redis_commands() {
    let submit = run(Workload::Submit).await;
    assert!(find(&submit, "single_jobs_per_sec").median() > 0.0);
    assert!(find(&submit, "batch_jobs_per_sec").median() > 0.0);
    let seq = run(Workload::SubmitSeq).await;
    assert!(find(&seq, "jobs_per_sec").median() > 0.0);
    assert!(find(&seq, "p99").median() >= find(&seq, "p50").median());
    let workers = run(Workload::Workers).await;
    assert!(find(&workers, "complete_jobs_per_sec").median() > 0.0);
    assert!(find(&workers, "complete_batch_jobs_per_sec").median() > 0.0);
    let drain = run(Workload::Drain).await;
    assert!(find(&drain, "jobs_per_sec").median() > 0.0);
    assert!(find(&drain, "redis_commands_per_job").median() > 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_fanout_memory_idle_and_list_report_their_quantities() {
    let rt = run(Workload::Roundtrip).await;
    assert!(find(&rt, "p99").median() >= find(&rt, "p50").median());
    let fan = run(Workload::Fanout).await;
    assert!(find(&fan, "delivered_5_watchers").median() > 0.0);
    let mem = run(Workload::Memory).await;
    assert!(find(&mem, "redis_bytes_per_queued_job").median() > 0.0);
    let idle = run(Workload::Idle).await;
    assert!(find(&idle, "redis_commands_per_sec").median() >= 0.0);
    let list = run(Workload::List).await;
    assert!(find(&list, "newest_page_p50_at_100").median() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_report_rates_and_cpu_per_job_on_one_shard_and_three() {
    let m = run(Workload::Shards).await;
    for shards in ["1_shard", "3_shards"] {
        assert!(find(&m, &format!("submit_jobs_per_sec_{shards}")).median() > 0.0);
        assert!(find(&m, &format!("drain_jobs_per_sec_{shards}")).median() > 0.0);
        let busiest = find(&m, &format!("busiest_shard_redis_cpu_us_per_job_{shards}")).median();
        let all = find(&m, &format!("all_shards_redis_cpu_us_per_job_{shards}")).median();
        assert!(busiest <= all, "{shards}: {busiest} > {all}");
    }
}
