//! Validation of the operators' listing requests (ListJobs, PurgeJobs):
//! every field checked, before the store is asked anything.

use std::time::UNIX_EPOCH;

use jobctl_proto::v1::{self, JobState, ListOrder};

use super::{Validator, invalid, timestamp};
use crate::error::Result;
use crate::keys::JobId;
use crate::store::ListQuery;
use crate::store::listing::is_finished;

const DEFAULT_LIST_PAGE: u32 = 50;
const MAX_LIST_PAGE: u32 = 1000;
const DEFAULT_PURGE_PAGE: u32 = 1000;
const MAX_PURGE_PAGE: u32 = 10_000;

/// A page token: the walk's direction and the id it stopped at.
pub fn page_token(query: &ListQuery, next: Option<String>) -> String {
    next.and_then(|id| JobId::parse(&id).ok())
        .map(|id| {
            let dir = if query.newest_first { 'n' } else { 'o' };
            format!("{dir}.{}", id.ulid())
        })
        .unwrap_or_default()
}

fn page_size(field: &'static str, n: u32, default: u32, max: u32) -> Result<usize> {
    match n {
        0 => Ok(default as usize),
        n if n <= max => Ok(n as usize),
        _ => Err(invalid(field, format!("must be at most {max}"))),
    }
}

impl Validator {
    fn list_filter(
        &self,
        queue: &str,
        filter: Option<&v1::JobFilter>,
        newest_first: bool,
        token: &str,
    ) -> Result<ListQuery> {
        self.queue("queue", queue)?;
        let mut query = ListQuery {
            queue: queue.to_owned(),
            newest_first,
            scan_limit: self.limits.list_scan_limit as usize,
            ..ListQuery::default()
        };
        if let Some(f) = filter {
            for &s in &f.states {
                match JobState::try_from(s) {
                    Ok(JobState::Unspecified) | Err(_) => {
                        return Err(invalid("filter.states", format!("{s} is not a job state")));
                    }
                    Ok(state) if !query.states.contains(&state) => query.states.push(state),
                    Ok(_) => {}
                }
            }
            if !f.kind.is_empty() {
                self.name("filter.kind", &f.kind)?;
                query.kind = Some(f.kind.clone());
            }
            if f.labels.len() > self.limits.max_labels {
                return Err(invalid(
                    "filter.labels",
                    format!("more than {} labels", self.limits.max_labels),
                ));
            }
            for (k, v) in &f.labels {
                if k.is_empty()
                    || k.len() > self.limits.max_label_key_bytes
                    || v.len() > self.limits.max_label_value_bytes
                {
                    return Err(invalid(
                        "filter.labels",
                        "a key or value is longer than a label may be",
                    ));
                }
                query.labels.insert(k.clone(), v.clone());
            }
            let ms = |field, t: &Option<prost_types::Timestamp>| -> Result<Option<u64>> {
                let Some(t) = t else { return Ok(None) };
                let t = timestamp(field, t)?;
                let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                // A ULID's time has 48 bits.
                Ok(Some(
                    u64::try_from(ms).unwrap_or(u64::MAX).min((1 << 48) - 1),
                ))
            };
            query.created_after_ms = ms("filter.created_after", &f.created_after)?;
            query.created_before_ms = ms("filter.created_before", &f.created_before)?;
            if let (Some(a), Some(b)) = (query.created_after_ms, query.created_before_ms)
                && b < a
            {
                return Err(invalid(
                    "filter.created_before",
                    "must not be before created_after",
                ));
            }
        }
        if !token.is_empty() {
            let bad = || invalid("page_token", "is not a token this server handed out");
            let (dir, ulid) = token.split_once('.').ok_or_else(bad)?;
            let expected = if newest_first { "n" } else { "o" };
            if dir != expected {
                return Err(invalid(
                    "page_token",
                    "was handed out for a walk in the other order",
                ));
            }
            let ulid = ulid::Ulid::from_string(ulid).map_err(|_| bad())?;
            query.cursor = Some(format!("{queue}:{ulid}"));
        }
        Ok(query)
    }

    /// A ListJobs request as a page of a walk.
    pub fn list_jobs(&self, req: &v1::ListJobsRequest) -> Result<ListQuery> {
        let newest_first = match ListOrder::try_from(req.order) {
            Ok(ListOrder::Unspecified | ListOrder::NewestFirst) => true,
            Ok(ListOrder::OldestFirst) => false,
            Err(_) => return Err(invalid("order", format!("{} is not an order", req.order))),
        };
        let mut query = self.list_filter(
            &req.queue,
            req.filter.as_ref(),
            newest_first,
            &req.page_token,
        )?;
        query.page_size = page_size("page_size", req.page_size, DEFAULT_LIST_PAGE, MAX_LIST_PAGE)?;
        Ok(query)
    }

    /// A PurgeJobs request as a page of a walk (oldest first) over
    /// finished jobs.
    pub fn purge_jobs(&self, req: &v1::PurgeJobsRequest) -> Result<ListQuery> {
        let mut query =
            self.list_filter(&req.queue, req.filter.as_ref(), false, &req.page_token)?;
        if let Some(s) = query.states.iter().find(|s| !is_finished(**s)) {
            return Err(invalid(
                "filter.states",
                format!(
                    "only finished jobs can be purged, not {}",
                    s.as_str_name().trim_start_matches("JOB_STATE_")
                ),
            ));
        }
        if query.states.is_empty() {
            query.states = vec![JobState::Succeeded, JobState::Failed, JobState::Cancelled];
        }
        query.page_size = page_size(
            "page_size",
            req.page_size,
            DEFAULT_PURGE_PAGE,
            MAX_PURGE_PAGE,
        )?;
        Ok(query)
    }

    /// How many dead letters one RequeueFailed takes.
    pub fn requeue_limit(&self, limit: u32) -> Result<usize> {
        page_size("limit", limit, DEFAULT_PURGE_PAGE, MAX_PURGE_PAGE)
    }
}
