//! Static API keys from a file (a mounted Kubernetes Secret, say).
//!
//! One key per line, fields separated by spaces, `#` starts a comment:
//!
//! ```text
//! # key                      namespace  roles            name (optional)
//! sha256:9f86d081884c7d65…   acme       client           acme-web
//! sha256:2c26b46b68ffc68f…   acme       worker           acme-workers
//! sha256:fcde2b2edba56bf4…   ops        operator
//! ```
//!
//! A key is given as `sha256:<hex>` (the SHA-256 of the key, so the file
//! holds no secret), or in the clear (at least 16 characters), which is
//! hashed as the file is read. Keys are compared by their hashes in constant
//! time; API keys must be random and long (32 random bytes, say), since a
//! plain SHA-256 does not slow down guessing a weak one.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Error, Identity, Method, Roles, valid_namespace};

/// Shortest key accepted in the clear.
const MIN_KEY_CHARS: usize = 16;

#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    namespace: String,
    roles: Roles,
    name: String,
}

/// The keys of one file.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.entries.len())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ApiKeys {
    /// Reads and checks a key file.
    pub fn from_file(path: &Path) -> Result<ApiKeys, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            what: "the API key file",
            path: path.to_owned(),
            source,
        })?;
        ApiKeys::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Reads the file's text. Errors name the line, never the key.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [key, namespace, roles, rest @ ..] = fields.as_slice() else {
                return Err(at("expected `<key> <namespace> <roles> [name]`".into()));
            };
            if rest.len() > 1 {
                return Err(at("too many fields (a name has no spaces)".into()));
            }
            let hash = match key.strip_prefix("sha256:") {
                Some(hex_hash) => hex::decode(hex_hash)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| at("sha256: must be followed by 64 hex digits".into()))?,
                None if key.chars().count() < MIN_KEY_CHARS => {
                    return Err(at(format!(
                        "a key in the clear must be at least {MIN_KEY_CHARS} characters"
                    )));
                }
                None => sha256(key.as_bytes()),
            };
            valid_namespace(namespace).map_err(at)?;
            let roles = Roles::parse_list(roles).map_err(at)?;
            if roles.is_empty() {
                return Err(at("name at least one role".into()));
            }
            if entries.iter().any(|e| e.hash == hash) {
                return Err(at("the same key is listed twice".into()));
            }
            let name = rest.first().map_or_else(
                || format!("key-{}", &hex::encode(hash)[..8]),
                |s| (*s).to_owned(),
            );
            entries.push(Entry {
                hash,
                namespace: (*namespace).to_owned(),
                roles,
                name,
            });
        }
        Ok(ApiKeys { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of a presented key, if it is one of the file's. Every
    /// entry is compared, each in constant time.
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found.map(|e| Identity {
            subject: e.name.clone(),
            namespace: e.namespace.clone(),
            roles: e.roles,
            method: Method::ApiKey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn keys_in_the_clear_and_hashed_are_found() {
        let hashed = hex::encode(sha256(b"second-key-0123456789"));
        let text = format!(
            "# comment\n\nfirst-key-0123456789 acme client,worker web\nsha256:{hashed} ops operator # trailing\n"
        );
        let keys = ApiKeys::parse(&text).expect("valid file");
        assert_eq!(keys.len(), 2);
        let web = keys.lookup("first-key-0123456789").expect("first key");
        assert_eq!(
            (web.namespace.as_str(), web.subject.as_str()),
            ("acme", "web")
        );
        assert!(web.roles.contains(Role::Worker));
        let ops = keys.lookup("second-key-0123456789").expect("second key");
        assert_eq!(ops.namespace, "ops");
        assert!(ops.subject.starts_with("key-"));
        assert!(keys.lookup("first-key-012345678").is_none());
        assert!(keys.lookup("").is_none());
    }

    #[test]
    fn bad_lines_are_refused_without_showing_the_key() {
        for (text, says) in [
            ("short acme client", "at least 16"),
            ("sha256:abcd acme client", "64 hex"),
            ("long-enough-key-000 bad:ns client", "namespace"),
            ("long-enough-key-000 acme admin", "unknown role"),
            ("long-enough-key-000 acme", "expected"),
            ("long-enough-key-000 acme client a b", "too many"),
            (
                "long-enough-key-000 acme client\nlong-enough-key-000 b worker",
                "twice",
            ),
        ] {
            let err = ApiKeys::parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains("long-enough-key"), "{err}");
        }
    }
}
