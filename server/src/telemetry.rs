//! Telemetry: the process's `tracing` subscriber (logs as text or JSON),
//! OpenTelemetry spans exported over OTLP/gRPC when the standard `OTEL_*`
//! variables ask for it, and the W3C trace context of incoming calls.
//!
//! Every jobctl RPC runs in a span ([`rpc_span`]) whose OpenTelemetry parent
//! is the caller's `traceparent`; the handlers record the job id on it. With
//! no `OTEL_*` configuration there is no OpenTelemetry layer at all: the
//! spans are plain `tracing` spans that only give log lines their fields.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The `service.name` of the server's spans unless `OTEL_SERVICE_NAME` (or
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
pub const SERVICE_NAME: &str = "jobctl-server";

/// The request id metadata key: kept with the job, echoed on Submit.
pub const REQUEST_ID: &str = "x-request-id";

/// The target of the RPC spans. They are DEBUG spans, so that with the
/// default log filter (`info`) and no export they are never even created:
/// log lines name their job themselves (`job_id = ...`).
pub const RPC_TARGET: &str = "jobctl::rpc";

/// Which spans go to OpenTelemetry: the RPC spans and everything at INFO
/// and above, but nothing of the transport crates, so that exporting a span
/// never makes new ones (and their debug spans would drown the traces).
const EXPORT_FILTER: &str = "info,jobctl::rpc=debug,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `OTEL_TRACES_EXPORTER` names an exporter this build does not have.
    #[error("OTEL_TRACES_EXPORTER={0:?} is not supported: use otlp or none")]
    UnsupportedExporter(String),
    /// The OTLP protocol asked for is not gRPC.
    #[error("{var}={value:?} is not supported: jobctl exports OTLP over grpc")]
    UnsupportedProtocol { var: &'static str, value: String },
    /// The OTLP exporter refused its configuration (a bad endpoint, say).
    #[error("otlp exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was installed before.
    #[error("a global tracing subscriber is already installed")]
    SubscriberSet(#[from] tracing_subscriber::util::TryInitError),
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Nothing configured (or `OTEL_SDK_DISABLED=true`, or
    /// `OTEL_TRACES_EXPORTER=none`): no OpenTelemetry layer, no exporter.
    Off,
    /// Spans go over OTLP/gRPC to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `http://localhost:4317`.
    Otlp,
}

impl Export {
    /// Reads the standard variables through `var`. Export is on when an
    /// OTLP endpoint is set or `OTEL_TRACES_EXPORTER=otlp`, and off when
    /// nothing is set: an unconfigured server never dials anywhere.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Export::Off);
        }
        let mut explicit = false;
        if let Some(exporters) = set("OTEL_TRACES_EXPORTER") {
            for exporter in exporters.split(',').map(str::trim) {
                match exporter {
                    "none" => return Ok(Export::Off),
                    "otlp" => explicit = true,
                    other => return Err(Error::UnsupportedExporter(other.to_owned())),
                }
            }
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        if !explicit && !endpoint {
            return Ok(Export::Off);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(name) {
                if value != "grpc" {
                    return Err(Error::UnsupportedProtocol { var: name, value });
                }
                break;
            }
        }
        Ok(Export::Otlp)
    }

    /// [`Export::from_vars`] of the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// A tracer provider exporting over OTLP/gRPC in batches, configured by the
/// `OTEL_*` variables (endpoint, headers, timeout, sampler, batch sizes,
/// resource), named `default_service_name` unless they name it. Must be
/// called inside a Tokio runtime, which must outlive the provider.
pub fn otlp_provider(default_service_name: &str) -> Result<SdkTracerProvider, Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = Resource::builder().build();
    let named = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let resource = if named {
        resource
    } else {
        Resource::builder()
            .with_service_name(default_service_name.to_owned())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The installed subscriber's exporter; flush it with
/// [`Telemetry::shutdown`] before the process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered and stops the exporter (for at most
    /// `timeout`).
    pub async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        // The flush blocks its thread while the runtime drives the export.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(timeout, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not flush the trace exporter"),
            Ok(Err(error)) => tracing::warn!(%error, "could not flush the trace exporter"),
            Err(_) => tracing::warn!("the trace exporter did not flush in time"),
        }
    }
}

/// Installs the process's subscriber: log lines (`format`, filtered by
/// `RUST_LOG`, default `info`) on stderr, plus the OpenTelemetry layer when
/// `export` is [`Export::Otlp`]. Must be called inside a Tokio runtime.
pub fn init(format: LogFormat, export: Export) -> Result<Telemetry, Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match export {
        Export::Off => {
            // Just the log lines, filtered globally: what is not logged is
            // never even made.
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match format {
                LogFormat::Text => fmt.finish().try_init()?,
                LogFormat::Json => fmt.json().finish().try_init()?,
            }
            return Ok(Telemetry { provider: None });
        }
        Export::Otlp => otlp_provider(SERVICE_NAME)?,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter);
    let otel = {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("jobctl-server"))
            .with_filter(EnvFilter::new(EXPORT_FILTER))
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// gRPC metadata (HTTP/2 headers) as a carrier of W3C trace context.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one jobctl RPC (`tonic`'s `trace_fn`): named after the
/// method, a child of the caller's `traceparent` when it sent one, with
/// `job_id` for the handler to record and the caller's `x-request-id`.
/// Other services (health, reflection) get no span. A DEBUG span of target
/// [`RPC_TARGET`]: only made when exported or logged.
pub fn rpc_span(request: &http::Request<()>) -> Span {
    let method = request.uri().path().trim_start_matches('/');
    if !method.starts_with("jobctl.") {
        return Span::none();
    }
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    let span = tracing::debug_span!(
        target: RPC_TARGET,
        "rpc",
        otel.name = method,
        otel.kind = "server",
        job_id = tracing::field::Empty,
        request_id,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, when there is nothing
        // to parent.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the job an RPC is about on its span.
pub fn record_job(job_id: &dyn std::fmt::Display) {
    Span::current().record("job_id", tracing::field::display(job_id));
}

/// Links `span` to the trace of a job's submitter, from the trace context
/// stored with the job (a lease is not part of that trace, but leads to it).
pub fn link_to_submitter(span: &Span, trace_context: &HashMap<String, String>) {
    let submitter = TraceContextPropagator::new().extract(trace_context);
    let context = submitter.span().span_context().clone();
    if context.is_valid() {
        span.add_link(context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(vars: &[(&str, &str)]) -> Result<Export, Error> {
        Export::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_is_exported_unless_configured() {
        assert_eq!(export(&[]).ok(), Some(Export::Off));
        assert_eq!(
            export(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_TRACES_SAMPLER", "always_on")
            ])
            .ok(),
            Some(Export::Off)
        );
        assert_eq!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).ok(),
            Some(Export::Off)
        );
    }

    #[test]
    fn an_endpoint_or_the_otlp_exporter_turns_export_on() {
        for vars in [
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")][..],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")][..],
            &[("OTEL_TRACES_EXPORTER", "otlp")][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ][..],
        ] {
            assert_eq!(export(vars).ok(), Some(Export::Otlp), "{vars:?}");
        }
    }

    #[test]
    fn disabling_wins_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(
            export(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).ok(),
            Some(Export::Off)
        );
        assert_eq!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).ok(),
            Some(Export::Off)
        );
    }

    #[test]
    fn unsupported_exporters_and_protocols_are_refused() {
        assert!(matches!(
            export(&[("OTEL_TRACES_EXPORTER", "zipkin")]),
            Err(Error::UnsupportedExporter(_))
        ));
        assert!(matches!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
            Err(Error::UnsupportedProtocol { .. })
        ));
        // The traces-specific protocol wins over the generic one.
        assert_eq!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ])
            .ok(),
            Some(Export::Otlp)
        );
    }
}
