//! The job store: every piece of job state, behind one type.
//!
//! Only this module talks to Redis. The API layer hands it validated
//! requests ([`crate::model`]) and gets back the contract's messages. The
//! embedded store of a later issue implements the same operations.

mod codec;
mod redis;
mod scripts;

pub use self::codec::timestamp as codec_timestamp;
pub use self::redis::{Heartbeat, Maintained, RedisStore, StoreOptions, Submitted};
