//! The stored form of a span: what the waterfall and the exports need, flattened from OTLP
//! (`ExportTraceServiceRequest` → resource → scope → span).
//!
//! Owns the conversion from OTLP and its checks. Must never keep a span whose ids are not the
//! W3C lengths (16-byte trace id, 8-byte span id): they name files and tree links.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::{Deserialize, Serialize};

/// One span as stored (a JSON line of its trace's file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; none for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// The resource's `service.name` (`containerd-shim-husk-v2`, `husk-agent`, …).
    pub service: String,
    pub name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Attributes, as text.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The status message of a span that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SpanRecord {
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is `len` lowercase hex digits, not all zero (W3C: all-zero ids are invalid).
pub(crate) fn valid_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// An attribute value as text.
pub(crate) fn value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(value_text).unwrap_or_default(),
            )
        })
        .collect()
}

/// The spans of an OTLP export request, with their service; spans with invalid ids are dropped.
pub fn records_from_request(req: &ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(value_text)
            .unwrap_or_else(|| "unknown".into());
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let (trace_id, span_id) = (hex(&s.trace_id), hex(&s.span_id));
                if !valid_hex_id(&trace_id, 32) || !valid_hex_id(&span_id, 16) {
                    continue;
                }
                let parent = hex(&s.parent_span_id);
                let error = s
                    .status
                    .as_ref()
                    .filter(|st| st.code == StatusCode::Error as i32)
                    .map(|st| {
                        if st.message.is_empty() {
                            "error".to_owned()
                        } else {
                            st.message.clone()
                        }
                    });
                out.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id: valid_hex_id(&parent, 16).then_some(parent),
                    service: service.clone(),
                    name: s.name.clone(),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano.max(s.start_time_unix_nano),
                    attributes: attributes(&s.attributes),
                    error,
                });
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn text(s: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    }

    /// A span of trace `t` (one byte repeated), id `id`, under `parent` (0: root).
    pub(crate) fn span(t: u8, id: u8, parent: u8, name: &str, start: u64, end: u64) -> Span {
        Span {
            trace_id: vec![t; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: name.into(),
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
    }

    /// An export request of `spans` from `service`.
    pub(crate) fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text(service),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn spans_keep_their_service_links_and_errors() {
        let mut failed = span(1, 3, 2, "CreateContainer", 20, 10);
        failed.status = Some(Status {
            message: "no such file".into(),
            code: StatusCode::Error as i32,
        });
        failed.attributes.push(KeyValue {
            key: "container.id".into(),
            value: text("c1"),
            ..Default::default()
        });
        let mut bad = span(1, 4, 0, "bad", 0, 1);
        bad.trace_id = vec![1; 15];
        let recs = records_from_request(&request(
            "husk-agent",
            vec![span(1, 2, 0, "Create", 0, 100), failed, bad],
        ));
        assert_eq!(recs.len(), 2, "the span with a short trace id is dropped");
        assert_eq!(recs[0].trace_id, "01".repeat(16));
        assert_eq!(recs[0].parent_span_id, None);
        assert_eq!(recs[1].parent_span_id.as_deref(), Some("0202020202020202"));
        assert_eq!(recs[1].service, "husk-agent");
        assert_eq!(recs[1].error.as_deref(), Some("no such file"));
        assert_eq!(recs[1].attributes["container.id"], "c1");
        assert_eq!(
            recs[1].duration_nanos(),
            0,
            "an end before the start is clamped"
        );
    }

    #[test]
    fn ids_are_w3c() {
        assert!(valid_hex_id(&"ab".repeat(8), 16));
        assert!(!valid_hex_id(&"0".repeat(16), 16));
        assert!(!valid_hex_id(&"AB".repeat(8), 16));
        assert!(!valid_hex_id("../etc/passwd", 13));
    }
}
