//! The OpenTelemetry SDK exporter every husk process uses: a batch of finished spans becomes
//! one OTLP `ExportTraceServiceRequest` (several when one would exceed the frame limit) handed
//! to the process's [`SpanSink`].
//!
//! Owns the SDK → OTLP conversion and the protobuf encoding both hops use. Must never do I/O:
//! where the request goes is the sink's business.

use std::sync::Arc;

use husk_protocols::trace_wire::MAX_TRACE_FRAME;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message;

use crate::SpanSink;

/// Encodes a request as protobuf.
pub fn encode(request: &ExportTraceServiceRequest) -> Vec<u8> {
    request.encode_to_vec()
}

/// The spans in a request.
pub fn span_count(request: &ExportTraceServiceRequest) -> u64 {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum()
}

/// Decodes a request read from an untrusted peer.
pub fn decode(bytes: &[u8]) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
    ExportTraceServiceRequest::decode(bytes)
}

/// The exporter: SDK spans → OTLP → sink.
#[derive(Debug)]
pub struct OtlpExporter {
    sink: Arc<dyn SpanSink>,
    resource: ResourceAttributesWithSchema,
}

impl OtlpExporter {
    pub fn new(sink: Arc<dyn SpanSink>) -> Self {
        Self {
            sink,
            resource: (&Resource::builder_empty().build()).into(),
        }
    }

    /// Requests for `batch`, each small enough for one frame (a single span too big for a
    /// frame is dropped: no span of husk's comes near the limit).
    fn requests(&self, batch: Vec<SpanData>) -> Vec<ExportTraceServiceRequest> {
        let mut out = Vec::new();
        let mut todo = vec![batch];
        while let Some(spans) = todo.pop() {
            if spans.is_empty() {
                continue;
            }
            let n = spans.len();
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(spans.clone(), &self.resource),
            };
            if request.encoded_len() <= MAX_TRACE_FRAME {
                out.push(request);
            } else if n > 1 {
                let mut first = spans;
                let second = first.split_off(n / 2);
                todo.push(second);
                todo.push(first);
            } else {
                tracing::warn!(target: "telemetry", "dropping a span too large for one trace frame");
            }
        }
        out
    }
}

impl SpanExporter for OtlpExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        for request in self.requests(batch) {
            self.sink.send(request);
        }
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Debug, Default)]
    pub(crate) struct Collect(pub Mutex<Vec<ExportTraceServiceRequest>>);

    impl SpanSink for Collect {
        fn send(&self, request: ExportTraceServiceRequest) {
            self.0.lock().expect("lock").push(request);
        }
    }

    #[test]
    fn husk_spans_become_one_otlp_trace_with_parent_links_and_the_service_name() {
        let sink = Arc::new(Collect::default());
        let telemetry = crate::Telemetry::new(crate::service::AGENT, sink.clone());
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(target: "husk_agent::rpc", "rpc", otel.name = "agent CreateContainer");
            let _o = outer.enter();
            tracing::info_span!(target: "husk_rustjail", "jail.create").in_scope(|| {});
            tracing::info_span!(target: "ttrpc::server", "not ours").in_scope(|| {});
            tracing::debug_span!(target: "husk_agent", "too fine").in_scope(|| {});
        });
        assert!(telemetry.flush(std::time::Duration::from_secs(5)));
        let requests = sink.0.lock().expect("lock");
        let spans: Vec<_> = requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let parent = spans
            .iter()
            .find(|s| s.name == "agent CreateContainer")
            .expect("rpc span");
        let child = spans
            .iter()
            .find(|s| s.name == "jail.create")
            .expect("jail span");
        assert_eq!(child.parent_span_id, parent.span_id);
        assert_eq!(child.trace_id, parent.trace_id);
        let service = requests[0].resource_spans[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone());
        assert_eq!(
            service,
            Some(
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    "husk-agent".into()
                )
            )
        );
        let bytes = encode(&requests[0]);
        assert_eq!(decode(&bytes).expect("decode"), requests[0]);
    }

    #[test]
    fn an_incoming_traceparent_becomes_the_parent_and_goes_out_again() {
        let sink = Arc::new(Collect::default());
        let telemetry = crate::Telemetry::new(crate::service::AGENT, sink.clone());
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let outgoing = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: "husk_agent", "rpc");
            assert!(crate::propagation::set_parent(&span, incoming));
            assert!(!crate::propagation::set_parent(
                &tracing::info_span!(target: "husk_agent", "x"),
                "00-zz"
            ));
            let _e = span.enter();
            crate::propagation::current_traceparent().expect("traced")
        });
        assert!(outgoing.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(!outgoing.contains("b7ad6b7169203331"), "{outgoing}");
        telemetry.flush(std::time::Duration::from_secs(5));
        let requests = sink.0.lock().expect("lock");
        let span = requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .find(|s| s.name == "rpc")
            .expect("the rpc span");
        assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331");
    }

    #[test]
    fn untraced_spans_carry_no_context() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: "husk_agent", "rpc");
            assert_eq!(crate::propagation::traceparent(&span), None);
        });
    }

    #[test]
    fn a_batch_too_big_for_one_frame_is_split() {
        let sink = Arc::new(Collect::default());
        let telemetry = crate::Telemetry::new(crate::service::SHIM, sink.clone());
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        let big = "x".repeat(100_000);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..60 {
                tracing::info_span!(target: "husk_shim", "big", payload = %big).in_scope(|| {});
            }
        });
        telemetry.flush(std::time::Duration::from_secs(5));
        let requests = sink.0.lock().expect("lock");
        let total: usize = requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        assert_eq!(total, 60);
        assert!(requests.len() >= 2);
        assert!(requests.iter().all(|r| r.encoded_len() <= MAX_TRACE_FRAME));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
