//! Tracing: every attempt runs in a span that continues the submitter's
//! trace, and OpenTelemetry export over OTLP when the standard `OTEL_*`
//! variables ask for it.
//!
//! Each attempt's handler runs inside a `tracing` span named `job` with the
//! fields `job_id`, `kind`, `queue`, `attempt`, `worker_id` and `request_id`
//! (so every log line the handler writes carries them). Its OpenTelemetry
//! parent is the submitter's span, read from the W3C `traceparent` and
//! `tracestate` the job was submitted with; the worker's own calls about the
//! job (`Heartbeat`, `Complete`, `Fail`) carry the job span's `traceparent`,
//! so the server's spans for them join the same trace.
//!
//! That takes an OpenTelemetry layer in your `tracing` subscriber. With the
//! `otlp` feature (on by default), [`init_from_env`] installs a subscriber
//! (log lines on stderr filtered by `RUST_LOG`, plus export when
//! configured), or [`Telemetry::from_env`] gives you the layer to add to a
//! subscriber of your own:
//!
//! ```no_run
//! # #[cfg(feature = "otlp")]
//! # async fn example() -> Result<(), jobctl_worker::Error> {
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! let telemetry = jobctl_worker::telemetry::Telemetry::from_env("thumbnailer")?;
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(telemetry.layer())
//!     .init();
//! // ... run the worker ...
//! telemetry.shutdown().await; // exports what is still buffered
//! # Ok(())
//! # }
//! ```
//!
//! Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (or `OTEL_TRACES_EXPORTER=otlp`,
//! which means `http://localhost:4317`), and off when none is, or when
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: then there is no
//! layer, no exporter and no connection. The other standard variables apply
//! as usual: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`.
//! Only OTLP over gRPC is built in.

use std::collections::HashMap;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context key of the submitter's request id.
pub const REQUEST_ID: &str = "x-request-id";

/// The span an attempt runs in, a child of the submitter's span (when the
/// subscriber has an OpenTelemetry layer and the job carries a valid
/// `traceparent`).
pub(crate) fn job_span(
    job_id: &str,
    kind: &str,
    queue: &str,
    attempt: u32,
    worker_id: &str,
    trace_context: &HashMap<String, String>,
) -> Span {
    let request_id = trace_context.get(REQUEST_ID).map(String::as_str);
    let span = tracing::info_span!(
        "job",
        otel.name = %format_args!("job {kind}"),
        otel.kind = "consumer",
        job_id,
        kind,
        queue,
        // OpenTelemetry attributes are signed: an unsigned one would be text.
        attempt = i64::from(attempt),
        worker_id,
        request_id,
    );
    let parent = TraceContextPropagator::new().extract(trace_context);
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer: nothing to parent then.
        let _ = span.set_parent(parent);
    }
    span
}

/// gRPC metadata as a carrier of W3C trace context.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            key.parse::<AsciiMetadataKey>(),
            value.parse::<AsciiMetadataValue>(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Adds the current span's `traceparent` (and `tracestate`) to a call's
/// metadata, when there is an OpenTelemetry span to continue.
pub(crate) fn inject_current(metadata: &mut MetadataMap) {
    let context = Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
    }
}

/// Whether the current span is an OpenTelemetry span (one whose calls
/// carry a `traceparent`).
pub(crate) fn current_is_traced() -> bool {
    Span::current().context().span().span_context().is_valid()
}

#[cfg(feature = "otlp")]
pub use otlp::{Telemetry, init_from_env};

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Subscriber;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    use crate::Error;

    /// Which spans go to OpenTelemetry: INFO and above, without the
    /// transport crates (exporting a span must not make new ones).
    const EXPORT_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

    /// Whether the `OTEL_*` variables (read through `var`) ask for OTLP
    /// export; see the [module documentation](super).
    pub(super) fn export_wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, Error> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(false);
        }
        let mut explicit = false;
        if let Some(exporters) = set("OTEL_TRACES_EXPORTER") {
            for exporter in exporters.split(',').map(str::trim) {
                match exporter {
                    "none" => return Ok(false),
                    "otlp" => explicit = true,
                    other => {
                        return Err(Error::Telemetry(format!(
                            "OTEL_TRACES_EXPORTER={other:?} is not supported: use otlp or none"
                        )));
                    }
                }
            }
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        if !explicit && !endpoint {
            return Ok(false);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(name) {
                if value != "grpc" {
                    return Err(Error::Telemetry(format!(
                        "{name}={value:?} is not supported: the worker exports OTLP over grpc"
                    )));
                }
                break;
            }
        }
        Ok(true)
    }

    /// A worker process's OpenTelemetry export: the tracer provider (when
    /// exporting) and the layer that feeds it from `tracing`.
    #[derive(Debug, Default)]
    pub struct Telemetry {
        provider: Option<SdkTracerProvider>,
    }

    impl Telemetry {
        /// Export as the `OTEL_*` variables say (see the [module
        /// documentation](super)), over OTLP/gRPC in batches; the spans'
        /// `service.name` is `default_service_name` unless
        /// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it. When
        /// nothing is configured this is [`Telemetry::disabled`].
        ///
        /// Call it inside a Tokio runtime, which must outlive the export.
        pub fn from_env(default_service_name: &str) -> Result<Self, Error> {
            if !export_wanted(|name| std::env::var(name).ok())? {
                return Ok(Self::disabled());
            }
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| Error::Telemetry(format!("otlp exporter: {e}")))?;
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
            Ok(Self::with_provider(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            ))
        }

        /// Export through a tracer provider of your own (another exporter,
        /// a test's in-memory one).
        pub fn with_provider(provider: SdkTracerProvider) -> Self {
            Self {
                provider: Some(provider),
            }
        }

        /// No export at all.
        pub fn disabled() -> Self {
            Self::default()
        }

        /// Whether spans are exported.
        pub fn is_exporting(&self) -> bool {
            self.provider.is_some()
        }

        /// The tracer provider, when exporting.
        pub fn provider(&self) -> Option<&SdkTracerProvider> {
            self.provider.as_ref()
        }

        /// The `tracing` layer that turns spans (INFO and above, the
        /// transport crates' left out) into OpenTelemetry spans; `None`
        /// (a layer that does nothing) when not exporting.
        pub fn layer<S>(&self) -> Option<impl Layer<S> + use<S>>
        where
            S: Subscriber + for<'span> LookupSpan<'span>,
        {
            self.provider.as_ref().map(|provider| {
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("jobctl-worker"))
                    .with_filter(EnvFilter::new(EXPORT_FILTER))
            })
        }

        /// Exports what is still buffered and stops exporting. Call it
        /// before the process exits.
        pub async fn shutdown(self) {
            let Some(provider) = self.provider else {
                return;
            };
            // The flush blocks its thread while the runtime drives the export.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "could not flush the trace exporter");
            }
        }
    }

    /// Installs a global subscriber: log lines on stderr filtered by
    /// `RUST_LOG` (default `info`), plus OpenTelemetry export as
    /// [`Telemetry::from_env`] sets it up. Keep the returned value and call
    /// [`Telemetry::shutdown`] before exiting.
    ///
    /// Fails when the `OTEL_*` variables are unusable or a global
    /// subscriber was installed before.
    pub fn init_from_env(default_service_name: &str) -> Result<Telemetry, Error> {
        let telemetry = Telemetry::from_env(default_service_name)?;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .with(telemetry.layer())
            .try_init()
            .map_err(|e| Error::Telemetry(format!("cannot install the subscriber: {e}")))?;
        Ok(telemetry)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn wanted(vars: &[(&str, &str)]) -> Option<bool> {
            export_wanted(|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .ok()
        }

        #[test]
        fn export_follows_the_otel_variables() {
            let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
            assert_eq!(wanted(&[]), Some(false));
            assert_eq!(wanted(&[("OTEL_SERVICE_NAME", "w")]), Some(false));
            assert_eq!(wanted(&[endpoint]), Some(true));
            assert_eq!(
                wanted(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
                Some(true)
            );
            assert_eq!(wanted(&[("OTEL_TRACES_EXPORTER", "otlp")]), Some(true));
            assert_eq!(
                wanted(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
                Some(false)
            );
            assert_eq!(
                wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
                Some(false)
            );
            assert_eq!(wanted(&[("OTEL_TRACES_EXPORTER", "zipkin")]), None);
            assert_eq!(
                wanted(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
                None
            );
        }
    }
}
