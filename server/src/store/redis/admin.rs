//! The operators' side of the Redis store: listing jobs (a walk over the
//! queue's `all` index, see `store/listing.rs`), pausing queues, deleting
//! and purging finished jobs, re-queueing dead letters in bulk.
//!
//! A listing changes nothing, so it is plain reads (no script): the index
//! range, then the few fields the filter needs, then the records of the
//! jobs it keeps. A deletion or re-queue is one script per job
//! (`delete.lua`, `requeue.lua`), pipelined.

use std::collections::HashMap;

use jobctl_proto::v1::JobState;
use redis::{AsyncCommands, Value};

use super::{RedisStore, refusal, state_name};
use crate::error::{Error, Result};
use crate::keys::{JobId, QueueKeys};
use crate::store::codec::{self, Record, Reply};
use crate::store::listing::{Facts, ListPage, ListQuery};

/// A job's state, kind and labels (HMGET st k lb).
type FilterFields = (Option<i64>, Option<String>, Option<Vec<u8>>);

/// The fewest index entries read in one round trip of a walk.
const CHUNK_MIN: usize = 64;

impl RedisStore {
    /// The ids of one page of a walk, and where the next page starts.
    pub(super) async fn walk(
        &self,
        qk: &QueueKeys,
        query: &ListQuery,
    ) -> Result<(Vec<String>, Option<String>)> {
        let mut conn = self.conn();
        if let Some(state) = query.single_indexed_state() {
            let set = match state {
                JobState::Queued => qk.ready(),
                JobState::Scheduled => qk.sched(),
                JobState::Running => qk.active(),
                _ => qk.dead(),
            };
            let stop = isize::try_from(query.scan_limit).unwrap_or(isize::MAX);
            let members: Vec<String> = conn.zrange(&set, 0, stop).await?;
            if members.len() <= query.scan_limit {
                let room = query.page_size;
                return self.pick(qk, query, query.order(members), true, room).await;
            }
        }
        let mut ids = Vec::new();
        let mut cursor = query.clone();
        let mut scanned = 0;
        while scanned < query.scan_limit && ids.len() < query.page_size {
            let want = (query.scan_limit - scanned)
                .min((2 * (query.page_size - ids.len())).max(CHUNK_MIN));
            let (from, to) = cursor.lex_bounds();
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(qk.all()).arg(from).arg(to).arg("BYLEX");
            if query.newest_first {
                cmd.arg("REV");
            }
            cmd.arg("LIMIT").arg(0).arg(want);
            let chunk: Vec<String> = cmd.query_async(&mut conn).await?;
            let ended = chunk.len() < want;
            scanned += chunk.len();
            let room = query.page_size - ids.len();
            let (mut kept, next) = self.pick(qk, query, chunk, ended, room).await?;
            ids.append(&mut kept);
            match next {
                None => return Ok((ids, None)),
                Some(next) => cursor.cursor = Some(next),
            }
        }
        Ok((ids, cursor.cursor))
    }

    /// Of `candidates` (in the walk's order), those the filter keeps, up to
    /// `room`; and the cursor after the last one looked at (`None` when
    /// `last` says no more follow them and all were looked at).
    async fn pick(
        &self,
        qk: &QueueKeys,
        query: &ListQuery,
        mut candidates: Vec<String>,
        last: bool,
        room: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        candidates.retain(|c| JobId::parse(c).is_ok());
        if candidates.is_empty() {
            return Ok((Vec::new(), if last { None } else { query.cursor.clone() }));
        }
        let facts: Vec<FilterFields> = if query.filters() {
            let mut pipe = redis::pipe();
            for id in &candidates {
                let job = JobId::parse(id)?;
                pipe.cmd("HMGET")
                    .arg(qk.job(&job))
                    .arg("st")
                    .arg("k")
                    .arg("lb");
            }
            pipe.query_async(&mut self.conn()).await?
        } else {
            Vec::new()
        };
        let mut kept = Vec::new();
        let mut looked = 0;
        let no_labels = HashMap::new();
        for (i, id) in candidates.iter().enumerate() {
            looked = i + 1;
            let keep = if query.filters() {
                match facts.get(i) {
                    Some((Some(st), kind, labels)) => {
                        let labels = match labels {
                            Some(b) => codec::decode_map(b)?,
                            None => HashMap::new(),
                        };
                        query.matches(&Facts {
                            state: codec::state(*st),
                            kind: kind.as_deref().unwrap_or_default(),
                            labels: if labels.is_empty() {
                                &no_labels
                            } else {
                                &labels
                            },
                        })
                    }
                    _ => false,
                }
            } else {
                true
            };
            if keep {
                kept.push(id.clone());
                if kept.len() == room {
                    break;
                }
            }
        }
        let next = if last && looked == candidates.len() {
            None
        } else {
            Some(candidates[looked - 1].clone())
        };
        Ok((kept, next))
    }

    pub(super) async fn list_jobs_page(&self, ns: &str, query: &ListQuery) -> Result<ListPage> {
        let qk = self.keys.queue(ns, &query.queue);
        let (ids, next) = self.walk(&qk, query).await?;
        let ids: Vec<JobId> = ids.iter().filter_map(|id| JobId::parse(id).ok()).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(qk.job(id));
            }
            let records: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut self.conn()).await?;
            for (id, fields) in ids.iter().zip(records) {
                // Deleted since it was picked: not listed.
                if let Some(record) = Record::new(fields) {
                    jobs.push(record.into_job(id.to_string())?);
                }
            }
        }
        Ok(ListPage { jobs, next })
    }

    pub(super) async fn set_queue_paused(&self, ns: &str, queue: &str, paused: bool) -> Result<()> {
        let qk = self.keys.queue(ns, queue);
        self.register(&qk).await?;
        if paused {
            let _: () = self.conn().set(qk.paused(), "1").await?;
        } else {
            let _: i64 = self
                .scripts
                .resume
                .key(qk.paused())
                .arg(qk.wake_channel())
                .arg(qk.tag())
                .invoke_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }

    fn delete_invocation(&self, qk: &QueueKeys, id: &JobId) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.delete.prepare_invoke();
        inv.key(qk.job(id))
            .key(qk.events(id))
            .key(qk.done())
            .key(qk.dead())
            .key(qk.all())
            .arg(id.to_string());
        inv
    }

    pub(super) async fn delete_job(&self, ns: &str, id: &JobId) -> Result<()> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .delete_invocation(&qk, id)
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok(()),
            "stale" => Err(Error::FailedPrecondition(format!(
                "only a finished job can be deleted; job {id} is {} (cancel it first)",
                state_name(codec::state(reply.int(1)))
            ))),
            _ => Err(refusal(&reply, id, "delete")),
        }
    }

    pub(super) async fn purge_page(
        &self,
        ns: &str,
        query: &ListQuery,
    ) -> Result<(u64, Option<String>)> {
        let qk = self.keys.queue(ns, &query.queue);
        let (ids, next) = self.walk(&qk, query).await?;
        let ids: Vec<JobId> = ids.iter().filter_map(|id| JobId::parse(id).ok()).collect();
        if ids.is_empty() {
            return Ok((0, next));
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&self.scripts.delete).ignore();
        for id in &ids {
            pipe.invoke_script(&self.delete_invocation(&qk, id));
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let mut deleted = 0;
        for value in &replies {
            if Reply::of(value)?.str(0) == "ok" {
                deleted += 1;
            }
        }
        Ok((deleted, next))
    }

    pub(super) async fn requeue_dead(
        &self,
        ns: &str,
        queue: &str,
        limit: usize,
    ) -> Result<(u64, u64)> {
        let qk = self.keys.queue(ns, queue);
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let ids: Vec<String> = self.conn().zrange(qk.dead(), 0, stop).await?;
        let ids: Vec<JobId> = ids.iter().filter_map(|id| JobId::parse(id).ok()).collect();
        let mut requeued = 0;
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            pipe.load_script(&self.scripts.requeue).ignore();
            for id in &ids {
                let mut inv = self.scripts.requeue.prepare_invoke();
                inv.key(qk.job(id))
                    .key(qk.events(id))
                    .key(qk.ready())
                    .key(qk.dead())
                    .key(qk.done())
                    .key(qk.seq())
                    .arg(id.to_string())
                    .arg(self.cap())
                    .arg(qk.wake_channel())
                    .arg(qk.tag());
                pipe.invoke_script(&inv);
            }
            let replies: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
            for value in &replies {
                if Reply::of(value)?.str(0) == "ok" {
                    requeued += 1;
                }
            }
        }
        let remaining: u64 = self.conn().zcard(qk.dead()).await?;
        Ok((requeued, remaining))
    }
}
