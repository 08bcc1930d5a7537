//! What a store holds, as far as a test can see it, to prove that a refused
//! request wrote nothing on either store.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jobctl_proto::v1::{GetQueueStatsRequest, ListFailedRequest};

use crate::{Backend, Snapshot, TestServer, try_get_job};

/// The state of the jobs and queues a test names, read through the API
/// (GetStatus of each job, GetQueueStats and ListFailed of each queue), and
/// on Redis every key with its value too.
///
/// On Redis the key snapshot proves that nothing at all was written; the
/// embedded store has no keys to read, so there the proof is the API view:
/// no job named changed (not even its `updated_at` or `last_seq`), and no
/// queue named gained or lost a job in any state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Every Redis key (`None` on the embedded store).
    pub redis: Option<Snapshot>,
    /// What the API answers, by what was asked (`job <id>`, `stats <queue>`,
    /// `failed <queue>`).
    pub api: BTreeMap<String, String>,
}

impl StateSnapshot {
    /// Reads the state of `jobs` and `queues` from `srv` (and every key of
    /// the backend's Redis).
    pub async fn take(
        backend: &Backend,
        srv: &TestServer,
        jobs: &[&str],
        queues: &[&str],
    ) -> StateSnapshot {
        let mut api = BTreeMap::new();
        for id in jobs {
            let answer = match try_get_job(&srv.job, id).await {
                Ok(job) => format!("{job:?}"),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            };
            api.insert(format!("job {id}"), answer);
        }
        for queue in queues {
            let stats = srv
                .admin()
                .get_queue_stats(GetQueueStatsRequest {
                    queue: (*queue).into(),
                })
                .await
                .map(|r| r.into_inner());
            api.insert(format!("stats {queue}"), answer(stats));
            let failed = srv
                .admin()
                .list_failed(ListFailedRequest {
                    queue: (*queue).into(),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map(|r| r.into_inner());
            api.insert(format!("failed {queue}"), answer(failed));
        }
        // Keys last, so that anything the reads themselves wrote is in both
        // the snapshot before and the one after.
        let redis = backend.redis_snapshot().await;
        StateSnapshot { redis, api }
    }

    /// A readable list of what differs from `after` (empty when equal).
    pub fn diff(&self, after: &StateSnapshot) -> String {
        let mut out = String::new();
        for (what, before) in &self.api {
            match after.api.get(what) {
                Some(now) if now == before => {}
                Some(now) => {
                    let _ = writeln!(out, "~ {what} changed: {before} -> {now}");
                }
                None => {
                    let _ = writeln!(out, "- {what} no longer read");
                }
            }
        }
        if let (Some(before), Some(now)) = (&self.redis, &after.redis) {
            let keys = before.diff(now);
            if !keys.is_empty() {
                let _ = write!(out, "Redis keys:\n{keys}");
            }
        }
        out
    }

    /// Panics, showing the difference, unless `after` equals `self`.
    #[track_caller]
    pub fn assert_unchanged(&self, after: &StateSnapshot, context: &str) {
        let diff = self.diff(after);
        assert!(diff.is_empty(), "{context}: the store changed:\n{diff}");
    }
}

fn answer<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}
