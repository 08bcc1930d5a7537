//! A retried export resumes from its checkpoint: through the real protocol
//! (jobctl in process), the first attempt writes past its last checkpoint
//! and dies; the second gets the checkpoint back and the file ends with
//! every row exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use jobctl_export_example::worker::{self, ExportRequest, Exporter};
use jobctl_export_example::{KIND, QUEUE};
use jobctl_worker::proto::v1::{EventKind, JobState, WatchProgressRequest};
use jobctl_worker::testing::{Harness, SubmitOptions};
use jobctl_worker::{HandlerError, JobContext};

/// The first attempt: two chunks with a checkpoint after each, then a third
/// written but not checkpointed, then a crash. Later attempts: the real
/// handler.
async fn flaky(exporter: Exporter, ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
    if ctx.attempt() > 1 {
        return exporter.run(ctx).await;
    }
    let part: PathBuf = exporter
        .out_dir
        .join(worker::part_name(&worker::file_name(ctx.id())));
    let (mut file, mut at) = worker::open_part(&part, None).await?;
    for end in [500, 1000] {
        at = worker::append_rows(&mut file, at, end).await?;
        ctx.set_progress_units(at.rows, 2000, "before the crash");
        ctx.checkpoint_now(at.encode()).await?;
    }
    worker::append_rows(&mut file, at, 1300).await?;
    Err(HandlerError::retry("the database connection dropped"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_export_resumes_from_its_checkpoint_without_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter {
        out_dir: dir.path().to_owned(),
        chunk_rows: 250,
        chunk_delay: Duration::ZERO,
    };
    let mut harness = Harness::start().await.unwrap();
    harness
        .spawn_worker(
            harness
                .worker()
                .queues([QUEUE])
                .handler(KIND, move |ctx| flaky(exporter.clone(), ctx)),
        )
        .unwrap();

    let payload = serde_json::to_vec(&ExportRequest { rows: 2000 }).unwrap();
    let id = harness
        .submit(SubmitOptions::new(QUEUE, KIND).payload(payload))
        .await
        .unwrap();
    let job = harness.wait_for(&id, common::WAIT).await.unwrap();
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2);
    let name = String::from_utf8(job.result.clone()).unwrap();
    assert_eq!(name, worker::file_name(&id));

    let csv = std::fs::read_to_string(dir.path().join(&name)).unwrap();
    common::check_csv(&csv, 2000);

    // The second attempt picks up at the checkpoint (1000 rows), not at 0.
    let mut events = harness
        .client()
        .job_service()
        .watch_progress(WatchProgressRequest {
            job_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut second = Vec::new();
    while let Some(message) = events.message().await.unwrap() {
        let event = message.event.unwrap();
        if event.attempt == 2 && event.kind() == EventKind::Progress {
            second.push(event.progress.unwrap().current);
        }
    }
    assert!(
        !second.is_empty() && second.iter().all(|c| *c >= 1000),
        "{second:?}"
    );
    assert_eq!(second.last(), Some(&2000), "{second:?}");
    harness.shutdown().await;
}
