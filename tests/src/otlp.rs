//! A real OTLP collector for the tracing tests: OTLP/HTTP with protobuf bodies on
//! `127.0.0.1:<random port>` (`POST /v1/traces`, HTTP/1.1 with keep-alive, any number of
//! connections), served by hyper on its own thread. What it receives is decoded with the
//! `opentelemetry-proto` types and kept as [`ReceivedSpan`]s for the test to look at.
//!
//! Owns the listening socket, its thread and the received spans. Must never accept what a real
//! collector would refuse without saying so (a wrong path, content type or body is answered
//! with an HTTP error and recorded in [`OtlpReceiver::rejected`]), and never wait by sleeping:
//! [`OtlpReceiver::wait_until`] wakes on each request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

/// The path OTLP/HTTP traces are posted to.
pub const TRACES_PATH: &str = "/v1/traces";
/// The largest body accepted (a real collector's default is about this).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One span as the collector received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The resource's `service.name` (empty when it had none).
    pub service: String,
    pub name: String,
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The span's attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// The resource's attributes, values as text (`husk.clock_offset_ns` on the guest's).
    pub resource_attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of the span's attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        find(&self.attributes, key)
    }

    /// The value of the resource's attribute `key`.
    pub fn resource_attribute(&self, key: &str) -> Option<&str> {
        find(&self.resource_attributes, key)
    }
}

fn find<'a>(kvs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn texts(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// The spans of one request, flattened.
fn spans_of(req: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource_attributes = rs
            .resource
            .as_ref()
            .map(|r| texts(&r.attributes))
            .unwrap_or_default();
        let service = find(&resource_attributes, "service.name")
            .unwrap_or_default()
            .to_owned();
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            out.push(ReceivedSpan {
                service: service.clone(),
                name: s.name.clone(),
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent_span_id: hex(&s.parent_span_id),
                start_unix_nano: s.start_time_unix_nano,
                end_unix_nano: s.end_time_unix_nano,
                attributes: texts(&s.attributes),
                resource_attributes: resource_attributes.clone(),
            });
        }
    }
    out
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: usize,
    rejected: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Received>,
    /// Notified after every request, accepted or not.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reject(&self, status: StatusCode, why: String) -> Response<Full<Bytes>> {
        self.lock().rejected.push(format!("{status}: {why}"));
        self.changed.notify_all();
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(why)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() != Method::POST || req.uri().path() != TRACES_PATH {
            let why = format!("{} {}: only POST {TRACES_PATH}", req.method(), req.uri());
            return Ok(self.reject(StatusCode::NOT_FOUND, why));
        }
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if content_type != "application/x-protobuf" {
            let why = format!("content-type {content_type:?}: only application/x-protobuf");
            return Ok(self.reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(self.reject(StatusCode::BAD_REQUEST, format!("body: {e}"))),
        };
        let request = match ExportTraceServiceRequest::decode(body) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("not an ExportTraceServiceRequest: {e}");
                return Ok(self.reject(StatusCode::BAD_REQUEST, why));
            }
        };
        {
            let mut r = self.lock();
            r.spans.extend(spans_of(&request));
            r.requests += 1;
        }
        self.changed.notify_all();
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            )))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
    }
}

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 at a port the system picks.
    pub fn start() -> OtlpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("non-blocking");
        let shared = Arc::new(Shared::default());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        let stream = tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                        };
                        let shared = serving.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { shared.handle(req).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime here ends the connections still open.
            })
            .expect("receiver thread");
        OtlpReceiver {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`: the value for `[tracing] otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// How many requests were accepted.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// The requests refused, each as "status: why".
    pub fn rejected(&self) -> Vec<String> {
        self.shared.lock().rejected.clone()
    }

    /// Waits up to `timeout` for `done` to hold of the spans received; checked now and again
    /// after every request. Whether it held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> bool {
        let (spans, waited) = self
            .shared
            .changed
            .wait_timeout_while(self.shared.lock(), timeout, |r| !done(&r.spans))
            .unwrap_or_else(PoisonError::into_inner);
        drop(spans);
        !waited.timed_out()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use husk_trace::{OtlpClient, OtlpProtocol, OtlpTarget};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv(
                            "service.name",
                            any_value::Value::StringValue(service.into()),
                        ),
                        kv("husk.clock_offset_ns", any_value::Value::IntValue(-42)),
                    ],
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

    fn span(id: u8, parent: u8, name: &str) -> Span {
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: name.into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![kv(
                "container.id",
                any_value::Value::StringValue("c1".into()),
            )],
            ..Default::default()
        }
    }

    fn client(endpoint: &str) -> OtlpClient {
        OtlpClient::new(&OtlpTarget {
            endpoint: endpoint.to_owned(),
            protocol: OtlpProtocol::HttpProtobuf,
        })
        .expect("client")
    }

    #[test]
    fn spans_posted_by_husks_exporter_come_out() {
        let collector = OtlpReceiver::start();
        assert!(collector.endpoint().starts_with("http://127.0.0.1:"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (a, b) = (client(&collector.endpoint()), client(&collector.endpoint()));
        rt.block_on(async {
            a.export(&request("husk", vec![span(1, 0, "run")]))
                .await
                .expect("first");
            // Two clients at once (two connections), then the first again (keep-alive).
            let create = request("husk-agent", vec![span(2, 1, "CreateContainer")]);
            let start = request("husk-agent", vec![span(3, 1, "StartContainer")]);
            let (x, y) = tokio::join!(a.export(&create), b.export(&start));
            x.expect("second");
            y.expect("third");
        });
        assert!(collector.wait_until(Duration::from_secs(30), |s| s.len() == 3));
        assert_eq!(collector.requests(), 3);
        let spans = collector.spans();
        let root = &spans[0];
        assert_eq!((root.service.as_str(), root.name.as_str()), ("husk", "run"));
        assert_eq!(root.trace_id, "ab".repeat(16));
        assert_eq!(root.span_id, "01".repeat(8));
        assert_eq!(root.parent_span_id, "");
        assert_eq!((root.start_unix_nano, root.end_unix_nano), (1_000, 2_000));
        assert_eq!(root.attribute("container.id"), Some("c1"));
        assert_eq!(root.resource_attribute("husk.clock_offset_ns"), Some("-42"));
        let mut children: Vec<&str> = spans[1..].iter().map(|s| s.name.as_str()).collect();
        children.sort();
        assert_eq!(children, ["CreateContainer", "StartContainer"]);
        assert!(spans[1..]
            .iter()
            .all(|s| s.parent_span_id == "01".repeat(8)));
        assert!(collector.rejected().is_empty());
        assert!(
            !collector.wait_until(Duration::ZERO, |s| s.len() > 3),
            "a condition that does not hold is false at the timeout"
        );
    }

    /// Sends raw HTTP and returns the status line.
    fn raw(endpoint: &str, request: &[u8]) -> String {
        let addr = endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(request).expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read");
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn what_a_collector_would_refuse_is_refused_and_recorded() {
        let collector = OtlpReceiver::start();
        let e = collector.endpoint();
        let status = raw(
            &e,
            b"POST /v1/logs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        assert!(status.contains("404"), "{status}");
        let status = raw(
            &e,
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
        assert!(status.contains("415"), "{status}");
        let status = raw(
            &e,
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 3\r\nconnection: close\r\n\r\n\xff\xff\xff",
        );
        assert!(status.contains("400"), "{status}");
        assert_eq!(collector.rejected().len(), 3, "{:?}", collector.rejected());
        assert_eq!(collector.requests(), 0);
        assert!(collector.spans().is_empty());
    }
}
