//! husk's spans, set up the same way in every husk process (ARCHITECTURE.md §5, §6): the shim,
//! `husk run`, husk-init, the agent and its jail, the console.
//!
//! A process that traces builds one [`Telemetry`] with the [`SpanSink`] its spans go to (on the
//! host, husk-trace's pipeline; in the guest, [`TracerSocket`], husk-tracer's local socket) and
//! adds [`Telemetry::layer`] to its `tracing` subscriber. Spans of husk's own crates (targets
//! `husk*`) at INFO and above become OpenTelemetry spans, batched off the caller's thread and
//! handed to the sink as OTLP `ExportTraceServiceRequest`s. [`propagation`] carries the context
//! across processes and the VM boundary as W3C `traceparent`.
//!
//! Owns the SDK set-up, the OTLP encoding and the guest sink. Must never block a traced thread
//! on export (the batch processor's queue drops when full) and never send spans anywhere
//! itself but to its sink. A process that does not trace builds no [`Telemetry`]: no layer, no
//! thread, no cost beyond `tracing`'s own.

mod exporter;
mod guest;
pub mod propagation;
mod socket_sink;

use std::sync::Arc;
use std::time::Duration;

pub use exporter::{decode, encode, span_count, OtlpExporter};
pub use guest::init_guest_logging;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use socket_sink::TracerSocket;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Where a process's encoded spans go.
pub trait SpanSink: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one batch. Must not block for long: it runs on the batch processor's thread, and
    /// a sink that cannot keep up drops (and counts) rather than waits.
    fn send(&self, request: ExportTraceServiceRequest);
    /// Waits up to `timeout` for everything sent so far to be delivered; whether it was.
    fn flush(&self, _timeout: Duration) -> bool {
        true
    }
}

/// How long spans wait in the batch processor before they go to the sink.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Spans the batch processor holds before it drops new ones.
pub const QUEUE_SPANS: usize = 4096;
/// The `service.name` of each husk process, as traces show it.
pub mod service {
    pub const SHIM: &str = "containerd-shim-husk-v2";
    pub const CLI: &str = "husk";
    pub const INIT: &str = "husk-init";
    pub const AGENT: &str = "husk-agent";
    pub const CONSOLE: &str = "husk-console";
    pub const TRACER: &str = "husk-tracer";
}

/// A process's tracing: its provider (and batch thread) and its sink.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    sink: Arc<dyn SpanSink>,
    service: &'static str,
}

/// The `tracing` targets of husk's own code: its crates (`husk_*`, the `husk` CLI), the agent's
/// jail (`rustjail`, as Kata names its own) and the shim's binary crate, which is named after
/// the binary containerd looks for.
const HUSK_TARGETS: [&str; 3] = ["husk", "rustjail", "containerd_shim_husk_v2"];

/// Whether a span is one of husk's own, which are the ones exported: other crates' spans
/// (ttrpc, tokio, h2) are noise in a trace of husk.
fn husk_span(meta: &tracing::Metadata<'_>) -> bool {
    HUSK_TARGETS.iter().any(|t| meta.target().starts_with(t))
        && *meta.level() <= tracing::Level::INFO
}

impl Telemetry {
    /// Starts tracing for the process `service` (one of [`service`]), sending to `sink`.
    pub fn new(service: &'static str, sink: Arc<dyn SpanSink>) -> Self {
        let exporter = OtlpExporter::new(sink.clone());
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(BATCH_DELAY)
                    .with_max_queue_size(QUEUE_SPANS)
                    .build(),
            )
            .build();
        let resource = Resource::builder_empty()
            .with_service_name(service)
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        // For spans recorded after the fact ([`record_span`]).
        opentelemetry::global::set_tracer_provider(provider.clone());
        Self {
            provider,
            sink,
            service,
        }
    }

    /// The process's `service.name`.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The `tracing` layer that turns husk's spans into OpenTelemetry spans; add it to the
    /// process's subscriber next to its log layer.
    pub fn layer<S>(
        &self,
    ) -> Filtered<
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        FilterFn,
        S,
    >
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("husk"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(FilterFn::new(
                husk_span as fn(&tracing::Metadata<'_>) -> bool,
            ))
    }

    /// Exports every span that has ended and waits up to `timeout` for the sink to deliver
    /// them; whether everything went. Call before the process (or its VM) ends.
    pub fn flush(&self, timeout: Duration) -> bool {
        let exported = self.provider.force_flush().is_ok();
        self.sink.flush(timeout) && exported
    }
}

/// Records a span that already happened (a phase learnt after the fact, such as the guest
/// kernel's boot read from init's readiness report) as a child of `parent`, from `start` to
/// `end`. Nothing when `parent` is not traced.
pub fn record_span(
    parent: &tracing::Span,
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    attributes: &[(&'static str, String)],
) {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = parent.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("husk");
    let attributes = attributes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone()))
        .collect::<Vec<_>>();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &cx);
    span.end_with_timestamp(end.max(start));
}

/// An INFO span (same arguments as `tracing::info_span!`) when the current span is part of a
/// trace, else `Span::none()`: for code below an entry point (the jail below an agent RPC), so
/// that work done outside any trace starts no trace of its own.
#[macro_export]
macro_rules! child_span {
    ($($arg:tt)*) => {
        if ::tracing::Span::current().is_none() {
            ::tracing::Span::none()
        } else {
            ::tracing::info_span!($($arg)*)
        }
    };
}
