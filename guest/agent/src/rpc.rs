//! The agent's RPC handlers: every `husk.agent.v1` and `husk.health.v1` method, in one place.
//!
//! Owns turning requests into answers. Each handler validates its input and returns a typed
//! ttrpc error; a bad request must never panic or stop the agent.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use husk_protocols::agent::{
    self, capability, ContainerRef, ContainerStats, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, Empty, ExecProcessRequest, GetOOMEventRequest, GuestDetails,
    GuestDetailsRequest, HandshakeRequest, HandshakeResponse, ListProcessesResponse, OOMEvent,
    ProcessRef, RemoveContainerRequest, ResizeTtyRequest, SignalProcessRequest,
    StartContainerRequest, StartContainerResponse, UpdateContainerRequest, WaitProcessResponse,
};
use husk_protocols::health::{self, check_response::ServingStatus, CheckRequest, CheckResponse};
use husk_protocols::trace_context::TRACEPARENT;
use tracing::Instrument;
use ttrpc::r#async::TtrpcContext;

use crate::container::{ContainerError, Containers};
use crate::guest_info;
use crate::network::{self, NetworkError, NetworkPlan};
use crate::sandbox::{Sandbox, SandboxError};

/// Longest string field accepted in a request.
pub const MAX_FIELD: usize = 4096;

/// The state behind the handlers.
#[derive(Debug, Clone)]
pub struct AgentService {
    /// Root of the guest filesystem (`/`; a temporary tree in tests).
    root: PathBuf,
    containers: Arc<Containers>,
    sandbox: Arc<Sandbox>,
    /// The protocol major announced instead of [`agent::MAJOR`] (compatibility tests only).
    claim_major: Option<u32>,
}

fn container_error(e: ContainerError) -> ttrpc::Error {
    tracing::warn!(error = %e, "request refused");
    rpc_error(e.code(), e.to_string())
}

fn network_error(e: NetworkError) -> ttrpc::Error {
    tracing::warn!(error = %e, "network set-up refused or failed");
    rpc_error(e.code(), e.to_string())
}

fn sandbox_error(e: SandboxError) -> ttrpc::Error {
    tracing::warn!(error = %e, "request refused");
    rpc_error(e.code(), e.to_string())
}

/// A process reference's fields, bounded.
fn process_ref(p: Option<&ProcessRef>) -> ttrpc::Result<&ProcessRef> {
    let p = p.ok_or_else(|| rpc_error(ttrpc::Code::INVALID_ARGUMENT, "process is required"))?;
    bounded("container_id", &p.container_id)?;
    bounded("exec_id", &p.exec_id)?;
    Ok(p)
}

/// A ttrpc error with a code and message.
pub fn rpc_error(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// The server span of one RPC (`agent CreateContainer`), a child of the host's client span,
/// when the request's metadata carries its `traceparent`. The agent joins traces, never starts
/// one: an untraced request (tracing off, or a long poll) gets no span.
fn rpc_span(ctx: &TtrpcContext, method: &'static str) -> tracing::Span {
    let Some(tp) = ctx
        .metadata
        .get(TRACEPARENT)
        .and_then(|values| values.first())
    else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("agent {method}"),
        otel.kind = "server",
        rpc.system = "ttrpc",
        rpc.method = method,
    );
    if !husk_telemetry::propagation::set_parent(&span, tp) {
        return tracing::Span::none();
    }
    span
}

fn bounded(field: &str, value: &str) -> ttrpc::Result<()> {
    if value.len() > MAX_FIELD {
        return Err(rpc_error(
            ttrpc::Code::INVALID_ARGUMENT,
            format!(
                "{field} is {} bytes, over the {MAX_FIELD}-byte limit",
                value.len()
            ),
        ));
    }
    Ok(())
}

impl AgentService {
    pub fn new(
        root: impl Into<PathBuf>,
        containers: Arc<Containers>,
        sandbox: Arc<Sandbox>,
    ) -> Self {
        Self {
            root: root.into(),
            containers,
            sandbox,
            claim_major: None,
        }
    }

    /// Announces protocol major `major` instead of this agent's (compatibility tests only).
    pub fn claiming_major(mut self, major: Option<u32>) -> Self {
        self.claim_major = major;
        self
    }

    /// The ttrpc services this agent serves.
    pub fn services(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        let me = Arc::new(self);
        let mut all = agent::create_agent(me.clone());
        all.extend(health::create_health(me));
        all
    }

    pub fn handshake_response(&self, req: &HandshakeRequest) -> ttrpc::Result<HandshakeResponse> {
        bounded("host_protocol", &req.host_protocol)?;
        bounded("host_version", &req.host_version)?;
        tracing::info!(host_protocol = %req.host_protocol, host_version = %req.host_version, "handshake");
        Ok(HandshakeResponse {
            protocol: agent::PROTOCOL.to_owned(),
            major: self.claim_major.unwrap_or(agent::MAJOR),
            minor: agent::MINOR,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: [
                capability::GUEST_DETAILS,
                capability::CONTAINERS,
                capability::STDIO_STREAMS,
                capability::SANDBOX,
                capability::EXEC,
                capability::TTY,
                capability::CGROUPS,
                capability::OOM_EVENTS,
                capability::PODS,
                capability::NETWORK,
                capability::OCI_JAIL,
            ]
            .map(str::to_owned)
            .to_vec(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl agent::Agent for AgentService {
    async fn handshake(
        &self,
        ctx: &TtrpcContext,
        req: HandshakeRequest,
    ) -> ttrpc::Result<HandshakeResponse> {
        async { self.handshake_response(&req) }
            .instrument(rpc_span(ctx, "Handshake"))
            .await
    }

    async fn get_guest_details(
        &self,
        ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetails> {
        async {
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || guest_info::gather(&root))
                .await
                .map_err(|e| {
                    rpc_error(
                        ttrpc::Code::INTERNAL,
                        format!("gathering guest details: {e}"),
                    )
                })
        }
        .instrument(rpc_span(ctx, "GetGuestDetails"))
        .await
    }

    async fn create_container(
        &self,
        ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            bounded("rootfs_tag", &req.rootfs_tag)?;
            bounded("rootfs_path", &req.rootfs_path)?;
            // The jail's set-up and the hooks take a while: off the runtime's threads.
            let containers = self.containers.clone();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    containers.create(
                        &req.container_id,
                        &req.oci_spec_json,
                        &req.rootfs_tag,
                        &req.rootfs_path,
                    )
                })
            })
            .await
            .map_err(|e| ttrpc::Error::Others(format!("creating the container: {e}")))?
            .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "CreateContainer"))
        .await
    }

    async fn start_container(
        &self,
        ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        async {
            bounded("container_id", &req.container_id)?;
            bounded("exec_id", &req.exec_id)?;
            let containers = self.containers.clone();
            let span = tracing::Span::current();
            let pid = tokio::task::spawn_blocking(move || {
                span.in_scope(|| containers.start(&req.container_id, &req.exec_id))
            })
            .await
            .map_err(|e| ttrpc::Error::Others(format!("starting the process: {e}")))?
            .map_err(container_error)?;
            Ok(StartContainerResponse {
                pid,
                ..Default::default()
            })
        }
        .instrument(rpc_span(ctx, "StartContainer"))
        .await
    }

    async fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: ProcessRef,
    ) -> ttrpc::Result<WaitProcessResponse> {
        async {
            bounded("container_id", &req.container_id)?;
            bounded("exec_id", &req.exec_id)?;
            let exit_status = self
                .containers
                .wait(&req.container_id, &req.exec_id)
                .await
                .map_err(container_error)?;
            Ok(WaitProcessResponse {
                exit_status,
                ..Default::default()
            })
        }
        .instrument(rpc_span(ctx, "WaitProcess"))
        .await
    }

    async fn signal_process(
        &self,
        ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            let p = process_ref(req.process.as_ref())?;
            self.containers
                .signal(&p.container_id, &p.exec_id, req.signal)
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "SignalProcess"))
        .await
    }

    async fn close_stdin(&self, ctx: &TtrpcContext, req: ProcessRef) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            bounded("exec_id", &req.exec_id)?;
            self.containers
                .close_stdin(&req.container_id, &req.exec_id)
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "CloseStdin"))
        .await
    }

    async fn remove_container(
        &self,
        ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            self.containers
                .remove(&req.container_id)
                .await
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "RemoveContainer"))
        .await
    }

    async fn create_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("sandbox_id", &req.sandbox_id)?;
            bounded("hostname", &req.hostname)?;
            let plan = NetworkPlan::parse(&req.interfaces, &req.routes).map_err(network_error)?;
            let set_hostname = |h: &str| nix::unistd::sethostname(h).map_err(std::io::Error::from);
            self.sandbox
                .create(&req, set_hostname)
                .map_err(sandbox_error)?;
            let configured = async {
                network::netlink::loopback_up().await?;
                network::netlink::apply(&plan).await
            }
            .await;
            if let Err(e) = configured {
                self.sandbox.forget();
                return Err(network_error(e));
            }
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "CreateSandbox"))
        .await
    }

    async fn destroy_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("sandbox_id", &req.sandbox_id)?;
            self.sandbox.check(&req.sandbox_id).map_err(sandbox_error)?;
            self.containers
                .remove_all()
                .await
                .map_err(container_error)?;
            self.sandbox.forget();
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "DestroySandbox"))
        .await
    }

    async fn exec_process(
        &self,
        ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            bounded("exec_id", &req.exec_id)?;
            self.containers
                .exec(&req.container_id, &req.exec_id, &req.process_json)
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "ExecProcess"))
        .await
    }

    async fn resize_tty(&self, ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        async {
            let p = process_ref(req.process.as_ref())?;
            self.containers
                .resize(&p.container_id, &p.exec_id, req.rows, req.columns)
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "ResizeTty"))
        .await
    }

    async fn list_processes(
        &self,
        ctx: &TtrpcContext,
        req: ContainerRef,
    ) -> ttrpc::Result<ListProcessesResponse> {
        async {
            bounded("container_id", &req.container_id)?;
            let processes = self
                .containers
                .list_processes(&req.container_id)
                .map_err(container_error)?;
            Ok(ListProcessesResponse {
                processes,
                ..Default::default()
            })
        }
        .instrument(rpc_span(ctx, "ListProcesses"))
        .await
    }

    async fn stats_container(
        &self,
        ctx: &TtrpcContext,
        req: ContainerRef,
    ) -> ttrpc::Result<ContainerStats> {
        async {
            bounded("container_id", &req.container_id)?;
            self.containers
                .stats(&req.container_id)
                .map_err(container_error)
        }
        .instrument(rpc_span(ctx, "StatsContainer"))
        .await
    }

    async fn pause_container(&self, ctx: &TtrpcContext, req: ContainerRef) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            self.containers
                .set_paused(&req.container_id, true)
                .await
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "PauseContainer"))
        .await
    }

    async fn resume_container(
        &self,
        ctx: &TtrpcContext,
        req: ContainerRef,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            self.containers
                .set_paused(&req.container_id, false)
                .await
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "ResumeContainer"))
        .await
    }

    async fn update_container(
        &self,
        ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        async {
            bounded("container_id", &req.container_id)?;
            self.containers
                .update(&req.container_id, &req.resources_json)
                .map_err(container_error)?;
            Ok(Empty::default())
        }
        .instrument(rpc_span(ctx, "UpdateContainer"))
        .await
    }

    async fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        async {
            self.containers
                .next_oom()
                .await
                .ok_or_else(|| rpc_error(ttrpc::Code::UNAVAILABLE, "the agent is shutting down"))
        }
        .instrument(rpc_span(ctx, "GetOOMEvent"))
        .await
    }
}

#[async_trait]
impl health::Health for AgentService {
    async fn check(&self, ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        async {
            bounded("service", &req.service)?;
            let status = match req.service.as_str() {
                "" | agent::PROTOCOL | health::PROTOCOL => ServingStatus::SERVING,
                other => {
                    return Err(rpc_error(
                        ttrpc::Code::NOT_FOUND,
                        format!("unknown service {other:?}"),
                    ))
                }
            };
            Ok(CheckResponse {
                status: status.into(),
                ..Default::default()
            })
        }
        .instrument(rpc_span(ctx, "Check"))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Paths;

    fn service() -> AgentService {
        let paths = Paths {
            containers: "/nonexistent".into(),
            cgroup_root: None,
            proc: "/proc".into(),
            shares: "/nonexistent".into(),
        };
        AgentService::new(
            "/",
            Arc::new(Containers::new(paths)),
            Arc::new(Sandbox::new("/nonexistent")),
        )
    }

    #[test]
    fn a_claimed_major_is_announced() {
        let r = service()
            .claiming_major(Some(2))
            .handshake_response(&HandshakeRequest::default())
            .unwrap();
        assert_eq!(r.major, 2);
        assert!(agent::check_compatible(&r).is_err());
    }

    #[test]
    fn handshake_announces_version_and_capabilities() {
        let svc = service();
        let r = svc
            .handshake_response(&HandshakeRequest {
                host_protocol: agent::PROTOCOL.into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (r.protocol.as_str(), r.major),
            (agent::PROTOCOL, agent::MAJOR)
        );
        assert!(r
            .capabilities
            .contains(&capability::GUEST_DETAILS.to_owned()));
        assert!(agent::check_compatible(&r).is_ok());
    }

    #[test]
    fn oversized_fields_are_refused() {
        let svc = service();
        let req = HandshakeRequest {
            host_version: "x".repeat(MAX_FIELD + 1),
            ..Default::default()
        };
        let e = svc.handshake_response(&req).unwrap_err();
        assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "{e:?}");
    }
}
