//! Logs and traces: the log format (`--log-format text|json`), and spans
//! exported over OTLP when `serve --otlp-endpoint` names a collector.
//!
//! Per-request spans cost a little on every request, the workers' hot path
//! included, so they are made only when exported. JSON lines name the
//! request they were written for from a task-local context instead, which
//! costs nothing until a line is written. With text logs and no export, a
//! request costs what it did before.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people at a terminal.
    #[default]
    Text,
    /// One JSON object per line, for a log collector: the event's fields,
    /// and those of the spans it happened in (the request's id, method and
    /// route; the task, render or worker it is about).
    Json,
}

/// Where spans go, besides the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// The collector's base URL (`http://collector:4318`); spans are posted
    /// to its `/v1/traces`.
    pub endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    pub json: bool,
}

impl OtlpExport {
    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

static JSON_LOGS: AtomicBool = AtomicBool::new(false);
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether log lines are JSON, so that a request's context is worth
/// keeping for the lines written while it is served.
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// Whether spans are exported, so that a caller's `traceparent` is worth
/// reading.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes the exported spans when dropped (at the end of `main`).
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: the last spans could not be exported: {e}");
            }
        }
    }
}

/// The service name spans are exported under.
pub const SERVICE_NAME: &str = "renderfarm-broker";

/// Installs the log subscriber (and the span export), once per process.
/// `filter` is an `EnvFilter` directive such as `info,renderfarm=debug`.
pub fn init(
    format: LogFormat,
    filter: &str,
    ansi: bool,
    otlp: Option<&OtlpExport>,
) -> anyhow::Result<TelemetryGuard> {
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(WithRequest(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match otlp {
        Some(export) => {
            let provider = tracer_provider(export)?;
            let tracer = provider.tracer(SERVICE_NAME);
            // Spans of this crate only, whatever the log filter says: the
            // trace is of the farm's own work. Two layers with filters of
            // their own need per-layer filtering.
            let traces = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("renderfarm", tracing::Level::INFO),
                );
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            tracing_subscriber::registry()
                .with(logs.with_filter(EnvFilter::new(filter)))
                .with(traces)
                .try_init()
                .context("installing the log subscriber")?;
            Some(provider)
        }
        None => {
            // One layer: its filter is the subscriber's own, which spares
            // every span the per-layer bookkeeping (a request makes two).
            tracing_subscriber::registry()
                .with(logs)
                .with(EnvFilter::new(filter))
                .try_init()
                .context("installing the log subscriber")?;
            None
        }
    };
    JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(TelemetryGuard(provider))
}

fn tracer_provider(export: &OtlpExport) -> anyhow::Result<SdkTracerProvider> {
    // The exporter's HTTP client uses rustls without a default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(export.traces_url())
        .with_protocol(if export.json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        })
        .build()
        .with_context(|| format!("setting up the OTLP export to {}", export.traces_url()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE_NAME)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the caller's span, when the request carries a
/// W3C `traceparent` (the agent sends one per chunk, so a chunk's claim and
/// reports read as one trace).
pub fn continue_trace(span: &tracing::Span, headers: &actix_web::http::header::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a actix_web::http::header::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// The request a line is written for, as JSON lines show it (`request`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestContext {
    pub request_id: String,
    pub method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_id: Option<uuid::Uuid>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `serve` with `context` as the request every JSON line written
/// meanwhile (on this task) names. Cheaper than a span: nothing is
/// formatted unless a line is written.
pub async fn in_request<F: std::future::Future>(context: RequestContext, serve: F) -> F::Output {
    REQUEST.scope(context, serve).await
}

/// tracing-subscriber's JSON lines, with the request being served (if any)
/// added as a `request` object.
struct WithRequest<E>(E);

impl<S, N, E> FormatEvent<S, N> for WithRequest<E>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Ok(Ok(request)) = REQUEST.try_with(serde_json::to_string) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_suffix("}\n") {
            Some(object) => writeln!(writer, "{object},\"request\":{request}}}"),
            // Not the one-object line expected: written as it is.
            None => writer.write_str(&line),
        }
    }
}

/// A span that exists only when spans are exported (see [`exporting`]):
/// `make` is not even called otherwise. For the claim and the reports: with
/// JSON logs alone, the request's span names the worker or task already.
pub fn trace_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() {
        make()
    } else {
        tracing::Span::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_collector_s_v1_traces() {
        let export = |endpoint: &str| OtlpExport {
            endpoint: endpoint.into(),
            json: false,
        };
        assert_eq!(
            export("http://c:4318").traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            export("http://c:4318/").traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            export("http://c:4318/v1/traces").traces_url(),
            "http://c:4318/v1/traces"
        );
    }
}
