//! The Lua scripts, one per transition, each with the shared prelude.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

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
}

impl Scripts {
    pub fn new() -> Self {
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
        }
    }
}
