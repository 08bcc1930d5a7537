//! A Sentinel-managed Redis per test: a master, its replicas and a few
//! `redis-server --sentinel` processes watching it, each a [`RedisServer`]
//! on a free port in its own temporary directory; killed when dropped.

use std::time::{Duration, Instant};

use crate::redis_server::info_field;
use crate::{RedisOptions, RedisServer};

/// The name the Sentinels know the master by.
pub const MASTER_NAME: &str = "jobctl-master";

/// A master, its replicas and the Sentinels that watch it.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// A master, one replica and three Sentinels (quorum 2) that call a
    /// master down after `down_after` without an answer; ready once every
    /// Sentinel knows the replica and the other Sentinels, and the replica
    /// is in sync.
    pub async fn start(down_after: Duration) -> Self {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with(RedisOptions {
            extra_args: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port().to_string(),
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ],
            ..RedisOptions::default()
        })
        .await;
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {}\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            master.port(),
            down_after.as_millis()
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(
                RedisServer::start_with(RedisOptions {
                    sentinel_config: Some(config.clone()),
                    ..RedisOptions::default()
                })
                .await,
            );
        }
        let set = RedisSentinels {
            master,
            replicas: vec![replica],
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = set.in_sync().await;
            for sentinel in &set.sentinels {
                let info: String = redis::cmd("INFO")
                    .arg("sentinel")
                    .query_async(&mut sentinel.conn().await)
                    .await
                    .unwrap_or_default();
                // master0:name=…,status=ok,address=…,slaves=1,sentinels=3
                let line = info_field(&info, "master0").unwrap_or_default();
                ready &= line.contains("status=ok")
                    && line.contains("slaves=1")
                    && line.contains("sentinels=3");
            }
            if ready {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not see the master, its replica and each other within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every running replica is in sync with its master.
    async fn in_sync(&self) -> bool {
        for replica in self.replicas.iter().filter(|r| r.pid().is_some()) {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica.conn().await)
                .await
                .unwrap_or_default();
            if info_field(&info, "master_link_status").as_deref() != Some("up") {
                return false;
            }
        }
        true
    }

    /// `redis+sentinel://127.0.0.1:<port>,…/<MASTER_NAME>`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", nodes.join(","))
    }

    /// The port of the master the Sentinels name now.
    pub async fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .query_async(&mut self.sentinels[0].conn().await)
            .await
            .ok()
            .flatten();
        addr.map(|(_, port)| port)
    }
}
