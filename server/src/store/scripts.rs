//! The Lua scripts, one per transition, each with the shared prelude.
//!
//! Scripts publish with `redis.call(PUBLISH, channel, message)`: `PUBLISH`
//! is defined in front of the prelude, as `'PUBLISH'` on one Redis and as
//! `'SPUBLISH'` on a Redis Cluster, where each channel lies in its queue's
//! slot (sharded pub/sub: the message stays on the shard that owns the
//! queue instead of being broadcast to every node).

use redis::Script;

/// Every transition script, loaded once per process.
pub struct Scripts {
    pub submit_batch: Script,
    pub lease: Script,
    pub heartbeat: Script,
    pub complete_batch: Script,
    pub fail: Script,
    pub release: Script,
    pub cancel: Script,
    pub reap: Script,
    pub promote: Script,
    pub requeue: Script,
    pub expire: Script,
    pub events: Script,
    pub delete: Script,
    pub resume: Script,
    pub fire: Script,
    pub schedule: Script,
}

impl Scripts {
    /// The scripts; `sharded` on a Redis Cluster (they `SPUBLISH`).
    pub fn new(sharded: bool) -> Self {
        let publish = if sharded {
            "local PUBLISH = 'SPUBLISH'\n"
        } else {
            "local PUBLISH = 'PUBLISH'\n"
        };
        // Defined here so that it sees `publish`.
        macro_rules! script {
            ($file:literal) => {
                Script::new(&format!(
                    "{publish}{}{}",
                    include_str!("lua/prelude.lua"),
                    include_str!(concat!("lua/", $file))
                ))
            };
        }
        Scripts {
            submit_batch: script!("submit_batch.lua"),
            lease: script!("lease.lua"),
            heartbeat: script!("heartbeat.lua"),
            complete_batch: script!("complete_batch.lua"),
            fail: script!("fail.lua"),
            release: script!("release.lua"),
            cancel: script!("cancel.lua"),
            reap: script!("reap.lua"),
            promote: script!("promote.lua"),
            requeue: script!("requeue.lua"),
            expire: script!("expire.lua"),
            events: script!("events.lua"),
            delete: script!("delete.lua"),
            resume: script!("resume.lua"),
            fire: script!("fire.lua"),
            schedule: script!("schedule.lua"),
        }
    }
}

#[cfg(test)]
mod tests {
    /// A literal `'PUBLISH'` would broadcast on a cluster, where signals
    /// are sharded: scripts say `redis.call(PUBLISH, ...)`.
    #[test]
    fn scripts_publish_through_the_mode_s_command() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua");
        for entry in std::fs::read_dir(dir).expect("lua dir") {
            let path = entry.expect("entry").path();
            let source = std::fs::read_to_string(&path).expect("read script");
            for needle in ["'PUBLISH'", "\"PUBLISH\"", "'SPUBLISH'"] {
                assert!(
                    !source.contains(needle),
                    "{} calls {needle} directly; use redis.call(PUBLISH, ...)",
                    path.display()
                );
            }
        }
    }
}
