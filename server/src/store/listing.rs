//! What ListJobs and PurgeJobs walk, shared by both stores.
//!
//! A walk goes over a queue's jobs in the order of their ids (ULIDs: the
//! creation time, then randomness), which never changes, so a cursor (the
//! last id looked at) stays correct however jobs move between states: no
//! job is shown twice, and a job that stays in a listed state throughout
//! is shown once. Each page looks at no more than `scan_limit` jobs of the
//! index, and answers with a cursor even when it found fewer than a page
//! (like Redis `SCAN`).
//!
//! When the filter names exactly one state whose set is small (QUEUED,
//! SCHEDULED, RUNNING, FAILED: at most `scan_limit` jobs), the page is cut
//! from that set instead, sorted by id: the same walk, without scanning the
//! queue's other jobs.

use std::collections::{BTreeMap, HashMap};

use jobctl_proto::v1::{self, JobState};

/// Which jobs of a queue a page is cut from, and where the walk is.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub queue: String,
    /// Any of these states; empty for all.
    pub states: Vec<JobState>,
    pub kind: Option<String>,
    /// Every one of these labels must match.
    pub labels: BTreeMap<String, String>,
    /// Created at or after (ms since the epoch, the id's time).
    pub created_after_ms: Option<u64>,
    /// Created before.
    pub created_before_ms: Option<u64>,
    pub newest_first: bool,
    /// The id last looked at (exclusive), from the previous page.
    pub cursor: Option<String>,
    /// At most this many jobs in the page.
    pub page_size: usize,
    /// At most this many index entries looked at for the page.
    pub scan_limit: usize,
}

/// One page of a walk.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub jobs: Vec<v1::Job>,
    /// Where the next page starts; `None` when the walk is over.
    pub next: Option<String>,
}

/// The few fields a job is filtered on.
pub struct Facts<'a> {
    pub state: JobState,
    pub kind: &'a str,
    pub labels: &'a HashMap<String, String>,
}

impl ListQuery {
    /// Does a job with these facts belong in the listing.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        (self.states.is_empty() || self.states.contains(&facts.state))
            && self.kind.as_deref().is_none_or(|k| k == facts.kind)
            && self
                .labels
                .iter()
                .all(|(k, v)| facts.labels.get(k) == Some(v))
    }

    /// Does the filter look at anything but the id.
    pub fn filters(&self) -> bool {
        !self.states.is_empty() || self.kind.is_some() || !self.labels.is_empty()
    }

    /// The one state whose own set the page may be cut from.
    pub fn single_indexed_state(&self) -> Option<JobState> {
        match self.states.as_slice() {
            [
                s @ (JobState::Queued | JobState::Scheduled | JobState::Running | JobState::Failed),
            ] => Some(*s),
            _ => None,
        }
    }

    /// The lowest id of the walk's range (inclusive), from the time range.
    pub fn min_id(&self) -> Option<String> {
        self.created_after_ms
            .map(|t| format!("{}:{}", self.queue, ulid::Ulid::from_parts(t, 0)))
    }

    /// The id the walk's range ends before (exclusive), from the time range.
    pub fn end_id(&self) -> Option<String> {
        self.created_before_ms
            .map(|t| format!("{}:{}", self.queue, ulid::Ulid::from_parts(t, 0)))
    }

    /// Is `id` still ahead of the walk (after the cursor, inside the time
    /// range).
    pub fn ahead(&self, id: &str) -> bool {
        let min_ok = self.min_id().is_none_or(|m| id >= m.as_str());
        let end_ok = self.end_id().is_none_or(|e| id < e.as_str());
        let cursor_ok = match (&self.cursor, self.newest_first) {
            (None, _) => true,
            (Some(c), true) => id < c.as_str(),
            (Some(c), false) => id > c.as_str(),
        };
        min_ok && end_ok && cursor_ok
    }

    /// `ids` (members of one state's set) in the walk's order, those ahead
    /// of it only.
    pub fn order(&self, mut ids: Vec<String>) -> Vec<String> {
        ids.retain(|id| self.ahead(id));
        ids.sort_unstable();
        if self.newest_first {
            ids.reverse();
        }
        ids
    }

    /// `ZRANGE … BYLEX [REV]` bounds of the part of the index still ahead.
    pub fn lex_bounds(&self) -> (String, String) {
        let lower = self
            .min_id()
            .map_or_else(|| "-".to_owned(), |m| format!("[{m}"));
        let upper = self
            .end_id()
            .map_or_else(|| "+".to_owned(), |e| format!("({e}"));
        match (&self.cursor, self.newest_first) {
            // REV: from the upper bound down.
            (Some(c), true) => (format!("({c}"), lower),
            (None, true) => (upper, lower),
            (Some(c), false) => (format!("({c}"), upper),
            (None, false) => (lower, upper),
        }
    }
}

/// The states a purge may delete.
pub fn is_finished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}
