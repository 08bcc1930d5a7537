//! Who is calling: authentication (API keys, JWTs, client certificates)
//! and the [`Identity`] every jobctl RPC runs as.
//!
//! [`AuthLayer`] authenticates each request once, before its body is read,
//! and puts the caller's [`Identity`] in the request's extensions; the
//! handlers read the namespace from it and check the role the RPC needs
//! (`api::namespace`). With authentication off every caller is
//! [`Identity::anonymous`]: the `default` namespace with every role.
//! Health checking and reflection are never authenticated.
//!
//! **Invariant:** a credential never reaches a log line or an error message;
//! an API key is kept only as its SHA-256 hash.

mod api_keys;
mod jwt;
mod layer;
mod mtls;

use std::fmt;
use std::sync::Arc;

pub use api_keys::ApiKeys;
pub use jwt::JwtVerifier;
pub use layer::{AuthLayer, AuthService};
pub use mtls::{CertIdentity, CertificateAuth};

use crate::config::{AuthConfig, AuthMethod};
use crate::keys::is_valid_name;

/// The namespace of callers while authentication is off.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest namespace a credential may carry.
pub const MAX_NAMESPACE_BYTES: usize = 64;

/// Why authentication could not be set up, or why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A credential file could not be read.
    #[error("cannot read {what} {path:?}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The authentication configuration is wrong (start-up).
    #[error("{0}")]
    Config(String),

    /// The caller sent no credential.
    #[error("missing credentials: send `authorization: Bearer <token>`{0}")]
    Missing(&'static str),

    /// The caller's credential is not valid (unknown, malformed, expired).
    #[error("invalid credentials: {0}")]
    Invalid(String),
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Submit, GetStatus, Cancel, WatchProgress.
    Client,
    /// Lease, Heartbeat, Complete, Fail, Release.
    Worker,
    /// ListFailed, Requeue, GetQueueStats.
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Client, Role::Worker, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Operator => "operator",
        }
    }

    /// Reads a role name (case-insensitive).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(name.trim()))
    }

    fn bit(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Worker => 2,
            Role::Operator => 4,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub fn all() -> Roles {
        Role::ALL.into_iter().collect()
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Reads a comma- or space-separated list of role names; an unknown
    /// name is an error.
    pub fn parse_list(list: &str) -> Result<Roles, String> {
        let mut roles = Roles::NONE;
        for name in list.split([',', ' ']).filter(|s| !s.trim().is_empty()) {
            roles.insert(Role::parse(name).ok_or_else(|| {
                format!("unknown role {name:?} (roles are client, worker, operator)")
            })?);
        }
        Ok(roles)
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut roles = Roles::NONE;
        for role in iter {
            roles.insert(role);
        }
        roles
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Role::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::as_str)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Authentication is off.
    Anonymous,
    ApiKey,
    Jwt,
    ClientCertificate,
}

/// A verified caller: its namespace (tenant) and roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Who, for logs: an API key's name, a JWT's `sub`, a certificate's
    /// subject. Never a credential.
    pub subject: String,
    /// The tenant every job the caller names lives in.
    pub namespace: String,
    pub roles: Roles,
    pub method: Method,
}

impl Identity {
    /// Every caller while authentication is off.
    pub fn anonymous() -> Identity {
        Identity {
            subject: "anonymous".to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            roles: Roles::all(),
            method: Method::Anonymous,
        }
    }
}

/// Checks a namespace a credential names.
fn valid_namespace(ns: &str) -> Result<(), String> {
    if ns.len() > MAX_NAMESPACE_BYTES || !is_valid_name(ns) {
        return Err(format!(
            "the namespace must be 1 to {MAX_NAMESPACE_BYTES} characters of [A-Za-z0-9_.-]"
        ));
    }
    Ok(())
}

/// Every configured way to authenticate, built once at start-up.
#[derive(Default)]
pub struct Authenticator {
    api_keys: Option<ApiKeys>,
    jwt: Option<JwtVerifier>,
    certificates: Option<CertificateAuth>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("methods", &self.methods())
            .finish()
    }
}

impl Authenticator {
    /// Authentication off: every caller is [`Identity::anonymous`].
    pub fn off() -> Authenticator {
        Authenticator::default()
    }

    /// Reads the key files the configuration names. Which methods are on:
    /// those `--auth` lists, or, without `--auth`, those whose files are
    /// configured; none means off.
    pub fn from_config(config: &AuthConfig, tls_client_ca: bool) -> Result<Authenticator, Error> {
        let methods = config.methods(tls_client_ca)?;
        let mut auth = Authenticator::default();
        for method in methods {
            match method {
                AuthMethod::None => {}
                AuthMethod::ApiKey => {
                    let path = config.api_keys_file.as_ref().ok_or_else(|| {
                        Error::Config("--auth api-key needs --api-keys-file".into())
                    })?;
                    auth.api_keys = Some(ApiKeys::from_file(path)?);
                }
                AuthMethod::Jwt => auth.jwt = Some(JwtVerifier::from_config(config)?),
                AuthMethod::Mtls => {
                    if !tls_client_ca {
                        return Err(Error::Config(
                            "--auth mtls needs --tls-cert, --tls-key and --tls-client-ca".into(),
                        ));
                    }
                    auth.certificates = Some(CertificateAuth::from_config(config)?);
                }
            }
        }
        Ok(auth)
    }

    /// Whether any method is on.
    pub fn is_on(&self) -> bool {
        self.api_keys.is_some() || self.jwt.is_some() || self.certificates.is_some()
    }

    /// The methods that are on, by name.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::new();
        if self.api_keys.is_some() {
            methods.push("api-key");
        }
        if self.jwt.is_some() {
            methods.push("jwt");
        }
        if self.certificates.is_some() {
            methods.push("mtls");
        }
        methods
    }

    /// Whether client certificates authenticate callers.
    pub fn uses_certificates(&self) -> bool {
        self.certificates.is_some()
    }

    /// Whether a caller may authenticate without a client certificate.
    pub fn accepts_bearer_tokens(&self) -> bool {
        self.api_keys.is_some() || self.jwt.is_some()
    }

    /// Who sent a request with these headers over a connection that
    /// presented `peer_certs` (DER, leaf first).
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_certs: Option<&[impl AsRef<[u8]>]>,
    ) -> Result<Identity, Error> {
        if !self.is_on() {
            return Ok(Identity::anonymous());
        }
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            if !self.accepts_bearer_tokens() {
                return Err(Error::Invalid(
                    "this server takes client certificates, not tokens".into(),
                ));
            }
            let token = bearer_token(value)?;
            if let Some(keys) = &self.api_keys
                && let Some(identity) = keys.lookup(token)
            {
                return Ok(identity);
            }
            return match &self.jwt {
                Some(jwt) if token.split('.').count() == 3 => jwt.verify(token),
                _ => Err(Error::Invalid("unknown token".into())),
            };
        }
        if let Some(certs) = &self.certificates
            && let Some(leaf) = peer_certs.and_then(|c| c.first())
        {
            return certs.identity(leaf.as_ref());
        }
        Err(Error::Missing(if self.certificates.is_some() {
            " or a client certificate"
        } else {
            ""
        }))
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(value: &http::HeaderValue) -> Result<&str, Error> {
    let malformed = || Error::Invalid("the authorization header must be `Bearer <token>`".into());
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

/// The shared, cheap-to-clone authenticator.
pub type SharedAuthenticator = Arc<Authenticator>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists_parse_and_print() {
        let roles = Roles::parse_list("client, Worker").expect("valid");
        assert!(roles.contains(Role::Client) && roles.contains(Role::Worker));
        assert!(!roles.contains(Role::Operator));
        assert_eq!(roles.to_string(), "client,worker");
        assert!(Roles::parse_list("admin").is_err());
        assert_eq!(Roles::parse_list("").expect("empty"), Roles::NONE);
    }

    #[test]
    fn bearer_tokens_are_read_and_malformed_headers_refused() {
        let ok = http::HeaderValue::from_static("Bearer abc.def");
        assert_eq!(bearer_token(&ok).expect("bearer"), "abc.def");
        let lower = http::HeaderValue::from_static("bearer  xyz");
        assert_eq!(bearer_token(&lower).expect("bearer"), "xyz");
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            let v = http::HeaderValue::from_static(bad);
            assert!(bearer_token(&v).is_err(), "{bad}");
        }
    }

    #[test]
    fn off_means_anonymous_in_the_default_namespace_with_every_role() {
        let auth = Authenticator::off();
        let id = auth
            .authenticate(&http::HeaderMap::new(), None::<&[Vec<u8>]>)
            .expect("anonymous");
        assert_eq!(id.namespace, DEFAULT_NAMESPACE);
        assert_eq!(id.roles, Roles::all());
    }
}
