//! The operators' side of the embedded store: the walk of ListJobs and
//! PurgeJobs (as `store/listing.rs` describes it, looking at no more jobs
//! per page than the Redis store does) and deletion.

use std::collections::HashMap;

use jobctl_proto::v1::JobState;

use super::{State, is_terminal};
use crate::error::{Error, Result};
use crate::keys::{JobId, queue_tag};
use crate::store::listing::{Facts, ListQuery};

/// The ids of one page of a walk, and where the next page starts.
pub(super) fn walk(state: &State, ns: &str, query: &ListQuery) -> (Vec<String>, Option<String>) {
    let Some(queue) = state.queues.get(&queue_tag(ns, &query.queue)) else {
        return (Vec::new(), None);
    };
    let keeps = |id: &String| {
        state
            .jobs
            .get(&(ns.to_owned(), id.clone()))
            .is_some_and(|job| {
                let labels: HashMap<String, String> = job.labels.clone().into_iter().collect();
                query.matches(&Facts {
                    state: job.state,
                    kind: &job.kind,
                    labels: &labels,
                })
            })
    };
    if let Some(s) = query.single_indexed_state() {
        let members: Vec<String> = match s {
            JobState::Queued => queue.ready.iter().map(|(_, _, id)| id.clone()).collect(),
            JobState::Scheduled => queue.sched.iter().map(|(_, id)| id.clone()).collect(),
            JobState::Running => queue.active.iter().map(|(_, id)| id.clone()).collect(),
            _ => queue.dead.iter().map(|(_, id)| id.clone()).collect(),
        };
        if members.len() <= query.scan_limit {
            let ordered = query.order(members);
            let mut ids = Vec::new();
            for (i, id) in ordered.iter().enumerate() {
                if keeps(id) {
                    ids.push(id.clone());
                    if ids.len() == query.page_size {
                        let more = i + 1 < ordered.len();
                        return (ids, more.then(|| id.clone()));
                    }
                }
            }
            return (ids, None);
        }
    }
    let ahead: Box<dyn Iterator<Item = &String>> = if query.newest_first {
        Box::new(queue.all.iter().rev().filter(|id| query.ahead(id)))
    } else {
        Box::new(queue.all.iter().filter(|id| query.ahead(id)))
    };
    let mut ids = Vec::new();
    let mut last = None;
    for (scanned, id) in ahead.enumerate() {
        if scanned == query.scan_limit {
            return (ids, last);
        }
        last = Some(id.clone());
        if keeps(id) {
            ids.push(id.clone());
            if ids.len() == query.page_size {
                return (ids, last);
            }
        }
    }
    (ids, None)
}

/// Deletes a finished job (mirrors delete.lua).
pub(super) fn delete(state: &mut State, ns: &str, id: &JobId) -> Result<()> {
    let key = (ns.to_owned(), id.to_string());
    let job = state
        .jobs
        .get(&key)
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    if !is_terminal(job.state) {
        return Err(Error::FailedPrecondition(format!(
            "only a finished job can be deleted; job {id} is {} (cancel it first)",
            job.state.as_str_name().trim_start_matches("JOB_STATE_")
        )));
    }
    let (expires, finished) = (job.expires, job.finished);
    state.jobs.remove(&key);
    let queue = state.queue(ns, id.queue());
    queue.done.remove(&(expires, id.to_string()));
    queue.dead.remove(&(finished, id.to_string()));
    queue.all.remove(&id.to_string());
    Ok(())
}
