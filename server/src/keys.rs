//! Job ids and the Redis key layout.
//!
//! Every key of one queue shares the Redis Cluster hash tag
//! `{<namespace>:<queue>}`, so each transition script touches one slot. A
//! job id is `<queue>:<ulid>`, so a job's keys follow from its id and the
//! caller's namespace alone:
//!
//! ```text
//! <prefix>:{<ns>:<queue>}:job:<ulid>   hash    the job record
//! <prefix>:{<ns>:<queue>}:ev:<ulid>    stream  its events, entry id <seq>-0
//! <prefix>:{<ns>:<queue>}:ready        zset    QUEUED, by priority then FIFO
//! <prefix>:{<ns>:<queue>}:sched        zset    SCHEDULED, by run time
//! <prefix>:{<ns>:<queue>}:active       zset    RUNNING, by lease expiry
//! <prefix>:{<ns>:<queue>}:dead         zset    FAILED (dead letters), by failure time
//! <prefix>:{<ns>:<queue>}:done         zset    every finished job, by expiry time
//! <prefix>:{<ns>:<queue>}:all          zset    every job, score 0: by id (ListJobs)
//! <prefix>:{<ns>:<queue>}:paused       string  "1" while the queue is paused
//! <prefix>:{<ns>:<queue>}:seq          string  FIFO counter of the ready set
//! <prefix>:{<ns>:<queue>}:idem:<key>   hash    an idempotency key's job and request hash
//! <prefix>:queues                      set     every "<ns>:<queue>" (for the reaper)
//! <prefix>:wake                        channel "<ns>:<queue>" when work is ready
//! <prefix>:{<ns>:<queue>}:wake         channel the same, on a Redis Cluster (sharded)
//! (the event stream's name)             channel its newest sequence number, on every event
//! ```
//!
//! On a Redis Cluster ([`Keyspace::sharded`]) the wake channel is one per
//! queue, under the queue's hash tag, so scripts `SPUBLISH` it in their own
//! shard and only the node that owns the queue carries its signals.

use std::fmt;

use crate::error::Error;

/// Is `name` a valid queue name or namespace: 1 or more of `[A-Za-z0-9_.-]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `<ns>:<queue>`: names one queue of one namespace (the hash tag's content,
/// the registry member and the wake message).
pub fn queue_tag(ns: &str, queue: &str) -> String {
    format!("{ns}:{queue}")
}

/// A job id: the job's queue and a ULID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobId {
    queue: String,
    ulid: ulid::Ulid,
}

impl JobId {
    /// A new id in `queue`.
    pub fn new(queue: &str) -> Self {
        JobId {
            queue: queue.to_owned(),
            ulid: ulid::Ulid::new(),
        }
    }

    /// Reads an id; anything that is not one is an unknown job.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let not_found = || Error::NotFound(id.chars().take(200).collect());
        let (queue, ulid) = id.rsplit_once(':').ok_or_else(not_found)?;
        if !is_valid_name(queue) {
            return Err(not_found());
        }
        let ulid = ulid::Ulid::from_string(ulid).map_err(|_| not_found())?;
        Ok(JobId {
            queue: queue.to_owned(),
            ulid,
        })
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The ULID part.
    pub fn ulid(&self) -> &ulid::Ulid {
        &self.ulid
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.queue, self.ulid)
    }
}

/// Names of the keys and channels under one prefix.
#[derive(Clone, Debug)]
pub struct Keyspace {
    prefix: String,
    sharded: bool,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Self {
        Keyspace {
            prefix: prefix.to_owned(),
            sharded: false,
        }
    }

    /// The keyspace on a Redis Cluster: a wake channel per queue, in the
    /// queue's slot (sharded pub/sub).
    pub fn sharded(prefix: &str) -> Self {
        Keyspace {
            prefix: prefix.to_owned(),
            sharded: true,
        }
    }

    /// Whether signals use sharded channels (one wake channel per queue).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The keys of one queue of one namespace.
    pub fn queue(&self, ns: &str, queue: &str) -> QueueKeys {
        QueueKeys {
            base: format!("{}:{{{ns}:{queue}}}:", self.prefix),
            tag: queue_tag(ns, queue),
            shared_wake: (!self.sharded).then_some(self.prefix.len()),
        }
    }

    /// The queue (`<ns>:<queue>`) of a sharded wake channel.
    pub fn parse_wake_channel<'c>(&self, channel: &'c str) -> Option<&'c str> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:wake")
    }

    /// The set of every known `<ns>:<queue>`.
    pub fn registry(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// The pattern of every job's event channel (a channel is named after
    /// the job's event stream; its messages are sequence numbers).
    pub fn events_pattern(&self) -> String {
        format!("{}:{{*}}:ev:*", self.prefix)
    }

    /// The namespace and job of an event channel (or stream key).
    pub fn parse_events_key(&self, key: &str) -> Option<(String, JobId)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let (tag, ulid) = rest.split_once("}:ev:")?;
        let (ns, queue) = tag.split_once(':')?;
        let id = JobId::parse(&format!("{queue}:{ulid}")).ok()?;
        Some((ns.to_owned(), id))
    }

    /// The channel that says a queue has ready work (one Redis; on a
    /// cluster each queue has its own, [`QueueKeys::wake_channel`]).
    pub fn wake_channel(&self) -> String {
        format!("{}:wake", self.prefix)
    }
}

/// The keys of one queue (all sharing one hash tag).
#[derive(Clone, Debug)]
pub struct QueueKeys {
    base: String,
    tag: String,
    /// The length of the prefix when the wake channel is shared; `None` on
    /// a cluster (the queue has its own).
    shared_wake: Option<usize>,
}

impl QueueKeys {
    /// `<ns>:<queue>`: the hash tag's content, the registry member and the
    /// wake message.
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// The channel the scripts publish this queue's tag on when it has
    /// ready work: `<prefix>:wake`, or `<prefix>:{<ns>:<queue>}:wake` on a
    /// cluster.
    pub fn wake_channel(&self) -> String {
        match self.shared_wake {
            None => format!("{}wake", self.base),
            Some(n) => format!("{}:wake", &self.base[..n]),
        }
    }
    pub fn ready(&self) -> String {
        format!("{}ready", self.base)
    }
    pub fn sched(&self) -> String {
        format!("{}sched", self.base)
    }
    pub fn active(&self) -> String {
        format!("{}active", self.base)
    }
    pub fn dead(&self) -> String {
        format!("{}dead", self.base)
    }
    pub fn done(&self) -> String {
        format!("{}done", self.base)
    }
    /// Every job of the queue by id (score 0, so ordered by the ULID:
    /// creation order, which never changes); walked by ListJobs.
    pub fn all(&self) -> String {
        format!("{}all", self.base)
    }
    /// Present while the queue is paused.
    pub fn paused(&self) -> String {
        format!("{}paused", self.base)
    }
    pub fn seq(&self) -> String {
        format!("{}seq", self.base)
    }
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.base)
    }
    /// The record of the job `id` (which must be of this queue).
    pub fn job(&self, id: &JobId) -> String {
        format!("{}job:{}", self.base, id.ulid)
    }
    /// The event history of the job `id`.
    pub fn events(&self, id: &JobId) -> String {
        format!("{}ev:{}", self.base, id.ulid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_round_trips_and_names_keys_with_one_hash_tag() {
        let id = JobId::new("emails");
        let parsed = JobId::parse(&id.to_string()).expect("valid id");
        assert_eq!(parsed, id);
        let keys = Keyspace::new("jobctl").queue("default", parsed.queue());
        for key in [
            keys.job(&id),
            keys.events(&id),
            keys.ready(),
            keys.idempotency("k"),
        ] {
            assert!(key.starts_with("jobctl:{default:emails}:"), "{key}");
        }
    }

    #[test]
    fn event_keys_name_their_job() {
        let keyspace = Keyspace::new("jobctl");
        let id = JobId::new("emails");
        let key = keyspace.queue("tenant-a", "emails").events(&id);
        assert_eq!(
            keyspace.parse_events_key(&key),
            Some(("tenant-a".to_owned(), id))
        );
        assert_eq!(keyspace.parse_events_key("other:{a:b}:ev:x"), None);
    }

    #[test]
    fn wake_channels_are_shared_on_one_redis_and_per_queue_on_a_cluster() {
        let single = Keyspace::new("jobctl");
        assert_eq!(
            single.queue("ns", "q").wake_channel(),
            single.wake_channel()
        );
        let sharded = Keyspace::sharded("jobctl");
        let channel = sharded.queue("ns", "q").wake_channel();
        assert_eq!(channel, "jobctl:{ns:q}:wake");
        assert_eq!(sharded.parse_wake_channel(&channel), Some("ns:q"));
        assert_eq!(sharded.parse_wake_channel("jobctl:{ns:q}:ev:x"), None);
    }

    #[test]
    fn malformed_ids_are_not_found() {
        for bad in [
            "",
            ":",
            "emails",
            "emails:",
            "emails:nope",
            "a b:01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "{x}:01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            assert!(
                matches!(JobId::parse(bad), Err(Error::NotFound(_))),
                "{bad}"
            );
        }
    }
}
