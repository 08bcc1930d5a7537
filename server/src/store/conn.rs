//! The store's one connection type, [`RedisConn`]: a single Redis, a Redis
//! Cluster (redis-rs's cluster-async client, which routes each command and
//! script by the slot of its first key), or the master a set of Sentinels
//! names (followed across a failover). It implements
//! [`redis::aio::ConnectionLike`] and is cheap to clone, so every script
//! call site works on any of them unchanged.
//!
//! With [`WaitReplicas`] on, every script call (every transition) is sent
//! with a `WAIT n timeout` behind it on the same connection, and answers
//! only once `n` replicas have the write: a write acknowledged to a caller
//! survives the loss of its master.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::error::{Error, Result};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its answer (on a cluster: with its
/// retries while a slot has no master), so a call never hangs.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a cluster command is retried (MOVED, TRYAGAIN, a lost node),
/// and the bounds of the wait between tries: a failover is waited out for
/// a few seconds, then the call fails UNAVAILABLE.
pub const CLUSTER_RETRIES: u32 = 6;
pub const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 50;
pub const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 1000;

/// Where the store's Redis is, from `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One Redis: `redis://`, `rediss://`, `unix://`.
    Single(String),
    /// A Redis Cluster: `redis+cluster://[user:pass@]host:port,host:port`
    /// (`rediss+cluster://` for TLS); each node as a `redis://` URL.
    Cluster(Vec<String>),
    /// Sentinels and the name of the master they watch:
    /// `redis+sentinel://[user:pass@]host:port,host:port/<master>[/<db>]`
    /// (`rediss+sentinel://` for TLS to the master).
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
}

impl Target {
    /// Reads `--redis-url`. The error never repeats the URL (it may hold a
    /// password).
    pub fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| Error::Startup(format!("invalid redis url: {why}"));
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                "no scheme (redis://, redis+cluster://, redis+sentinel://)",
            ));
        };
        let (base, kind) = match scheme {
            "redis+cluster" => ("redis", "cluster"),
            "rediss+cluster" => ("rediss", "cluster"),
            "redis+sentinel" => ("redis", "sentinel"),
            "rediss+sentinel" => ("rediss", "sentinel"),
            _ => return Ok(Target::Single(url.to_owned())),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(bad("no host:port"));
        }
        let mut addrs = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let (h, p) = host
                .rsplit_once(':')
                .ok_or_else(|| bad("every host needs a port (host:port)"))?;
            let port: u16 = p.parse().map_err(|_| bad("a port is not a number"))?;
            if h.is_empty() {
                return Err(bad("an empty host"));
            }
            addrs.push((h.to_owned(), port));
        }
        if kind == "cluster" {
            if !path.trim_matches('/').is_empty() {
                return Err(bad("a cluster has only database 0: no path"));
            }
            let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            return Ok(Target::Cluster(
                addrs
                    .iter()
                    .map(|(h, p)| format!("{base}://{auth}{h}:{p}/"))
                    .collect(),
            ));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let master = parts
            .next()
            .ok_or_else(|| bad("name the master: redis+sentinel://host:port/<master>"))?;
        let db = match parts.next() {
            Some(db) => db
                .parse()
                .map_err(|_| bad("the database is not a number"))?,
            None => 0,
        };
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| bad("bad percent-encoding in the credentials"))
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    Some(decode(user)?).filter(|u| !u.is_empty()),
                    Some(decode(pass)?),
                ),
                None => (Some(decode(u)?).filter(|u| !u.is_empty()), None),
            },
            None => (None, None),
        };
        Ok(Target::Sentinel {
            sentinels: addrs,
            master: master.to_owned(),
            db,
            username,
            password,
            tls: base == "rediss",
        })
    }

    /// Whether this is a cluster (signals then use sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `WAIT n timeout` after every script call: `--redis-wait-replicas` and
/// `--redis-wait-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The connection of a [`crate::store::RedisStore`]; see the module docs.
#[derive(Clone)]
pub struct RedisConn {
    kind: Kind,
    wait: Option<WaitReplicas>,
}

#[derive(Clone)]
enum Kind {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Sentinel>),
}

impl RedisConn {
    pub fn single(conn: ConnectionManager) -> Self {
        RedisConn {
            kind: Kind::Single(conn),
            wait: None,
        }
    }

    pub fn cluster(conn: ClusterConnection) -> Self {
        RedisConn {
            kind: Kind::Cluster(conn),
            wait: None,
        }
    }

    pub fn sentinel(sentinel: Arc<Sentinel>) -> Self {
        RedisConn {
            kind: Kind::Sentinel(sentinel),
            wait: None,
        }
    }

    /// This connection, with a `WAIT` after each script call.
    pub fn waiting(mut self, wait: Option<WaitReplicas>) -> Self {
        self.wait = wait.filter(|w| w.replicas > 0);
        self
    }

    /// This connection without `WAIT` (for the maintenance passes, whose
    /// writes no caller waits for).
    pub fn without_wait(&self) -> Self {
        RedisConn {
            kind: self.kind.clone(),
            wait: None,
        }
    }

    async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match &mut self.kind {
            Kind::Single(c) => c.req_packed_command(cmd).await,
            Kind::Cluster(c) => c.req_packed_command(cmd).await,
            Kind::Sentinel(s) => s.send(cmd).await,
        }
    }

    async fn send_pipeline(
        &mut self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match &mut self.kind {
            Kind::Single(c) => c.req_packed_commands(pipe, offset, count).await,
            Kind::Cluster(c) => c.req_packed_commands(pipe, offset, count).await,
            Kind::Sentinel(s) => s.send_pipeline(pipe, offset, count).await,
        }
    }

    /// A script call followed by `WAIT` on the same connection (a
    /// pipeline is routed by its first keyed command: the script's slot).
    async fn send_and_wait(&mut self, cmd: &Cmd, wait: WaitReplicas) -> RedisResult<Value> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
        let mut values = self.send_pipeline(&pipe, 0, 2).await?.into_iter();
        let (Some(reply), Some(acked)) = (values.next(), values.next()) else {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "a script and its WAIT answered with fewer than two replies",
            )));
        };
        let reply = reply.extract_error()?;
        let acked: i64 = redis::from_redis_value(acked.extract_error()?)?;
        if acked < i64::from(wait.replicas) {
            return Err(not_replicated(acked, wait));
        }
        Ok(reply)
    }
}

/// The error of a write that fewer replicas than asked confirmed in time:
/// an I/O-kind error, so callers get UNAVAILABLE and may retry.
fn not_replicated(acked: i64, wait: WaitReplicas) -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "the write was not confirmed by enough replicas",
        format!(
            "{acked} of {} replicas within {:?}",
            wait.replicas, wait.timeout
        ),
    ))
}

fn is_script(cmd: &Cmd) -> bool {
    cmd.args_iter().next().is_some_and(|a| match a {
        redis::Arg::Simple(name) => {
            name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
        }
        _ => false,
    })
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.wait {
                Some(wait) if is_script(cmd) => self.send_and_wait(cmd, wait).await,
                _ => self.send(cmd).await,
            }
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.send_pipeline(pipe, offset, count).boxed()
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            Kind::Single(c) => c.get_db(),
            Kind::Cluster(c) => c.get_db(),
            Kind::Sentinel(s) => s.db,
        }
    }
}

/// The master a set of Sentinels names, re-asked when it stops answering
/// as a master (refused, dropped, `READONLY` after a failover).
pub struct Sentinel {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    db: i64,
    /// The connection to the master last named, and its generation.
    current: Mutex<(u64, Option<ConnectionManager>)>,
}

impl Sentinel {
    pub fn new(target: &Target, tls: Option<redis::TlsCertificates>) -> Result<Arc<Self>> {
        let Target::Sentinel {
            sentinels,
            master,
            db,
            username,
            password,
            tls: use_tls,
        } = target
        else {
            return Err(Error::Startup("not a sentinel url".into()));
        };
        let addrs = sentinels
            .iter()
            .map(|(h, p)| redis::ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(|e| Error::Startup(format!("sentinel: {e}")))?
            .set_client_to_redis_db(*db);
        if let Some(user) = username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(pass) = password {
            builder = builder.set_client_to_redis_password(pass);
        }
        if *use_tls {
            builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = tls {
                builder = builder.set_client_to_redis_certificates(certs);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::Startup(format!("sentinel: {e}")))?;
        Ok(Arc::new(Sentinel {
            sentinels: tokio::sync::Mutex::new(client),
            config: manager_config(),
            db: *db,
            current: Mutex::new((0, None)),
        }))
    }

    /// A client of the master the Sentinels name now (for the signal
    /// subscription, which has a connection of its own).
    pub async fn master_client(&self) -> RedisResult<redis::Client> {
        self.sentinels.lock().await.async_get_client().await
    }

    /// The connection to the current master, asking the Sentinels when
    /// there is none.
    async fn master(&self) -> RedisResult<(u64, ConnectionManager)> {
        if let (generation, Some(conn)) = &*lock(&self.current) {
            return Ok((*generation, conn.clone()));
        }
        let mut sentinels = self.sentinels.lock().await;
        // Another call may have found it while this one waited.
        if let (generation, Some(conn)) = &*lock(&self.current) {
            return Ok((*generation, conn.clone()));
        }
        let client = sentinels.async_get_client().await?;
        let conn = ConnectionManager::new_with_config(client, self.config.clone()).await?;
        let mut current = lock(&self.current);
        current.0 += 1;
        current.1 = Some(conn.clone());
        tracing::info!("redis master found through sentinel");
        Ok((current.0, conn))
    }

    /// Forgets the master of `generation` after an error that says it no
    /// longer is one, so the next call asks the Sentinels.
    fn check(&self, generation: u64, error: &RedisError) {
        let moved = error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_io_error()
            || error.is_timeout()
            || matches!(
                error.kind(),
                ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
            );
        if moved {
            let mut current = lock(&self.current);
            if current.0 == generation && current.1.is_some() {
                tracing::warn!(%error, "redis master lost; asking the sentinels again");
                current.1 = None;
            }
        }
    }

    async fn send(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut conn) = self.master().await?;
        let result = conn.req_packed_command(cmd).await;
        if let Err(e) = &result {
            self.check(generation, e);
        }
        result
    }

    async fn send_pipeline(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut conn) = self.master().await?;
        let result = conn.req_packed_commands(pipe, offset, count).await;
        match &result {
            Err(e) => self.check(generation, e),
            Ok(values) => {
                for v in values {
                    if let Value::ServerError(e) = v {
                        self.check(generation, &RedisError::from(e.clone()));
                    }
                }
            }
        }
        result
    }
}

/// The settings of every single-node connection.
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A future of a client to subscribe with (the relay asks again after
/// each lost subscription).
pub type ClientSource =
    Box<dyn Fn() -> BoxFuture<'static, RedisResult<redis::Client>> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_target() {
        assert_eq!(
            Target::parse("redis://:pw@h:6379/2").expect("valid"),
            Target::Single("redis://:pw@h:6379/2".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://u:p@a:7000,b:7001").expect("valid"),
            Target::Cluster(vec![
                "redis://u:p@a:7000/".into(),
                "redis://u:p@b:7001/".into()
            ])
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:7000/").expect("valid"),
            Target::Cluster(vec!["rediss://a:7000/".into()])
        );
        assert_eq!(
            Target::parse("redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/3").expect("valid"),
            Target::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                master: "mymaster".into(),
                db: 3,
                username: None,
                password: Some("p@ss".into()),
                tls: false,
            }
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "redis+cluster://",
            "redis+cluster://secret@a",
            "redis+cluster://a:x",
            "redis+cluster://a:1/5",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/m/x",
            "nothing",
        ] {
            let e = Target::parse(bad).expect_err(bad).to_string();
            assert!(!e.contains("secret"), "{e}");
            assert!(e.starts_with("invalid redis url"), "{e}");
        }
    }
}
