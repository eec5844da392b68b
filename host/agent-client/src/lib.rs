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
    self, GuestDetails, GuestDetailsRequest, HandshakeRequest, HandshakeResponse,
};
use husk_protocols::health::{self, CheckRequest, CheckResponse};
use husk_protocols::ports::AGENT_PORT;

/// Why the agent could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent did not start listening on vsock port {AGENT_PORT} within {timeout:?}: {last}")]
    NotListening { timeout: Duration, last: VsockError },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Incompatible(#[from] agent::Incompatible),
    #[error("agent RPC {rpc} failed: {source}")]
    Rpc {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("cannot set up the agent connection: {0}")]
    Io(#[from] std::io::Error),
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

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
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
        let handshake = agent
            .handshake(ctx(timeout), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "Handshake",
                source,
            })?;
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
        self.health
            .check(ctx(self.timeout), &CheckRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "Check",
                source,
            })
    }

    pub async fn guest_details(&self) -> Result<GuestDetails, AgentError> {
        self.agent
            .get_guest_details(ctx(self.timeout), &GuestDetailsRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                rpc: "GetGuestDetails",
                source,
            })
    }
}
