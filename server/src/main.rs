//! `jobctl-server`: flags, logging and signals around [`jobctl_server::serve`].

use std::process::ExitCode;

use std::time::Duration;

use clap::Parser;
use jobctl_server::Config;
use jobctl_server::telemetry::{self, Export};

/// mimalloc instead of glibc's malloc: the server allocates per request and
/// per Redis reply, and glibc's malloc/free were ~15 % of its CPU under load
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the exit waits for buffered spans to be exported.
const TRACE_FLUSH: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Logs go out even when the OTEL_* variables are wrong, to say so.
    let (export, bad_export) = match Export::from_env() {
        Ok(export) => (export, None),
        Err(error) => (Export::Off, Some(error)),
    };
    let telemetry = match telemetry::init(config.log_format, export) {
        Ok(t) => t,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            eprintln!("jobctl-server: cannot set up telemetry: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(error) = bad_export {
        tracing::error!(%error, "cannot set up trace export");
        return ExitCode::FAILURE;
    }
    if telemetry.is_exporting() {
        tracing::info!("exporting traces over otlp as the OTEL_* variables say");
    }
    let code = run(config).await;
    telemetry.shutdown(TRACE_FLUSH).await;
    code
}

async fn run(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let http_listener = match tokio::net::TcpListener::bind(config.http_listen).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, http_listen = %config.http_listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let http_addr = http_listener
        .local_addr()
        .map_or_else(|_| config.http_listen.to_string(), |a| a.to_string());
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    match &config.redis_url {
        Some(_) => tracing::info!(key_prefix = %config.key_prefix, "state lives in redis"),
        None => tracing::warn!(
            "no redis url: using the embedded store; state lives in this process's memory and is lost on exit (set --redis-url or JOBCTL_REDIS_URL to keep it)"
        ),
    }
    // Tools and tests read the bound address from this line.
    tracing::info!(%http_addr, "metrics on http://{http_addr}/metrics");
    println!("jobctl-server listening on {addr}");
    match jobctl_server::serve_with(config, listener, Some(http_listener), shutdown_signal()).await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}
