//! How a [`Client`](crate::Client) reaches a server that wants credentials:
//! [`ConnectOptions`] (a bearer token, TLS, a client certificate) and the
//! [`Credentials`] interceptor that adds the token to every call.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// The channel every call of a [`Client`](crate::Client) goes through: the
/// connection, with the client's [`Credentials`] added to each call.
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer <token>` to every call (nothing when no
/// token is set). The token is marked sensitive, so it is never printed.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Self {
        Credentials::default()
    }

    /// A bearer token (an API key or a JWT).
    pub fn bearer(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(
                "the token must be printable ASCII without spaces".into(),
            ));
        }
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::InvalidArgument("the token is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Credentials {
            authorization: Some(value),
        })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Credentials and TLS settings of a connection.
///
/// ```
/// use jobctl_client::ConnectOptions;
///
/// let options = ConnectOptions::new()
///     .bearer_token("my-api-key")
///     .ca_certificate_pem(b"-----BEGIN CERTIFICATE-----\n...".to_vec());
/// // Client::connect_with("https://jobctl.example.com:50051", options).await?;
/// # drop(options);
/// ```
#[derive(Clone, Default)]
pub struct ConnectOptions {
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ConnectOptions {
    pub fn new() -> Self {
        ConnectOptions::default()
    }

    /// Sends `authorization: Bearer <token>` (an API key or a JWT) with
    /// every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this PEM CA certificate for the server's certificate (instead
    /// of the system's roots). Implies TLS.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key to the server (mTLS). Implies
    /// TLS.
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from
    /// the endpoint's host.
    pub fn tls_domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// How long connecting may take (default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Whether the connection uses TLS, given the endpoint's scheme.
    fn wants_tls(&self, endpoint: &Endpoint) -> bool {
        endpoint.uri().scheme_str() == Some("https")
            || self.ca_pem.is_some()
            || self.identity.is_some()
            || self.domain.is_some()
    }

    /// The configured endpoint and the credentials.
    pub(crate) fn apply(&self, endpoint: &str) -> Result<(Endpoint, Credentials)> {
        let invalid = |source| Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        };
        let mut configured = Endpoint::from_shared(endpoint.to_owned())
            .map_err(invalid)?
            .connect_timeout(
                self.connect_timeout
                    .unwrap_or(crate::DEFAULT_CONNECT_TIMEOUT),
            );
        if self.wants_tls(&configured) {
            if configured.uri().scheme_str() != Some("https") {
                return Err(Error::InvalidArgument(format!(
                    "endpoint {endpoint:?}: TLS settings need an https:// endpoint"
                )));
            }
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &self.domain {
                tls = tls.domain_name(domain.clone());
            }
            configured = configured.tls_config(tls).map_err(invalid)?;
        }
        let credentials = match &self.token {
            Some(token) => Credentials::bearer(token)?,
            None => Credentials::none(),
        };
        Ok((configured, credentials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_never_printed_and_tls_needs_https() {
        let creds = Credentials::bearer("very-secret").unwrap();
        assert!(!format!("{creds:?}").contains("very-secret"));
        let mut intercepted = creds.clone();
        let request = intercepted.call(Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer very-secret");
        assert!(!format!("{value:?}").contains("very-secret"));
        let options = ConnectOptions::new()
            .bearer_token("very-secret")
            .ca_certificate_pem(b"pem".to_vec());
        assert!(!format!("{options:?}").contains("very-secret"));
        assert!(options.apply("http://127.0.0.1:1").is_err());
        assert!(Credentials::bearer("caf\u{e9}").is_err());
    }
}
