//! Schedules in Redis: `schedule.lua` for create, update, pause, resume and
//! delete, `fire.lua` for each fire and TriggerSchedule (see
//! `store/schedules.rs`).

use std::collections::HashMap;

use jobctl_proto::v1;
use redis::{AsyncCommands, Value};

use super::{RedisStore, job_fields};
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::model::NewJob;
use crate::store::codec::Reply;
use crate::store::schedules::{
    Due, Fire, FireAction, Fired, RECENT_RUNS, Run, ScheduleId, ScheduleRecord, ScheduleStore,
};

/// Reads a schedule record from its fields.
fn record(id: ScheduleId, fields: &HashMap<String, Vec<u8>>) -> Option<ScheduleRecord> {
    let spec = fields.get("sp")?.clone();
    let text = |k: &str| {
        fields
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let num = |k: &str| text(k).parse::<u64>().unwrap_or_default();
    Some(ScheduleRecord {
        id: Some(id),
        spec,
        paused: text("pa") == "1",
        created_ms: num("ct"),
        updated_ms: num("ua"),
        after_ms: num("af"),
        version: num("ver"),
        fired: num("fi"),
        skipped: num("sk"),
        missed: num("mi"),
        current: text("cur"),
        buffered_ms: num("buf"),
    })
}

/// A flat HGETALL reply as a map.
fn fields_of(value: &Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let items: &[Value] = match value {
        Value::Array(items) => items,
        _ => &[],
    };
    for pair in items.chunks(2) {
        if let [Value::BulkString(k), Value::BulkString(v)] = pair {
            out.insert(String::from_utf8_lossy(k).into_owned(), v.clone());
        }
    }
    out
}

fn run_of(entry: &str) -> Option<Run> {
    let mut parts = entry.splitn(3, ',');
    let fire_ms = parts.next()?.parse().ok()?;
    let outcome = v1::ScheduleRunOutcome::try_from(parts.next()?.parse::<i32>().ok()?).ok()?;
    Some(Run {
        fire_ms,
        outcome,
        job_id: parts.next().unwrap_or_default().to_owned(),
    })
}

impl RedisStore {
    /// One call of schedule.lua.
    async fn schedule_op(
        &self,
        ns: &str,
        id: &ScheduleId,
        op: &str,
        spec: &[u8],
        paused: bool,
    ) -> Result<Option<ScheduleRecord>> {
        let qk = self.keys.queue(ns, id.queue());
        let value: Value = self
            .scripts
            .schedule
            .key(qk.schedule(id.name()))
            .key(qk.schedules())
            .key(qk.schedule_runs(id.name()))
            .arg(op)
            .arg(id.name())
            .arg(spec)
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => Ok(reply
                .0
                .get(1)
                .and_then(|v| record(id.clone(), &fields_of(v)))),
            "missing" => Err(Error::ScheduleNotFound(id.to_string())),
            "exists" => Err(Error::ScheduleExists(id.to_string())),
            other => Err(Error::Corrupt(format!(
                "unexpected schedule reply {other:?}"
            ))),
        }
    }

    async fn schedule_record(
        &self,
        ns: &str,
        id: &ScheduleId,
        op: &str,
        spec: &[u8],
        paused: bool,
    ) -> Result<ScheduleRecord> {
        self.schedule_op(ns, id, op, spec, paused)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("schedule {id} has no spec")))
    }

    /// One call of fire.lua.
    async fn fire_call(
        &self,
        qk: &QueueKeys,
        id: &ScheduleId,
        action: &str,
        fire: Option<&Fire>,
        job: Option<&NewJob>,
        fire_ms: u64,
    ) -> Result<Fired> {
        let schedule = qk.schedule(id.name());
        let mut inv = self.scripts.fire.prepare_invoke();
        inv.key(&schedule)
            .key(qk.schedules())
            .key(qk.schedule_runs(id.name()));
        match job {
            Some(job) => {
                inv.key(qk.job(&job.id));
                match &job.idempotency_key {
                    Some(k) => inv.key(qk.idempotency(k)),
                    None => inv.key(&schedule),
                };
            }
            None => {
                inv.key(&schedule).key(&schedule);
            }
        }
        inv.key(qk.ready())
            .key(qk.sched())
            .key(qk.seq())
            .key(qk.done());
        let current = fire.map_or("", |f| f.current.as_str());
        match crate::keys::JobId::parse(current) {
            Ok(prev) if prev.queue() == id.queue() => {
                inv.key(qk.job(&prev)).key(qk.events(&prev));
            }
            _ => {
                inv.key(&schedule).key(&schedule);
            }
        }
        let next = fire
            .and_then(|f| f.next_ms)
            .map_or_else(|| "+inf".to_owned(), |n| n.to_string());
        inv.arg(action)
            .arg(id.name())
            .arg(fire.map_or(0, |f| f.version))
            .arg(fire.map_or(0, |f| f.after_ms))
            .arg(current)
            .arg(fire_ms)
            .arg(fire.map_or(0, |f| f.new_after_ms))
            .arg(fire.map_or(0, |f| f.missed))
            .arg(next)
            .arg(fire.map_or(0, |f| f.recheck_ms))
            .arg(fire.map_or(0, |f| f.overlap as i32))
            .arg(self.cap())
            .arg(self.keys.wake_channel())
            .arg(qk.tag())
            .arg(
                u64::try_from(self.options.idempotency_ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(RECENT_RUNS);
        match job {
            Some(job) => {
                inv.arg(job.id.to_string())
                    .arg(&job.request_hash)
                    .arg(job.run_at_ms);
                for (name, value) in job_fields(job) {
                    inv.arg(name).arg(value.as_ref());
                }
            }
            None => {
                inv.arg("").arg("").arg(0);
            }
        }
        let value: Value = inv.invoke_async(&mut self.conn()).await?;
        let reply = Reply::of(&value)?;
        Ok(match reply.str(0) {
            "made" => Fired::Made {
                job_id: reply.str(1).to_owned(),
                deduplicated: reply.int(2) == 1,
            },
            "skipped" => Fired::Skipped,
            "buffered" => Fired::Buffered,
            "waiting" => Fired::Waiting,
            "advanced" => Fired::Advanced,
            "stale" => Fired::Stale,
            "early" => Fired::Early,
            "missing" => return Err(Error::ScheduleNotFound(id.to_string())),
            other => return Err(Error::Corrupt(format!("unexpected fire reply {other:?}"))),
        })
    }
}

#[tonic::async_trait]
impl ScheduleStore for RedisStore {
    async fn create_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
        paused: bool,
    ) -> Result<ScheduleRecord> {
        let qk = self.keys.queue(ns, id.queue());
        self.register(&qk).await?;
        let _: i64 = self
            .conn()
            .sadd(self.keys.schedule_registry(), qk.tag())
            .await?;
        self.schedule_record(ns, id, "create", spec, paused).await
    }

    async fn get_schedule(&self, ns: &str, id: &ScheduleId) -> Result<(ScheduleRecord, Vec<Run>)> {
        let qk = self.keys.queue(ns, id.queue());
        let (fields, runs): (HashMap<String, Vec<u8>>, Vec<String>) = redis::pipe()
            .hgetall(qk.schedule(id.name()))
            .lrange(qk.schedule_runs(id.name()), 0, -1)
            .query_async(&mut self.conn())
            .await?;
        let record =
            record(id.clone(), &fields).ok_or_else(|| Error::ScheduleNotFound(id.to_string()))?;
        Ok((record, runs.iter().filter_map(|r| run_of(r)).collect()))
    }

    async fn list_schedules(&self, ns: &str, queue: Option<&str>) -> Result<Vec<ScheduleRecord>> {
        let tags: Vec<String> = self.conn().smembers(self.keys.schedule_registry()).await?;
        let mut queues: Vec<String> = tags
            .iter()
            .filter_map(|t| t.split_once(':'))
            .filter(|(n, q)| *n == ns && queue.is_none_or(|want| want == *q))
            .map(|(_, q)| q.to_owned())
            .collect();
        queues.sort();
        let mut out = Vec::new();
        for q in queues {
            let qk = self.keys.queue(ns, &q);
            let names: Vec<String> = self.conn().zrange(qk.schedules(), 0, -1).await?;
            if names.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.hgetall(qk.schedule(name));
            }
            let records: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut self.conn()).await?;
            for (name, fields) in names.iter().zip(records) {
                if let Some(r) = record(ScheduleId::new(&q, name), &fields) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn update_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
    ) -> Result<ScheduleRecord> {
        self.schedule_record(ns, id, "update", spec, false).await
    }

    async fn delete_schedule(&self, ns: &str, id: &ScheduleId) -> Result<()> {
        self.schedule_op(ns, id, "delete", &[], false).await?;
        Ok(())
    }

    async fn pause_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        paused: bool,
    ) -> Result<ScheduleRecord> {
        self.schedule_record(ns, id, if paused { "pause" } else { "resume" }, &[], false)
            .await
    }

    async fn trigger_schedule(&self, ns: &str, id: &ScheduleId, job: &NewJob) -> Result<String> {
        let qk = self.keys.queue(ns, id.queue());
        match self
            .fire_call(&qk, id, "trigger", None, Some(job), 0)
            .await?
        {
            Fired::Made { job_id, .. } => Ok(job_id),
            other => Err(Error::Corrupt(format!(
                "unexpected trigger outcome {other:?}"
            ))),
        }
    }

    async fn due_schedules(&self, limit: usize) -> Result<Due> {
        let tags: Vec<String> = self.conn().smembers(self.keys.schedule_registry()).await?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        let now = secs * 1000 + micros / 1000;
        let queues: Vec<(&str, &str)> = tags.iter().filter_map(|t| t.split_once(':')).collect();
        let mut pipe = redis::pipe();
        for (ns, q) in &queues {
            let qk = self.keys.queue(ns, q);
            pipe.cmd("ZRANGE")
                .arg(qk.schedules())
                .arg("-inf")
                .arg(now)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .cmd("ZRANGE")
                .arg(qk.schedules())
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .arg("WITHSCORES");
        }
        let mut due = Due {
            now_ms: now,
            ..Due::default()
        };
        if queues.is_empty() {
            return Ok(due);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let mut wanted: Vec<(String, ScheduleId)> = Vec::new();
        for ((ns, q), pair) in queues.iter().zip(replies.chunks(2)) {
            let [names, next] = pair else { continue };
            let names: Vec<String> = redis::from_redis_value(names.clone()).unwrap_or_default();
            for name in names {
                if wanted.len() < limit {
                    wanted.push(((*ns).to_owned(), ScheduleId::new(q, &name)));
                }
            }
            let next: Vec<(String, f64)> =
                redis::from_redis_value(next.clone()).unwrap_or_default();
            if let Some((_, at)) = next.first()
                && at.is_finite()
            {
                let at = *at as u64;
                due.next_ms = Some(due.next_ms.map_or(at, |n| n.min(at)));
            }
        }
        if wanted.is_empty() {
            return Ok(due);
        }
        let mut pipe = redis::pipe();
        for (ns, id) in &wanted {
            pipe.hgetall(self.keys.queue(ns, id.queue()).schedule(id.name()));
        }
        let records: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut self.conn()).await?;
        for ((ns, id), fields) in wanted.into_iter().zip(records) {
            if let Some(r) = record(id, &fields) {
                due.schedules.push((ns, r));
            }
        }
        Ok(due)
    }

    async fn fire_schedule(&self, ns: &str, fire: &Fire) -> Result<Fired> {
        let qk = self.keys.queue(ns, fire.id.queue());
        let (action, job, fire_ms) = match &fire.action {
            FireAction::Tick { fire_ms, job } => ("tick", Some(job.as_ref()), *fire_ms),
            FireAction::Release { fire_ms, job } => ("release", Some(job.as_ref()), *fire_ms),
            FireAction::Advance => ("advance", None, 0),
        };
        self.fire_call(&qk, &fire.id, action, Some(fire), job, fire_ms)
            .await
    }
}
