//! The host's client for husk-agent: connects to guest vsock port 1024 through the VM's hybrid
//! vsock socket, performs the `husk.agent.v1` handshake (refusing another major version), and
//! exposes the agent and health RPCs.
//!
//! Owns the connection and the version check. Must never retry an RPC that may have had an
//! effect in the guest; only connecting is retried, while the agent is not yet listening.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_hypervisor::vsock::{self, VsockError};
use husk_protocols::agent::{
    self, ContainerRef, ContainerStats, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, ExecProcessRequest, GetOOMEventRequest, GuestDetails,
    GuestDetailsRequest, HandshakeRequest, HandshakeResponse, OOMEvent, ProcessInfo, ProcessRef,
    RemoveContainerRequest, ResizeTtyRequest, SignalProcessRequest, StartContainerRequest,
    UpdateContainerRequest,
};
use husk_protocols::frame::{read_frame, write_frame, FrameError};
use husk_protocols::health::{self, CheckRequest, CheckResponse};
use husk_protocols::ports::AGENT_PORT;
use husk_protocols::stdio::{StreamKind, StreamOpen, StreamReply, STDIO_PORT};
use husk_protocols::trace_context::TRACEPARENT;
use tracing::Instrument;

/// Why the agent could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent did not start listening on vsock port {AGENT_PORT} within {timeout:?}: {last}")]
    NotListening { timeout: Duration, last: VsockError },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Incompatible(#[from] agent::Incompatible),
    #[error("agent RPC {rpc} failed: {}", describe(source))]
    Rpc {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("cannot set up the agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent (v1.{minor}) lacks the {capability:?} capability needed to {what}: rebuild the guest image with this husk's agent (husk image build)")]
    Lacks {
        capability: &'static str,
        minor: u32,
        what: &'static str,
    },
    #[error("opening the {kind:?} stream of {container}: {detail}")]
    Stream {
        container: String,
        kind: StreamKind,
        detail: String,
    },
}

/// A ttrpc error for people: the agent's status code and message as it wrote them.
fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => match s.code.enum_value() {
            Ok(code) => format!("{code:?}: {}", s.message),
            Err(n) => format!("code {n}: {}", s.message),
        },
        other => other.to_string(),
    }
}

impl AgentError {
    /// The ttrpc status code, when the agent refused a request.
    pub fn rpc_code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => s.code.enum_value().ok(),
            _ => None,
        }
    }
}

/// Copies an output stream of a process (opened with [`open_process_stream`]) to `to` on a
/// thread of its own until the agent closes it (after the last byte), flushing as it goes.
/// Join the handle to know that all the output was written.
pub fn copy_output(
    mut from: std::os::unix::net::UnixStream,
    mut to: impl std::io::Write + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match std::io::Read::read(&mut from, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]).and_then(|()| to.flush()) {
                        tracing::warn!(error = %e, "writing a process's output");
                        break;
                    }
                }
            }
        }
    })
}

/// Opens one `husk.stdio.v1` stream of a container's process. Attach before StartContainer.
pub fn open_stream(
    vsock_path: &Path,
    container: &str,
    kind: StreamKind,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, AgentError> {
    open_process_stream(vsock_path, container, "", kind, timeout)
}

/// Opens one `husk.stdio.v1` stream of a process (`exec_id` empty: the container's init).
/// Attach before the process starts.
pub fn open_process_stream(
    vsock_path: &Path,
    container: &str,
    exec_id: &str,
    kind: StreamKind,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, AgentError> {
    let err = |detail: String| AgentError::Stream {
        container: container.to_owned(),
        kind,
        detail,
    };
    let span = tracing::info_span!(
        "stdio.open",
        otel.name = format!("stdio open {kind:?}"),
        container.id = container,
        exec.id = exec_id,
    );
    let _entered = span.enter();
    let mut s = vsock::connect(vsock_path, STDIO_PORT, timeout)?;
    let open = StreamOpen {
        protocol: husk_protocols::stdio::PROTOCOL.to_owned(),
        container_id: container.to_owned(),
        exec_id: exec_id.to_owned(),
        stream: kind,
        traceparent: husk_telemetry::propagation::traceparent(&span),
    };
    write_frame(&mut s, &open).map_err(|e| err(e.to_string()))?;
    s.set_read_timeout(Some(timeout))?;
    let reply: StreamReply = read_frame(&mut s).map_err(|e| match e {
        FrameError::Closed => err("the agent closed the stream".into()),
        e => err(e.to_string()),
    })?;
    if let Some(detail) = reply.error {
        return Err(err(detail));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// A connected, version-checked agent.
pub struct AgentClient {
    agent: agent::AgentClient,
    health: health::HealthClient,
    handshake: HandshakeResponse,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// Calls one agent RPC inside a client span named after it (`agent CreateContainer`), with the
/// span's W3C `traceparent` in the request's metadata so the agent's span becomes its child.
/// `timeout`: the call's deadline; none for calls that wait on the guest (WaitProcess).
/// Untraced (tracing off), the span is inert and the metadata carries nothing.
async fn traced_call<T, F, Fut>(
    name: &'static str,
    timeout: Option<Duration>,
    f: F,
) -> Result<T, AgentError>
where
    F: FnOnce(ttrpc::context::Context) -> Fut,
    Fut: std::future::Future<Output = ttrpc::Result<T>>,
{
    let span = tracing::info_span!(
        "agent.rpc",
        otel.name = format!("agent {name}"),
        otel.kind = "client",
        rpc.system = "ttrpc",
        rpc.method = name,
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let mut ctx = match timeout {
        Some(t) => ttrpc::context::with_timeout(t.as_nanos().min(i64::MAX as u128) as i64),
        None => ttrpc::context::Context::default(),
    };
    if let Some(tp) = husk_telemetry::propagation::traceparent(&span) {
        ctx.add(TRACEPARENT.to_owned(), tp);
    }
    let result = f(ctx).instrument(span.clone()).await;
    result.map_err(|source| {
        let e = AgentError::Rpc { rpc: name, source };
        span.record("otel.status_code", "error");
        span.record("error", tracing::field::display(&e));
        e
    })
}

/// Opens the vsock stream, retrying while nobody listens yet (the agent is still starting).
async fn open(
    vsock_path: &Path,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, AgentError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match vsock::connect(vsock_path, AGENT_PORT, left.max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(e @ VsockError::NoListener { .. }) if !left.is_zero() => {
                tracing::trace!(error = %e, "agent not listening yet");
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(VsockError::NoListener { .. }) => {
                return Err(AgentError::NotListening {
                    timeout,
                    last: VsockError::NoListener { port: AGENT_PORT },
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl AgentClient {
    /// Connects and handshakes. `timeout` bounds both the wait for the agent to listen and
    /// each RPC.
    pub async fn connect(vsock_path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = open(vsock_path, timeout).await?;
        Self::over(stream, timeout).await
    }

    /// Connects to an agent serving on a plain Unix socket (an agent run on the host as a
    /// benchmark's reference) and handshakes.
    pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        Self::over(stream, timeout).await
    }

    /// Handshakes over an open stream to the agent.
    async fn over(
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
        let agent = agent::AgentClient::new(client.clone());
        let health = health::HealthClient::new(client);
        let req = HandshakeRequest {
            host_protocol: agent::PROTOCOL.to_owned(),
            host_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        let handshake =
            traced_call("Handshake", Some(timeout), |c| agent.handshake(c, &req)).await?;
        agent::check_compatible(&handshake)?;
        Ok(Self {
            agent,
            health,
            handshake,
            timeout,
        })
    }

    /// The agent's handshake answer (version, capabilities).
    pub fn handshake(&self) -> &HandshakeResponse {
        &self.handshake
    }

    /// Whether the agent offers an optional feature.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.handshake.capabilities.iter().any(|c| c == cap)
    }

    pub async fn check(&self) -> Result<CheckResponse, AgentError> {
        let req = CheckRequest::default();
        traced_call("Check", Some(self.timeout), |c| self.health.check(c, &req)).await
    }

    fn process(container: &str, exec_id: &str) -> ProcessRef {
        ProcessRef {
            container_id: container.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        }
    }

    /// Creates a container from an OCI spec (JSON) on the virtio-fs share `rootfs_tag`.
    pub async fn create_container(
        &self,
        id: &str,
        spec_json: &str,
        rootfs_tag: &str,
    ) -> Result<(), AgentError> {
        self.create_container_at(id, spec_json, rootfs_tag, "")
            .await
    }

    /// Creates a container whose rootfs is the directory `rootfs_path` of the share
    /// `rootfs_tag` (a pod's containers share one share).
    pub async fn create_container_at(
        &self,
        id: &str,
        spec_json: &str,
        rootfs_tag: &str,
        rootfs_path: &str,
    ) -> Result<(), AgentError> {
        let req = CreateContainerRequest {
            container_id: id.to_owned(),
            oci_spec_json: spec_json.to_owned(),
            rootfs_tag: rootfs_tag.to_owned(),
            rootfs_path: rootfs_path.to_owned(),
            ..Default::default()
        };
        traced_call("CreateContainer", Some(self.timeout), |c| {
            self.agent.create_container(c, &req)
        })
        .await
        .map(drop)
    }

    /// Starts the container's init process; returns its guest pid.
    pub async fn start_container(&self, id: &str) -> Result<u32, AgentError> {
        self.start_process(id, "").await
    }

    /// Starts a process (`exec_id` empty: the container's init); returns its guest pid.
    pub async fn start_process(&self, id: &str, exec_id: &str) -> Result<u32, AgentError> {
        let req = StartContainerRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        traced_call("StartContainer", Some(self.timeout), |c| {
            self.agent.start_container(c, &req)
        })
        .await
        .map(|r| r.pid)
    }

    /// Waits, without a deadline, for the init process to exit and its output to be delivered.
    pub async fn wait_process(&self, id: &str) -> Result<i32, AgentError> {
        self.wait(id, "").await
    }

    /// Waits, without a deadline, for a process to exit and its output to be delivered.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let req = Self::process(id, exec_id);
        traced_call("WaitProcess", None, |c| self.agent.wait_process(c, &req))
            .await
            .map(|r| r.exit_status)
    }

    /// Signals the init process.
    pub async fn signal_process(&self, id: &str, signal: u32) -> Result<(), AgentError> {
        self.signal(id, "", signal).await
    }

    /// Signals a process.
    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), AgentError> {
        let req = SignalProcessRequest {
            process: Some(Self::process(id, exec_id)).into(),
            signal,
            ..Default::default()
        };
        traced_call("SignalProcess", Some(self.timeout), |c| {
            self.agent.signal_process(c, &req)
        })
        .await
        .map(drop)
    }

    /// Ends a process's stdin at once (bytes still in flight on its stream are dropped; close
    /// the stream to end stdin after the last byte).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = Self::process(id, exec_id);
        traced_call("CloseStdin", Some(self.timeout), |c| {
            self.agent.close_stdin(c, &req)
        })
        .await
        .map(drop)
    }

    /// Prepares the sandbox: its id, the guest's hostname and resolver lines.
    pub async fn create_sandbox(
        &self,
        id: &str,
        hostname: &str,
        dns: &[String],
    ) -> Result<(), AgentError> {
        self.create_sandbox_on(id, hostname, dns, &[], &[]).await
    }

    /// Prepares the sandbox with its network: the guest's NICs (found by MAC) and routes.
    pub async fn create_sandbox_on(
        &self,
        id: &str,
        hostname: &str,
        dns: &[String],
        interfaces: &[agent::Interface],
        routes: &[agent::Route],
    ) -> Result<(), AgentError> {
        if !(interfaces.is_empty() || self.has_capability(agent::capability::NETWORK)) {
            return Err(AgentError::Lacks {
                capability: agent::capability::NETWORK,
                minor: self.handshake.minor,
                what: "configure the pod's network",
            });
        }
        let req = CreateSandboxRequest {
            sandbox_id: id.to_owned(),
            hostname: hostname.to_owned(),
            dns: dns.to_vec(),
            interfaces: interfaces.to_vec(),
            routes: routes.to_vec(),
            ..Default::default()
        };
        traced_call("CreateSandbox", Some(self.timeout), |c| {
            self.agent.create_sandbox(c, &req)
        })
        .await
        .map(drop)
    }

    /// Removes every container and forgets the sandbox.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<(), AgentError> {
        let req = DestroySandboxRequest {
            sandbox_id: id.to_owned(),
            ..Default::default()
        };
        traced_call("DestroySandbox", Some(self.timeout), |c| {
            self.agent.destroy_sandbox(c, &req)
        })
        .await
        .map(drop)
    }

    /// Records a process (an OCI `process` object as JSON) to run in a running container;
    /// attach its streams, then [`Self::start_process`] it.
    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
    ) -> Result<(), AgentError> {
        let req = ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process_json: process_json.to_owned(),
            ..Default::default()
        };
        traced_call("ExecProcess", Some(self.timeout), |c| {
            self.agent.exec_process(c, &req)
        })
        .await
        .map(drop)
    }

    /// Sets a process's terminal size.
    pub async fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), AgentError> {
        let req = ResizeTtyRequest {
            process: Some(Self::process(id, exec_id)).into(),
            rows,
            columns,
            ..Default::default()
        };
        traced_call("ResizeTty", Some(self.timeout), |c| {
            self.agent.resize_tty(c, &req)
        })
        .await
        .map(drop)
    }

    fn container(id: &str) -> ContainerRef {
        ContainerRef {
            container_id: id.to_owned(),
            ..Default::default()
        }
    }

    /// The processes of a container.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, AgentError> {
        let req = Self::container(id);
        traced_call("ListProcesses", Some(self.timeout), |c| {
            self.agent.list_processes(c, &req)
        })
        .await
        .map(|r| r.processes)
    }

    /// A container's cgroup statistics.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        let req = Self::container(id);
        traced_call("StatsContainer", Some(self.timeout), |c| {
            self.agent.stats_container(c, &req)
        })
        .await
    }

    /// Freezes every process of a container.
    pub async fn pause(&self, id: &str) -> Result<(), AgentError> {
        let req = Self::container(id);
        traced_call("PauseContainer", Some(self.timeout), |c| {
            self.agent.pause_container(c, &req)
        })
        .await
        .map(drop)
    }

    /// Thaws a paused container.
    pub async fn resume(&self, id: &str) -> Result<(), AgentError> {
        let req = Self::container(id);
        traced_call("ResumeContainer", Some(self.timeout), |c| {
            self.agent.resume_container(c, &req)
        })
        .await
        .map(drop)
    }

    /// Applies new limits (an OCI `linux.resources` object as JSON).
    pub async fn update(&self, id: &str, resources_json: &str) -> Result<(), AgentError> {
        let req = UpdateContainerRequest {
            container_id: id.to_owned(),
            resources_json: resources_json.to_owned(),
            ..Default::default()
        };
        traced_call("UpdateContainer", Some(self.timeout), |c| {
            self.agent.update_container(c, &req)
        })
        .await
        .map(drop)
    }

    /// Waits, without a deadline, for the next OOM kill in any container.
    pub async fn oom_event(&self) -> Result<OOMEvent, AgentError> {
        // A long poll, not an operation: untraced, so that it neither starts a trace of its
        // own nor holds a span open for the pod's whole life.
        self.agent
            .get_oom_event(
                ttrpc::context::Context::default(),
                &GetOOMEventRequest::default(),
            )
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "GetOOMEvent",
                source,
            })
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        let req = RemoveContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        traced_call("RemoveContainer", Some(self.timeout), |c| {
            self.agent.remove_container(c, &req)
        })
        .await
        .map(drop)
    }

    pub async fn guest_details(&self) -> Result<GuestDetails, AgentError> {
        let req = GuestDetailsRequest::default();
        traced_call("GetGuestDetails", Some(self.timeout), |c| {
            self.agent.get_guest_details(c, &req)
        })
        .await
    }
}
