//! A real Redis Cluster per test: several masters, each with replicas,
//! every one a [`RedisServer`] child process on free ports in its own
//! temporary directory; killed when dropped.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::redis_server::info_field;
use crate::{RedisOptions, RedisServer};

/// How to build a [`RedisCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub masters: usize,
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`: how long a silent master takes to be failed
    /// over. Low in failover tests; higher elsewhere, so that a loaded
    /// machine does not fail a node over by accident.
    pub node_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_secs(5),
        }
    }
}

/// One shard: the node that served its slots when the cluster was made,
/// and its replicas.
pub struct Shard {
    /// The first and last slot.
    pub slots: (u16, u16),
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
}

/// A Redis Cluster of [`RedisServer`]s; see the module docs.
pub struct RedisCluster {
    pub shards: Vec<Shard>,
}

/// The first and last slot of shard `i` of `n`.
fn slot_range(i: usize, n: usize) -> (u16, u16) {
    let per = 16384 / n;
    let first = i * per;
    let last = if i + 1 == n { 16383 } else { first + per - 1 };
    (first as u16, last as u16)
}

impl RedisCluster {
    /// Three masters with one replica each, `node_timeout` 5s.
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts the nodes, gives each master its share of the slots, joins
    /// them (`CLUSTER MEET`), makes the replicas (`CLUSTER REPLICATE`) and
    /// waits until every node says `cluster_state:ok`, sees every node,
    /// and every replica is in sync with its master.
    pub async fn start_with(options: ClusterOptions) -> Self {
        let node = || RedisOptions {
            cluster: true,
            cluster_member: true,
            extra_args: vec![
                "--cluster-node-timeout".into(),
                options.node_timeout.as_millis().to_string(),
                // A replica may always take over, however long it was cut off.
                "--cluster-replica-validity-factor".into(),
                "0".into(),
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ],
            ..RedisOptions::default()
        };
        let mut shards = Vec::new();
        for i in 0..options.masters {
            let master = RedisServer::start_with(node()).await;
            let mut replicas = Vec::new();
            for _ in 0..options.replicas_per_master {
                replicas.push(RedisServer::start_with(node()).await);
            }
            shards.push(Shard {
                slots: slot_range(i, options.masters),
                master,
                replicas,
            });
        }
        let cluster = RedisCluster { shards };
        for shard in &cluster.shards {
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(shard.slots.0)
                .arg(shard.slots.1)
                .query_async(&mut shard.master.conn().await)
                .await
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let first = &cluster.shards[0].master;
        for node in cluster.nodes().skip(1) {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(first.port())
                .arg(first.cluster_port().expect("cluster bus port"))
                .query_async(&mut node.conn().await)
                .await
                .expect("CLUSTER MEET");
        }
        let total = cluster.nodes().count();
        cluster
            .until_every_node("every node to see every other", |info, _| {
                info_field(info, "cluster_known_nodes") == Some(total.to_string())
            })
            .await;
        for shard in &cluster.shards {
            let id = node_id(&shard.master).await;
            for replica in &shard.replicas {
                let mut conn = replica.conn().await;
                let deadline = Instant::now() + Duration::from_secs(20);
                // The replica may not know the master's id for a moment.
                loop {
                    let done: redis::RedisResult<()> = redis::cmd("CLUSTER")
                        .arg("REPLICATE")
                        .arg(&id)
                        .query_async(&mut conn)
                        .await;
                    match done {
                        Ok(()) => break,
                        Err(e) => assert!(Instant::now() < deadline, "CLUSTER REPLICATE: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        cluster.until_ready().await;
        cluster
    }

    /// Every node, masters and replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.shards
            .iter()
            .flat_map(|s| std::iter::once(&s.master).chain(&s.replicas))
    }

    /// `redis+cluster://127.0.0.1:<port>,…` naming every master.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .shards
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.master.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Waits until every running node says `cluster_state:ok`, every slot
    /// is served, and every replica still running has its master's data
    /// (`master_link_status:up`, the same replication offset).
    pub async fn until_ready(&self) {
        self.until_every_node("cluster_state:ok with every slot served", |cluster, _| {
            info_field(cluster, "cluster_state").as_deref() == Some("ok")
                && info_field(cluster, "cluster_slots_ok").as_deref() == Some("16384")
        })
        .await;
        self.until_every_node("every replica in sync", |_, replication| {
            info_field(replication, "role").as_deref() != Some("slave")
                || info_field(replication, "master_link_status").as_deref() == Some("up")
        })
        .await;
    }

    async fn until_every_node(&self, what: &str, ok: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = String::new();
            let mut all = true;
            for node in self.nodes().filter(|n| n.pid().is_some()) {
                let mut conn = node.conn().await;
                let cluster: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !ok(&cluster, &replication) {
                    all = false;
                    last = format!("node {}:\n{cluster}\n{replication}", node.port());
                    break;
                }
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach {what} within 30s; {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The slot of a key (`CLUSTER KEYSLOT`).
    pub async fn slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.shards[0].master.conn().await)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// The shard that owns the keys of queue `queue` of namespace `ns`
    /// (their hash tag is `{<ns>:<queue>}`).
    pub async fn shard_of(&self, ns: &str, queue: &str) -> usize {
        let slot = self.slot(&format!("{{{ns}:{queue}}}")).await;
        self.shards
            .iter()
            .position(|s| s.slots.0 <= slot && slot <= s.slots.1)
            .expect("every slot has a shard")
    }

    /// One queue name per shard (`<base>-<n>`, namespace `default`), so a
    /// test puts work on every master.
    pub async fn queue_per_shard(&self, base: &str) -> Vec<String> {
        let mut names: Vec<Option<String>> = vec![None; self.shards.len()];
        for n in 0.. {
            let name = format!("{base}-{n}");
            let shard = self.shard_of("default", &name).await;
            if names[shard].is_none() {
                names[shard] = Some(name);
            }
            if names.iter().all(Option::is_some) {
                break;
            }
        }
        names.into_iter().flatten().collect()
    }

    /// A connection to the node that serves `slot` now (the shard's
    /// replica after a failover).
    pub async fn serving(&self, shard: usize) -> MultiplexedConnection {
        let s = &self.shards[shard];
        for node in std::iter::once(&s.master)
            .chain(&s.replicas)
            .filter(|n| n.pid().is_some())
        {
            let mut conn = node.conn().await;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if info_field(&info, "role").as_deref() == Some("master") {
                return conn;
            }
        }
        panic!("no running master for shard {shard}");
    }
}

/// A node's cluster id (`CLUSTER MYID`).
pub async fn node_id(node: &RedisServer) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut node.conn().await)
        .await
        .expect("CLUSTER MYID")
}
