//! The OTLP exporter client: sends one `ExportTraceServiceRequest` to an OTLP collector
//! (Jaeger, the OpenTelemetry Collector) over OTLP/HTTP with protobuf bodies or OTLP/gRPC
//! (`[tracing] otlp_endpoint` and `otlp_protocol`, docs/config.md).
//!
//! Why not `opentelemetry-otlp`: its exporter takes the SDK's span data and builds the request
//! itself, with the exporting process's own resource. The host forwards requests that are
//! already OTLP protobuf: the guest's (each with the guest process's own resource and clock
//! correction) and the host's own (encoded once by husk-telemetry). So this module sends them
//! as they are, with the same proto types (`opentelemetry-proto`) and the same transports
//! (`tonic` for gRPC, `hyper` for HTTP) that `opentelemetry-otlp` uses.
//!
//! Owns the endpoint's validation (only `http://`: no TLS), the request's transport, its
//! timeouts and the errors that say what to fix. Must never retry, queue or block a thread
//! (the pipeline does the queueing; one call is one attempt bounded by [`EXPORT_TIMEOUT`]), and
//! never change the request it sends.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tonic::transport::{Channel, Endpoint};

/// How long one export may take: connecting, and then the whole request and its answer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The path OTLP/HTTP traces go to when the endpoint URL has none.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";

/// How much of a collector's error answer is read and shown.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
const ERROR_TEXT_CHARS: usize = 300;

/// How spans reach the collector: `[tracing] otlp_protocol`.
pub use husk_config::OtlpProtocol;

/// A collector to export to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// An `http://` URL, e.g. `http://127.0.0.1:4318` (HTTP) or `http://127.0.0.1:4317` (gRPC).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

/// Why an export failed. Every message names the endpoint and what to check.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "OTLP endpoint {endpoint:?} cannot be used: {reason}; set [tracing] otlp_endpoint to an \
         http:// URL such as \"http://127.0.0.1:4318\" (otlp_protocol = \"http/protobuf\") or \
         \"http://127.0.0.1:4317\" (otlp_protocol = \"grpc\")"
    )]
    BadEndpoint { endpoint: String, reason: String },
    #[error(
        "cannot send spans to the OTLP collector at {endpoint} ({protocol}): {error}; is the \
         collector running and listening there, and does [tracing] otlp_protocol match its port?"
    )]
    Unreachable {
        endpoint: String,
        protocol: &'static str,
        error: String,
    },
    #[error(
        "the OTLP collector at {endpoint} ({protocol}) did not answer within {}s; is it \
         overloaded, or is the address right?",
        after.as_secs_f64()
    )]
    Timeout {
        endpoint: String,
        protocol: &'static str,
        after: Duration,
    },
    #[error(
        "the OTLP collector at {endpoint} refused the spans with HTTP {status}: {message}; does it \
         take OTLP/HTTP protobuf at that path (or should [tracing] otlp_protocol be \"grpc\")?"
    )]
    HttpStatus {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error(
        "the OTLP collector at {endpoint} refused the spans with gRPC status {code}: {message}; \
         does it take OTLP/gRPC on that port (or should [tracing] otlp_protocol be \
         \"http/protobuf\")?"
    )]
    GrpcStatus {
        endpoint: String,
        code: String,
        message: String,
    },
}

/// An exporter to one collector. Cheap to share; [`OtlpClient::export`] runs on any Tokio
/// runtime (a current-thread one is enough) and keeps its connection between calls.
#[derive(Debug)]
pub struct OtlpClient {
    endpoint: String,
    timeout: Duration,
    transport: Transport,
}

// One per client, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Transport {
    Http {
        uri: http::Uri,
        client: Client<HttpConnector, Full<Bytes>>,
    },
    Grpc {
        endpoint: Endpoint,
        /// Made on first use: a channel needs a running Tokio runtime.
        client: OnceLock<TraceServiceClient<Channel>>,
    },
}

fn bad(endpoint: &str, reason: impl Into<String>) -> OtlpError {
    OtlpError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.into(),
    }
}

/// Parses and checks an `http://` endpoint; for HTTP, a URL without a path (or with just `/`)
/// gets [`HTTP_TRACES_PATH`]; for gRPC it must have no path.
fn endpoint_uri(endpoint: &str, protocol: OtlpProtocol) -> Result<http::Uri, OtlpError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| bad(endpoint, format!("not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                endpoint,
                "https:// is not supported (husk sends OTLP without TLS); use http:// to a \
                 collector on this host or a trusted network",
            ))
        }
        _ => return Err(bad(endpoint, "it does not start with http://")),
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(bad(endpoint, "it names no host"));
    };
    if authority.host().is_empty() {
        return Err(bad(endpoint, "it names no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad(
            endpoint,
            "user information in the URL is not supported",
        ));
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let no_path = path_and_query.is_empty() || path_and_query == "/";
    let path_and_query = match protocol {
        OtlpProtocol::HttpProtobuf if no_path => HTTP_TRACES_PATH.to_owned(),
        OtlpProtocol::HttpProtobuf => path_and_query.to_owned(),
        OtlpProtocol::Grpc if no_path => "/".to_owned(),
        OtlpProtocol::Grpc => {
            return Err(bad(
                endpoint,
                "a gRPC endpoint has no path (the service path is fixed); give just \
                 http://host:port",
            ))
        }
    };
    http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| bad(endpoint, e.to_string()))
}

/// A collector's error text, shortened and stripped of control characters.
fn printable(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_TEXT_CHARS)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(no message)".to_owned()
    } else {
        text.to_owned()
    }
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text += ": ";
            text += &s_text;
        }
        source = s.source();
    }
    text
}

impl OtlpClient {
    /// A client for `target`; fails only on an endpoint that cannot work (not `http://`, no
    /// host, a path on a gRPC endpoint). Connects on the first export.
    pub fn new(target: &OtlpTarget) -> Result<Self, OtlpError> {
        let uri = endpoint_uri(&target.endpoint, target.protocol)?;
        let transport = match target.protocol {
            OtlpProtocol::HttpProtobuf => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(2)
                    .build(connector);
                Transport::Http { uri, client }
            }
            OtlpProtocol::Grpc => {
                let endpoint = Endpoint::from(uri)
                    .connect_timeout(EXPORT_TIMEOUT)
                    .timeout(EXPORT_TIMEOUT);
                Transport::Grpc {
                    endpoint,
                    client: OnceLock::new(),
                }
            }
        };
        Ok(Self {
            endpoint: target.endpoint.clone(),
            timeout: EXPORT_TIMEOUT,
            transport,
        })
    }

    /// The same client with another limit on one export (connecting included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        if let Transport::Grpc { endpoint, .. } = &mut self.transport {
            *endpoint = endpoint.clone().connect_timeout(timeout).timeout(timeout);
        }
        self
    }

    /// The endpoint as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL requests go to (for HTTP, with `/v1/traces` added where the endpoint had no path).
    pub fn url(&self) -> String {
        match &self.transport {
            Transport::Http { uri, .. } => uri.to_string(),
            Transport::Grpc { endpoint, .. } => endpoint.uri().to_string(),
        }
    }

    fn protocol(&self) -> &'static str {
        match self.transport {
            Transport::Http { .. } => OtlpProtocol::HttpProtobuf.name(),
            Transport::Grpc { .. } => OtlpProtocol::Grpc.name(),
        }
    }

    /// Sends `request` once; Ok when the collector accepted it (HTTP 2xx, gRPC OK).
    pub async fn export(&self, request: &ExportTraceServiceRequest) -> Result<(), OtlpError> {
        let attempt = async {
            match &self.transport {
                Transport::Http { uri, client } => self.export_http(uri, client, request).await,
                Transport::Grpc { endpoint, client } => {
                    let client = client
                        .get_or_init(|| TraceServiceClient::new(endpoint.connect_lazy()))
                        .clone();
                    self.export_grpc(client, request).await
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> OtlpError {
        OtlpError::Timeout {
            endpoint: self.endpoint.clone(),
            protocol: self.protocol(),
            after: self.timeout,
        }
    }

    fn unreachable(&self, error: String) -> OtlpError {
        OtlpError::Unreachable {
            endpoint: self.endpoint.clone(),
            protocol: self.protocol(),
            error,
        }
    }

    async fn export_http(
        &self,
        uri: &http::Uri,
        client: &Client<HttpConnector, Full<Bytes>>,
        request: &ExportTraceServiceRequest,
    ) -> Result<(), OtlpError> {
        let body = Bytes::from(husk_telemetry::encode(request));
        let req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("husk/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| self.unreachable(e.to_string()))?;
        let response = client
            .request(req)
            .await
            .map_err(|e| self.unreachable(chain(&e)))?;
        let status = response.status();
        // Read the answer to its end (bounded), so the connection can be reused.
        let answer = Limited::new(response.into_body(), ERROR_BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(OtlpError::HttpStatus {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                message: printable(&answer),
            })
        }
    }

    async fn export_grpc(
        &self,
        mut client: TraceServiceClient<Channel>,
        request: &ExportTraceServiceRequest,
    ) -> Result<(), OtlpError> {
        match client.export(request.clone()).await {
            Ok(_) => Ok(()),
            Err(status) => match status.code() {
                tonic::Code::Unavailable => Err(self.unreachable(chain(&status))),
                tonic::Code::DeadlineExceeded => Err(self.timed_out()),
                code => Err(OtlpError::GrpcStatus {
                    endpoint: self.endpoint.clone(),
                    code: format!("{code:?}"),
                    message: printable(status.message().as_bytes()),
                }),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

    use crate::model::tests::{request, span};

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn target(endpoint: &str, protocol: OtlpProtocol) -> OtlpTarget {
        OtlpTarget {
            endpoint: endpoint.to_owned(),
            protocol,
        }
    }

    /// One HTTP/1.1 request as a tiny server saw it.
    #[derive(Debug)]
    pub(crate) struct Seen {
        pub method: String,
        pub path: String,
        pub content_type: String,
        pub body: ExportTraceServiceRequest,
    }

    /// Reads one request (Content-Length body) from `r`; None at the end of the stream.
    fn read_request(r: &mut BufReader<std::net::TcpStream>) -> Option<Seen> {
        let mut line = String::new();
        if r.read_line(&mut line).expect("request line") == 0 {
            return None;
        }
        let mut words = line.split_whitespace();
        let method = words.next().expect("method").to_owned();
        let path = words.next().expect("path").to_owned();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            r.read_line(&mut h).expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header colon");
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().expect("length"),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).expect("body");
        Some(Seen {
            method,
            path,
            content_type,
            body: husk_telemetry::decode(&body).expect("an OTLP protobuf body"),
        })
    }

    /// An HTTP server on 127.0.0.1 answering each request with `status`; every request it
    /// reads goes to the returned channel.
    pub(crate) fn http_server(status: &'static str) -> (String, mpsc::Receiver<Seen>) {
        serve_http(status, None)
    }

    /// [`http_server`] that answers each request only once `gate` has given it a go.
    pub(crate) fn http_server_gated(
        status: &'static str,
        gate: mpsc::Receiver<()>,
    ) -> (String, mpsc::Receiver<Seen>) {
        serve_http(status, Some(gate))
    }

    fn serve_http(
        status: &'static str,
        gate: Option<mpsc::Receiver<()>>,
    ) -> (String, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut w = stream.try_clone().expect("clone");
                let mut r = BufReader::new(stream);
                while let Some(seen) = read_request(&mut r) {
                    if tx.send(seen).is_err() {
                        return;
                    }
                    if let Some(gate) = &gate {
                        if gate.recv().is_err() {
                            return;
                        }
                    }
                    let body = if status.starts_with('2') {
                        ""
                    } else {
                        "no such\tpath"
                    };
                    write!(
                        w,
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .expect("answer");
                }
            }
        });
        (format!("http://127.0.0.1:{port}"), rx)
    }

    #[test]
    fn endpoints_are_checked_and_http_gets_the_traces_path() {
        let url = |e: &str, p| OtlpClient::new(&target(e, p)).map(|c| c.url());
        let http = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            url("http://127.0.0.1:4318", http).expect("ok"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/", http).expect("ok"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/otlp/v1/traces", http).expect("ok"),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            url("http://[::1]:4317", OtlpProtocol::Grpc).expect("ok"),
            "http://[::1]:4317/"
        );
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "",
            "http://",
            "ftp://x",
            "http://u:p@x:1",
        ] {
            let e = url(bad, http).expect_err(bad);
            assert!(matches!(e, OtlpError::BadEndpoint { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("otlp_endpoint"), "{e}");
        }
        let e = url("http://x:4317/v1/traces", OtlpProtocol::Grpc).expect_err("grpc path");
        assert!(e.to_string().contains("no path"), "{e}");
    }

    #[test]
    fn http_export_posts_protobuf_to_the_collector() {
        let (endpoint, seen) = http_server("200 OK");
        let client =
            OtlpClient::new(&target(&endpoint, OtlpProtocol::HttpProtobuf)).expect("client");
        let rt = runtime();
        let req = request(
            "husk-agent",
            vec![span(0xaa, 1, 0, "CreateContainer", 10, 20)],
        );
        rt.block_on(client.export(&req)).expect("export");
        rt.block_on(client.export(&req))
            .expect("a second export, same connection");
        for _ in 0..2 {
            let s = seen.recv().expect("request");
            assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/v1/traces"));
            assert_eq!(s.content_type, "application/x-protobuf");
            assert_eq!(s.body, req);
        }
    }

    #[test]
    fn http_errors_name_the_endpoint_and_the_fix() {
        let (endpoint, _seen) = http_server("404 Not Found");
        let rt = runtime();
        let req = request("husk", vec![span(0xaa, 1, 0, "x", 1, 2)]);
        let client =
            OtlpClient::new(&target(&endpoint, OtlpProtocol::HttpProtobuf)).expect("client");
        let e = rt.block_on(client.export(&req)).expect_err("404");
        assert!(
            matches!(&e, OtlpError::HttpStatus { status: 404, message, .. } if message == "no such path"),
            "{e:?}"
        );
        assert!(e.to_string().contains(&endpoint), "{e}");

        // Nothing listens on a port just freed.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let closed = format!("http://127.0.0.1:{port}");
        let client = OtlpClient::new(&target(&closed, OtlpProtocol::HttpProtobuf)).expect("client");
        let e = rt.block_on(client.export(&req)).expect_err("refused");
        assert!(matches!(e, OtlpError::Unreachable { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&closed) && e.to_string().contains("running"),
            "{e}"
        );

        // A server that accepts and never answers: the timeout ends the attempt.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
        let client = OtlpClient::new(&target(&silent_url, OtlpProtocol::HttpProtobuf))
            .expect("client")
            .with_timeout(Duration::from_millis(300));
        let e = rt.block_on(client.export(&req)).expect_err("timeout");
        assert!(matches!(e, OtlpError::Timeout { .. }), "{e:?}");
    }

    /// A real OTLP/gRPC collector: tonic's server with the generated TraceService.
    #[derive(Debug)]
    pub(crate) struct Collector {
        tx: std::sync::Mutex<mpsc::Sender<ExportTraceServiceRequest>>,
        refuse: bool,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            if self.refuse {
                return Err(tonic::Status::permission_denied("no spans from you"));
            }
            let _ = self.tx.lock().expect("lock").send(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Starts a gRPC collector on 127.0.0.1 in its own thread; its endpoint and what it got.
    pub(crate) fn grpc_server(refuse: bool) -> (String, mpsc::Receiver<ExportTraceServiceRequest>) {
        let (tx, rx) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let svc = TraceServiceServer::new(Collector {
                    tx: std::sync::Mutex::new(tx),
                    refuse,
                });
                tonic::transport::Server::builder()
                    .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener))
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("server address");
        (format!("http://{addr}"), rx)
    }

    #[test]
    fn grpc_export_reaches_a_real_collector() {
        let (endpoint, got) = grpc_server(false);
        let client = OtlpClient::new(&target(&endpoint, OtlpProtocol::Grpc)).expect("client");
        let rt = runtime();
        let req = request("husk-init", vec![span(0xcc, 3, 0, "boot", 5, 50)]);
        rt.block_on(client.export(&req)).expect("export");
        assert_eq!(got.recv().expect("request"), req);

        let (endpoint, _got) = grpc_server(true);
        let client = OtlpClient::new(&target(&endpoint, OtlpProtocol::Grpc)).expect("client");
        let e = rt.block_on(client.export(&req)).expect_err("refused");
        assert!(
            matches!(&e, OtlpError::GrpcStatus { code, message, .. } if code == "PermissionDenied" && message == "no spans from you"),
            "{e:?}"
        );

        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let closed = format!("http://127.0.0.1:{port}");
        let client = OtlpClient::new(&target(&closed, OtlpProtocol::Grpc)).expect("client");
        let e = rt.block_on(client.export(&req)).expect_err("nothing there");
        assert!(matches!(e, OtlpError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(&closed), "{e}");
    }
}
