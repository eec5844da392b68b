//! containerd's Task service for one pod: each task RPC turned into agent calls in the pod's
//! VM, the task and exec states containerd asks about, and the events it is owed.
//!
//! Owns the mapping between containerd's view (tasks, execs, statuses, exit times) and the
//! guest's. Must never publish a task's exit before its output was copied out, nor leave a VM,
//! mount or copy behind when the last task is deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use husk_agent_client::{open_process_stream, AgentError};
use husk_config::Config;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::io::{self, Copies, Target};
use crate::pod::{Pod, POD_TAG};
use crate::rootfs;
use husk_protocols::agent::SHARES_DIR;

/// How long the output of a process whose VM died may still take to arrive.
const LOST_OUTPUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Serial console lines logged when a pod's guest fails.
const SERIAL_TAIL: usize = 20;

/// An event for containerd: its topic and message.
pub type Event = (&'static str, Box<dyn MessageDyn>);

/// How a process ended: exit status (128+signal) and when.
#[derive(Debug, Clone)]
struct Exited {
    status: u32,
    at: Timestamp,
}

/// One process: a container's init (empty `exec_id`) or an exec'd one.
struct Proc {
    exec_id: String,
    terminal: bool,
    stdio: [String; 3],
    pid: Mutex<u32>,
    status: Mutex<api::Status>,
    exit: watch::Sender<Option<Exited>>,
}

impl Proc {
    fn new(exec_id: &str, terminal: bool, stdio: [String; 3]) -> Self {
        Self {
            exec_id: exec_id.to_owned(),
            terminal,
            stdio,
            pid: Mutex::new(0),
            status: Mutex::new(api::Status::CREATED),
            exit: watch::channel(None).0,
        }
    }

    fn status(&self) -> api::Status {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, s: api::Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn pid(&self) -> u32 {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exited(&self) -> Option<Exited> {
        self.exit.borrow().clone()
    }
}

/// One container (a task) of the pod.
struct Container {
    id: String,
    bundle: PathBuf,
    /// Where its rootfs is mounted on the host (in the pod's shared directory).
    rootfs: PathBuf,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Container {
    fn proc(&self, exec_id: &str) -> TtrpcResult<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("no exec {exec_id:?} in {}", self.id),
                )
            })
    }
}

/// The string annotations of an OCI spec (others are ignored).
fn annotations(spec: &serde_json::Value) -> HashMap<String, String> {
    spec["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// An agent error as containerd should see it: the guest's own words, with its code (the
/// agent's ttrpc and containerd's are different crate versions of the same codes).
fn agent_status(e: AgentError) -> ttrpc::Error {
    use containerd_shim::protos::protobuf::Enum;
    let code = e
        .rpc_code()
        .and_then(|c| Code::from_i32(c as i32))
        .unwrap_or(Code::INTERNAL);
    status(code, e.to_string())
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{e:#}"))
}

/// The Task service of one shim (one pod).
pub struct TaskService {
    /// containerd's namespace of this shim's tasks.
    namespace: String,
    /// husk's configuration, or why it could not be read (reported on Create).
    config: Result<Config, String>,
    exit: Arc<ExitSignal>,
    events: mpsc::Sender<Event>,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// The sandbox's root span (`sandbox <id>`), parent of every Task API call's span, so one
    /// pod is one trace; ended at Shutdown. Inert when tracing is off.
    root: Mutex<Option<tracing::Span>>,
}

impl TaskService {
    pub fn new(
        id: &str,
        namespace: String,
        config: Result<Config, String>,
        exit: Arc<ExitSignal>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let root = tracing::info_span!(
            parent: None,
            "sandbox",
            otel.name = format!("sandbox {id}"),
            sandbox.id = id,
            containerd.namespace = %namespace,
        );
        Self {
            namespace,
            config,
            exit,
            events,
            pod: tokio::sync::Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            root: Mutex::new(Some(root)),
        }
    }

    /// The sandbox's root span (disabled once the shim is shutting down).
    fn root(&self) -> tracing::Span {
        self.root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(tracing::Span::none)
    }

    /// The span of one Task API call: a child of containerd's span when the request carries a
    /// `traceparent`, else of the sandbox's root span.
    fn task_span(&self, ctx: &TtrpcContext, method: &'static str, id: &str) -> tracing::Span {
        let span = tracing::info_span!(
            parent: &self.root(),
            "task",
            otel.name = format!("task {method}"),
            otel.kind = "server",
            rpc.system = "ttrpc",
            rpc.service = "containerd.task.v2.Task",
            rpc.method = method,
            task.id = id,
        );
        if let Some(tp) = ctx
            .metadata
            .get(husk_protocols::trace_context::TRACEPARENT)
            .and_then(|v| v.first())
        {
            husk_telemetry::propagation::set_parent(&span, tp);
        }
        span
    }

    /// Ends the sandbox's root span and waits (bounded) for every span of the shim and its
    /// guest to reach the store and the collector.
    async fn finish_tracing(&self) {
        drop(self.root.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = crate::telemetry::get() {
            let t = t.clone();
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if self.events.try_send((topic, event)).is_err() {
            tracing::warn!(topic, "event dropped: the publisher is behind");
        }
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("no task {id:?} in this shim")))
    }

    async fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the pod's VM is not running"))
    }

    /// Opens a process's streams in the guest and starts copying them to containerd's.
    fn attach(pod: &Pod, id: &str, namespace: &str, p: &Proc) -> anyhow::Result<Copies> {
        let [stdin, stdout, stderr] = &p.stdio;
        let (stdin, stdout, stderr) = (
            Target::parse(stdin)?,
            Target::parse(stdout)?,
            Target::parse(stderr)?,
        );
        let timeout = std::time::Duration::from_secs(60);
        io::attach(
            &stdin,
            &stdout,
            &stderr,
            p.terminal,
            (id, namespace),
            |kind| {
                Ok(open_process_stream(
                    &pod.vsock, id, &p.exec_id, kind, timeout,
                )?)
            },
        )
    }

    /// Waits for a process in the guest, then for its output, then publishes its exit.
    fn watch_exit(&self, pod: Arc<Pod>, id: String, p: Arc<Proc>, copies: Copies) {
        let events = self.events.clone();
        let root = self.root();
        tokio::spawn(async move {
            let code = tokio::select! {
                r = pod.agent.wait(&id, &p.exec_id) => match r {
                    Ok(c) => Some(u32::try_from(c).unwrap_or(255)),
                    Err(e) => {
                        tracing::error!(task = %id, error = %e, "waiting for the process in the guest");
                        None
                    }
                },
                () = pod.vm_exited() => None,
            };
            let lost = code.is_none();
            let code = code.unwrap_or_else(|| {
                // The guest is gone (or its agent): say so with what its console said last.
                tracing::error!(
                    task = %id,
                    vm_running = pod.vm_running(),
                    serial = %pod.serial_tail(SERIAL_TAIL).join("\n"),
                    "lost the process: the pod's VM or its agent failed"
                );
                255
            });
            // Output first: containerd (and `ctr run`) stop reading at the exit event.
            let copied = tokio::task::spawn_blocking(move || copies.wait());
            if lost {
                // A dead VM's streams may never end: do not hold the exit event for them.
                let _ = tokio::time::timeout(LOST_OUTPUT_WAIT, copied).await;
            } else {
                let _ = copied.await;
            }
            let at = Timestamp::now();
            p.set_status(api::Status::STOPPED);
            p.exit.send_replace(Some(Exited {
                status: code,
                at: at.clone(),
            }));
            let event = TaskExit {
                container_id: id.clone(),
                id: if p.exec_id.is_empty() {
                    id.clone()
                } else {
                    p.exec_id.clone()
                },
                pid: p.pid(),
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            };
            let _ = events
                .send((topics::TASK_EXIT_EVENT_TOPIC, Box::new(event)))
                .await;
        }.instrument(root));
    }

    /// Forwards the guest's OOM kills as TaskOOM events.
    fn watch_oom(&self, pod: Arc<Pod>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(e) = pod.agent.oom_event().await {
                let event = TaskOOM {
                    container_id: e.container_id,
                    ..Default::default()
                };
                let _ = events
                    .send((topics::TASK_OOM_EVENT_TOPIC, Box::new(event)))
                    .await;
            }
        });
    }

    async fn create_task(&self, req: &api::CreateTaskRequest) -> anyhow::Result<Arc<Container>> {
        let config = self
            .config
            .as_ref()
            .map_err(|e| anyhow::anyhow!("husk's configuration: {e}"))?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = std::fs::read_to_string(bundle.join("config.json"))
            .map_err(|e| anyhow::anyhow!("reading {}/config.json: {e}", bundle.display()))?;
        let mut spec: serde_json::Value = serde_json::from_str(&spec)
            .map_err(|e| anyhow::anyhow!("{}/config.json: {e}", bundle.display()))?;
        let sandbox = crate::shim::grouping(&bundle, &req.id);
        let pod = {
            // Held while booting: two creates in one pod never boot two VMs.
            let mut slot = self.pod.lock().await;
            match slot.as_ref() {
                Some(p) => p.clone(),
                None => {
                    let netns = crate::network::netns_path(&spec);
                    // The pod's annotations may pick its guest image and console.
                    let config = config.with_annotations(&annotations(&spec))?;
                    let pod = Arc::new(
                        Pod::boot(&config, &bundle.join("shared"), &sandbox, netns.as_deref())
                            .await?,
                    );
                    *slot = Some(pod.clone());
                    self.watch_oom(pod.clone());
                    pod
                }
            }
        };
        let rel = format!("{}/rootfs", req.id);
        let target = pod.shared.join(&rel);
        let volumes = pod.shared.join(&req.id).join("mounts");
        let made = async {
            if !rootfs::mount(&req.rootfs, &target)? {
                std::fs::create_dir_all(&target)?;
                rootfs::bind(&bundle.join("rootfs"), &target)?;
            }
            // Volumes and other host bind mounts reach the guest through the pod's share.
            let guest_dir = format!("{SHARES_DIR}/{POD_TAG}/{}/mounts", req.id);
            rootfs::share_volumes(&mut spec, &volumes, &guest_dir)?;
            pod.agent
                .create_container_at(&req.id, &spec.to_string(), POD_TAG, &rel)
                .await
                .map_err(anyhow::Error::new)
        }
        .await;
        if let Err(e) = made {
            rootfs::unmount_container(&pod.shared.join(&req.id));
            if self
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                self.stop_pod().await;
            }
            return Err(e);
        }
        let init = Arc::new(Proc::new(
            "",
            req.terminal,
            [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
        ));
        *init.pid.lock().unwrap_or_else(|p| p.into_inner()) =
            // The hypervisor's pid, or the shim's own when the VM runs in it (as Kata reports).
            pod.vm_pids.first().copied().unwrap_or_else(std::process::id);
        pod.note_container(&req.id, true);
        Ok(Arc::new(Container {
            id: req.id.clone(),
            bundle,
            rootfs: target,
            init,
            execs: Mutex::new(HashMap::new()),
        }))
    }

    async fn stop_pod(&self) {
        let pod = self.pod.lock().await.take();
        if let Some(pod) = pod {
            pod.shutdown().await;
        }
    }
}

fn timestamp(e: &Option<Exited>) -> MessageField<Timestamp> {
    e.as_ref()
        .map_or_else(MessageField::none, |e| MessageField::some(e.at.clone()))
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let span = self.task_span(ctx, "Create", &req.id);
        async {
            if self.container(&req.id).is_ok() {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("task {} exists", req.id),
                ));
            }
            let c = self.create_task(&req).await.map_err(|e| {
                tracing::warn!(task = %req.id, error = %format!("{e:#}"), "create failed");
                match e.downcast::<AgentError>() {
                    Ok(a) => agent_status(a),
                    Err(e) => internal(e),
                }
            })?;
            let pid = c.init.pid();
            self.containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.id.clone(), c);
            self.publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req
                        .rootfs
                        .iter()
                        .map(|m| containerd_shim::protos::types::mount::Mount {
                            type_: m.type_.clone(),
                            source: m.source.clone(),
                            target: m.target.clone(),
                            options: m.options.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    pid,
                    ..Default::default()
                }),
            );
            Ok(api::CreateTaskResponse {
                pid,
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let span = self.task_span(ctx, "Start", &req.id);
        async {
            let c = self.container(&req.id)?;
            let p = c.proc(&req.exec_id)?;
            if p.status() != api::Status::CREATED {
                return Err(status(Code::FAILED_PRECONDITION, "already started"));
            }
            let pod = self.pod().await?;
            let copies = Self::attach(&pod, &c.id, &self.namespace, &p).map_err(internal)?;
            let pid = pod
                .agent
                .start_process(&c.id, &p.exec_id)
                .await
                .map_err(agent_status)?;
            *p.pid.lock().unwrap_or_else(|p| p.into_inner()) = pid;
            p.set_status(api::Status::RUNNING);
            self.watch_exit(pod, c.id.clone(), p.clone(), copies);
            if p.exec_id.is_empty() {
                self.publish(
                    topics::TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: c.id.clone(),
                        pid,
                        ..Default::default()
                    }),
                );
            } else {
                self.publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    Box::new(TaskExecStarted {
                        container_id: c.id.clone(),
                        exec_id: p.exec_id.clone(),
                        pid,
                        ..Default::default()
                    }),
                );
            }
            Ok(api::StartResponse {
                pid,
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let span = self.task_span(ctx, "State", &req.id);
        async {
            let c = self.container(&req.id)?;
            let p = c.proc(&req.exec_id)?;
            let exited = p.exited();
            let [stdin, stdout, stderr] = p.stdio.clone();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: c.bundle.display().to_string(),
                pid: p.pid(),
                status: p.status().into(),
                stdin,
                stdout,
                stderr,
                terminal: p.terminal,
                exit_status: exited.as_ref().map_or(0, |e| e.status),
                exited_at: timestamp(&exited),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let span = self.task_span(ctx, "Wait", &req.id);
        async {
            let p = self.container(&req.id)?.proc(&req.exec_id)?;
            let mut rx = p.exit.subscribe();
            let e = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| status(Code::NOT_FOUND, "the process was deleted while waiting"))?
                .clone();
            let exited = e.unwrap_or(Exited {
                status: 255,
                at: Timestamp::now(),
            });
            Ok(api::WaitResponse {
                exit_status: exited.status,
                exited_at: MessageField::some(exited.at),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Kill", &req.id);
        async {
            let c = self.container(&req.id)?;
            let p = c.proc(&req.exec_id)?;
            if p.status() == api::Status::STOPPED {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            let pod = self.pod().await?;
            // The init is PID 1 of the container's namespace: when it dies every process in it
            // does, so `--all` is the init's signal.
            pod.agent
                .signal(&c.id, &req.exec_id, req.signal)
                .await
                .map_err(agent_status)?;
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let span = self.task_span(ctx, "Delete", &req.id);
        async {
        let c = self.container(&req.id)?;
        let p = c.proc(&req.exec_id)?;
        if p.status() == api::Status::RUNNING || p.status() == api::Status::PAUSED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} is still running: kill it first", req.id),
            ));
        }
        let exited = p.exited();
        if !req.exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.exec_id);
        } else {
            let pod = self.pod().await.ok();
            if let Some(pod) = &pod {
                if let Err(e) = pod.agent.remove_container(&c.id).await {
                    tracing::warn!(task = %c.id, error = %e, "removing the container in the guest");
                }
                pod.note_container(&c.id, false);
            }
            if let Some(dir) = c.rootfs.parent() {
                rootfs::unmount_container(dir);
            }
            let last = {
                let mut all = self.containers.lock().unwrap_or_else(|p| p.into_inner());
                all.remove(&c.id);
                all.is_empty()
            };
            if last {
                self.stop_pod().await;
            }
            self.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: p.pid(),
                    exit_status: exited.as_ref().map_or(0, |e| e.status),
                    exited_at: timestamp(&exited),
                    ..Default::default()
                }),
            );
        }
        Ok(api::DeleteResponse {
            pid: p.pid(),
            exit_status: exited.as_ref().map_or(0, |e| e.status),
            exited_at: timestamp(&exited),
            ..Default::default()
        })
    }
        .instrument(span)
        .await
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Exec", &req.id);
        async {
            let c = self.container(&req.id)?;
            let process = std::str::from_utf8(&req.spec.value).map_err(|_| {
                status(
                    Code::INVALID_ARGUMENT,
                    "the exec's process spec is not UTF-8 JSON",
                )
            })?;
            let pod = self.pod().await?;
            pod.agent
                .exec_process(&c.id, &req.exec_id, process)
                .await
                .map_err(agent_status)?;
            let p = Arc::new(Proc::new(
                &req.exec_id,
                req.terminal,
                [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
            ));
            c.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.exec_id.clone(), p);
            self.publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            );
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let span = self.task_span(ctx, "Pids", &req.id);
        async {
            let c = self.container(&req.id)?;
            let pod = self.pod().await?;
            let procs = pod
                .agent
                .list_processes(&c.id)
                .await
                .map_err(agent_status)?;
            Ok(api::PidsResponse {
                processes: procs
                    .into_iter()
                    .map(|p| containerd_shim::protos::api::ProcessInfo {
                        pid: p.pid,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Pause", &req.id);
        async {
            let c = self.container(&req.id)?;
            let pod = self.pod().await?;
            pod.agent.pause(&c.id).await.map_err(agent_status)?;
            c.init.set_status(api::Status::PAUSED);
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            );
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Resume", &req.id);
        async {
            let c = self.container(&req.id)?;
            let pod = self.pod().await?;
            pod.agent.resume(&c.id).await.map_err(agent_status)?;
            c.init.set_status(api::Status::RUNNING);
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            );
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "ResizePty", &req.id);
        async {
            let c = self.container(&req.id)?;
            let pod = self.pod().await?;
            pod.agent
                .resize_tty(&c.id, &req.exec_id, req.height, req.width)
                .await
                .map_err(agent_status)?;
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "CloseIO", &req.id);
        async {
            // The stdin copy ends by itself when containerd closes its end of the FIFO, and the
            // guest then reads end of input after the last byte; closing here would drop bytes.
            let c = self.container(&req.id)?;
            c.proc(&req.exec_id)?;
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Update", &req.id);
        async {
            let c = self.container(&req.id)?;
            let json = std::str::from_utf8(&req.resources.value)
                .map_err(|_| status(Code::INVALID_ARGUMENT, "the resources are not UTF-8 JSON"))?;
            let pod = self.pod().await?;
            pod.agent.update(&c.id, json).await.map_err(agent_status)?;
            Ok(api::Empty::default())
        }
        .instrument(span)
        .await
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let span = self.task_span(ctx, "Stats", &req.id);
        async {
            let c = self.container(&req.id)?;
            let pod = self.pod().await?;
            let s = pod.agent.stats(&c.id).await.map_err(agent_status)?;
            let metrics = crate::metrics::from_guest(&s);
            let any = crate::metrics::pack(&metrics)
                .map_err(|e| status(Code::INTERNAL, format!("encoding the metrics: {e}")))?;
            Ok(api::StatsResponse {
                stats: MessageField::some(any),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let span = self.task_span(ctx, "Connect", &req.id);
        async {
            let task_pid = self.container(&req.id).map(|c| c.init.pid()).unwrap_or(0);
            Ok(api::ConnectResponse {
                shim_pid: std::process::id(),
                task_pid,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn shutdown(
        &self,
        ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let span = self.task_span(ctx, "Shutdown", &req.id);
        let stop = async {
            let idle = self
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if idle {
                self.stop_pod().await;
            }
            idle
        }
        .instrument(span)
        .await;
        if stop {
            // The shim's own spans go before it does: the sandbox's root span ends here, and
            // with it the trace.
            self.finish_tracing().await;
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
