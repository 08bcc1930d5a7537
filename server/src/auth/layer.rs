//! The tower layer that authenticates each jobctl request once.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::{Authenticator, Role};

/// The RPCs that need an identity: every jobctl service. Health checking
/// (`grpc.health.v1`) and reflection stay open.
const AUTHENTICATED_PREFIX: &str = "/jobctl.";

/// The role each service's RPCs need. The handlers check it again (and
/// read the namespace); checking here refuses a caller before its request
/// body is read.
fn required_role(path: &str) -> Option<Role> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    match service {
        "jobctl.v1.JobService" => Some(Role::Client),
        "jobctl.v1.WorkerService" => Some(Role::Worker),
        "jobctl.v1.AdminService" => Some(Role::Operator),
        // A schedule is standing Submits: whoever may submit may schedule.
        "jobctl.v1.ScheduleService" => Some(Role::Client),
        _ => None,
    }
}

/// Authenticates requests to the jobctl services and puts the caller's
/// [`super::Identity`] in the request's extensions; answers
/// `UNAUTHENTICATED` (without reading the body) when it cannot.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(AUTHENTICATED_PREFIX) {
            return Either::Right(self.inner.call(request));
        }
        let connection = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|tls| (tls.peer_certs(), tls.get_ref().remote_addr()));
        let (certs, remote) = match connection {
            Some((certs, remote)) => (certs, remote),
            None => (
                None,
                request
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr),
            ),
        };
        let certs = certs.as_deref().map(Vec::as_slice);
        match self.auth.authenticate(request.headers(), certs) {
            Ok(identity) => {
                if let Some(role) = required_role(request.uri().path())
                    && !identity.roles.contains(role)
                {
                    tracing::debug!(
                        subject = %identity.subject,
                        rpc = request.uri().path(),
                        %role,
                        "refused a call the caller's roles do not allow"
                    );
                    let error = crate::error::Error::PermissionDenied {
                        subject: identity.subject,
                        role,
                    };
                    return Either::Left(ready(Ok(Status::from(error).into_http())));
                }
                tracing::trace!(
                    subject = %identity.subject,
                    namespace = %identity.namespace,
                    roles = %identity.roles,
                    "authenticated"
                );
                request.extensions_mut().insert(identity);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(
                    %error,
                    rpc = request.uri().path(),
                    remote = ?remote,
                    "refused an unauthenticated call"
                );
                Either::Left(ready(Ok(
                    Status::unauthenticated(error.to_string()).into_http()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_needs_its_role() {
        assert_eq!(
            required_role("/jobctl.v1.JobService/Submit"),
            Some(Role::Client)
        );
        assert_eq!(
            required_role("/jobctl.v1.WorkerService/Lease"),
            Some(Role::Worker)
        );
        assert_eq!(
            required_role("/jobctl.v1.AdminService/Requeue"),
            Some(Role::Operator)
        );
        assert_eq!(required_role("/jobctl.v1.Nope/X"), None);
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
    }
}
