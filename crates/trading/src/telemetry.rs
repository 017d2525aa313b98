//! Logs and metrics.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Latency buckets in seconds, from 100 µs (an L1 hit) to 10 s (a timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// What `init` set up; dropping it flushes the traces not yet exported.
#[must_use = "traces are flushed when this is dropped"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.tracer.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trading: flushing traces: {e}");
        }
    }
}

/// Logs to stderr (`RUST_LOG` overrides the default level) and, built with
/// feature `otlp` and `OTEL_EXPORTER_OTLP_ENDPOINT` set, request traces over
/// OTLP/HTTP: a span per request with the cache's answers (family, tier) as
/// events and the loaders as child spans.
///
/// Call it outside the tokio runtime (the exporter's client is blocking).
pub fn init() -> anyhow::Result<Telemetry> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the line announcing the address.
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otlp")]
    {
        if let Some(provider) = otlp::provider()? {
            let layer = otlp::layer(&provider);
            // A second call (tests) keeps the first subscriber.
            let _ = registry.with(layer).try_init();
            return Ok(Telemetry {
                tracer: Some(provider),
            });
        }
    }
    let _ = registry.try_init();
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        tracer: None,
    })
}

#[cfg(feature = "otlp")]
mod otlp {
    use anyhow::Context;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{LevelFilter, Targets};

    /// The tracer provider, if an OTLP endpoint is configured (the SDK reads
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_BSP_*` and the other standard variables itself).
    pub fn provider() -> anyhow::Result<Option<SdkTracerProvider>> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
        if !configured {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("trading")
            .build();
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        ))
    }

    /// The layer that turns the request spans (and the cache's events and
    /// loader spans inside them) into OpenTelemetry spans. Only those
    /// targets: nothing else pays for being traced.
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let targets = Targets::new()
            .with_target("trading::request", LevelFilter::DEBUG)
            .with_target("larder::request", LevelFilter::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("trading"))
            .with_filter(targets)
    }
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// It must be installed before the cache is built: larder registers its
/// counter handles when families are opened.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Runs the exporter's periodic upkeep (draining histogram buffers) until the
/// returned task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}
