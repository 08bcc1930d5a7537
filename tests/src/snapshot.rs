//! Every key of a Redis with its type and value, to prove that a refused
//! request wrote nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use redis::aio::MultiplexedConnection;

/// One stream entry: its id and its fields in order.
pub type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The value of one key. Members are sorted where Redis does not define an
/// order, so two snapshots of unchanged data compare equal.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredValue {
    /// A string.
    String(Vec<u8>),
    /// A hash: field to value.
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    /// A list, in order.
    List(Vec<Vec<u8>>),
    /// A set.
    Set(BTreeSet<Vec<u8>>),
    /// A sorted set: (member, score) in score order.
    ZSet(Vec<(Vec<u8>, String)>),
    /// A stream: entry id to fields, in order.
    Stream(Vec<StreamEntry>),
    /// Any other type, by name.
    Other(String),
}

impl StoredValue {
    /// The Redis type name (`string`, `hash`, ...).
    pub fn type_name(&self) -> &str {
        match self {
            StoredValue::String(_) => "string",
            StoredValue::Hash(_) => "hash",
            StoredValue::List(_) => "list",
            StoredValue::Set(_) => "set",
            StoredValue::ZSet(_) => "zset",
            StoredValue::Stream(_) => "stream",
            StoredValue::Other(name) => name,
        }
    }

    /// Whether any member, field, value or entry of this value contains
    /// `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        let has = |b: &[u8]| b.windows(n.len().max(1)).any(|w| w == n);
        match self {
            StoredValue::String(v) => has(v),
            StoredValue::Hash(h) => h.iter().any(|(k, v)| has(k) || has(v)),
            StoredValue::List(l) => l.iter().any(|v| has(v)),
            StoredValue::Set(s) => s.iter().any(|v| has(v)),
            StoredValue::ZSet(z) => z.iter().any(|(m, _)| has(m)),
            StoredValue::Stream(entries) => entries
                .iter()
                .any(|(_, fields)| fields.iter().any(|(k, v)| has(k) || has(v))),
            StoredValue::Other(_) => false,
        }
    }

    /// The hash fields, if this is a hash.
    pub fn as_hash(&self) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        match self {
            StoredValue::Hash(h) => Some(h),
            _ => None,
        }
    }
}

/// Bytes as readable text: ASCII as is, the rest escaped.
struct Text<'a>(&'a [u8]);

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredValue::String(v) => write!(f, "{:?}", Text(v)),
            StoredValue::Hash(h) => f
                .debug_map()
                .entries(h.iter().map(|(k, v)| (Text(k), Text(v))))
                .finish(),
            StoredValue::List(l) => f.debug_list().entries(l.iter().map(|v| Text(v))).finish(),
            StoredValue::Set(s) => f.debug_set().entries(s.iter().map(|v| Text(v))).finish(),
            StoredValue::ZSet(z) => f
                .debug_list()
                .entries(z.iter().map(|(m, score)| (Text(m), score)))
                .finish(),
            StoredValue::Stream(entries) => f
                .debug_list()
                .entries(entries.iter().map(|(id, fields)| {
                    (
                        id,
                        fields
                            .iter()
                            .map(|(k, v)| (Text(k), Text(v)))
                            .collect::<Vec<_>>(),
                    )
                }))
                .finish(),
            StoredValue::Other(name) => write!(f, "<{name}>"),
        }
    }
}

/// Every key of one Redis database with its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Key to value.
    pub keys: BTreeMap<String, StoredValue>,
}

impl Snapshot {
    /// Reads every key (SCAN) and its value.
    pub async fn take(conn: &mut MultiplexedConnection) -> Snapshot {
        let mut keys = BTreeMap::new();
        for key in all_keys(conn).await {
            if let Some(value) = read_value(conn, &key).await {
                keys.insert(key, value);
            }
        }
        Snapshot { keys }
    }

    /// The key names.
    pub fn key_names(&self) -> BTreeSet<String> {
        self.keys.keys().cloned().collect()
    }

    /// The keys whose name contains `needle`.
    pub fn keys_containing(&self, needle: &str) -> Vec<String> {
        self.keys
            .keys()
            .filter(|k| k.contains(needle))
            .cloned()
            .collect()
    }

    /// The keys whose name or value mentions `needle`.
    pub fn mentioning(&self, needle: &str) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(k, v)| k.contains(needle) || v.mentions(needle))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A readable list of what differs from `other` (empty when equal).
    pub fn diff(&self, other: &Snapshot) -> String {
        let mut out = String::new();
        for (key, value) in &self.keys {
            match other.keys.get(key) {
                None => {
                    let _ = writeln!(out, "- {key} ({}) removed", value.type_name());
                }
                Some(v) if v != value => {
                    let _ = writeln!(out, "~ {key} changed: {value:?} -> {v:?}");
                }
                Some(_) => {}
            }
        }
        for (key, value) in &other.keys {
            if !self.keys.contains_key(key) {
                let _ = writeln!(out, "+ {key} ({}) added: {value:?}", value.type_name());
            }
        }
        out
    }

    /// Panics, showing the difference, unless `after` equals `self`.
    pub fn assert_unchanged(&self, after: &Snapshot, context: &str) {
        let diff = self.diff(after);
        assert!(diff.is_empty(), "{context}: Redis changed:\n{diff}");
    }
}

/// Every key name (SCAN, so it works on big databases too).
pub async fn all_keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

async fn read_value(conn: &mut MultiplexedConnection, key: &str) -> Option<StoredValue> {
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TYPE");
    let value = match kind.as_str() {
        "none" => return None,
        "string" => StoredValue::String(
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(conn)
                .await
                .expect("GET")?,
        ),
        "hash" => StoredValue::Hash(
            redis::cmd("HGETALL")
                .arg(key)
                .query_async(conn)
                .await
                .expect("HGETALL"),
        ),
        "list" => StoredValue::List(
            redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .expect("LRANGE"),
        ),
        "set" => StoredValue::Set(
            redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(conn)
                .await
                .expect("SMEMBERS"),
        ),
        "zset" => StoredValue::ZSet(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(conn)
                .await
                .expect("ZRANGE"),
        ),
        "stream" => StoredValue::Stream(
            redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query_async(conn)
                .await
                .expect("XRANGE"),
        ),
        other => StoredValue::Other(other.to_owned()),
    };
    Some(value)
}
