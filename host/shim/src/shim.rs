//! The shim process: containerd's `start` (spawn the serving shim, one per pod), `delete`
//! (clean up after a shim that died) and the serving shim's life.
//!
//! Owns which pod a container belongs to (the CRI sandbox annotation, else its own id), the
//! `address` file containerd finds the shim by, and the clean-up containerd asks for. Must never
//! leave a mount, socket or VM directory behind on `delete`; the VM's processes need no clean-up there, they die with the shim that held them.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};
use tokio::sync::mpsc;

use crate::task::{Event, TaskService};

/// The annotation with which the CRI plugin names a container's pod sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Events waiting to be published before new ones are dropped.
const EVENT_QUEUE: usize = 128;

/// The shim.
pub struct HuskShim {
    /// The id containerd started this shim for (the pod's first container).
    id: String,
    namespace: String,
    bundle: String,
    /// The serving shim's socket (`unix://PATH`), removed when it ends.
    socket: String,
    exit: Arc<ExitSignal>,
}

/// The file under a `unix://` address.
fn socket_path(address: &str) -> Option<&Path> {
    address
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .map(Path::new)
}

/// The pod a container belongs to: its CRI sandbox, or itself.
pub fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v["annotations"][SANDBOX_ID_ANNOTATION]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

#[async_trait]
impl Shim for HuskShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // husk waits for its own children (the VM's processes); the shim crate must not reap
        // them from under it.
        config.no_reaper = true;
        config.no_sub_reaper = true;
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&bundle, &opts.id);
        let address = spawn(opts, &group, Vec::new()).await?;
        // containerd 1.6 finds a running shim again (after it restarts) through this file.
        containerd_shim::asynchronous::util::write_str_to_file(bundle.join("address"), &address)
            .await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The serving shim is gone (killed, crashed): its VM died with it. What is left is the
        // rootfs mount in the bundle.
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            self.bundle.clone().into()
        };
        // The pod's shared directory lives in its first container's bundle.
        let shared = bundle.join("shared");
        if let Ok(entries) = std::fs::read_dir(&shared) {
            for e in entries.flatten() {
                crate::rootfs::unmount_container(&e.path());
            }
        }
        crate::rootfs::unmount(&shared);
        crate::rootfs::remove_unmounted(&shared);
        // Its tc rules on the pod's veth (the tap went with the VM).
        if let Some(record) = crate::network::load(&bundle) {
            crate::network::forget(&bundle, &record).await;
        }
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            if let Some(path) = socket_path(address.trim()) {
                let _ = std::fs::remove_file(path);
            }
        }
        // Its VM's processes died with it; their socket directories are swept here (a
        // directory is removed only once the husk process that made it is gone).
        match husk_config::Config::load(None) {
            Ok(c) => husk_hypervisor::run_dir::sweep_stale(&c.runtime.run_root),
            Err(e) => tracing::warn!(error = %e, "husk's configuration; VM directories not swept"),
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if let Some(path) = socket_path(&self.socket) {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let (tx, rx) = mpsc::channel::<Event>(EVENT_QUEUE);
        tokio::spawn(forward(publisher, self.namespace.clone(), rx));
        // A bad configuration is served anyway, so that containerd gets it on Create.
        let config = husk_config::Config::load(None).map_err(|e| {
            tracing::error!(error = %e, "husk's configuration");
            e.to_string()
        });
        TaskService::new(
            &self.id,
            self.namespace.clone(),
            config,
            self.exit.clone(),
            tx,
        )
    }
}

/// Publishes events to containerd in order, each with a deadline.
async fn forward(publisher: RemotePublisher, namespace: String, mut rx: mpsc::Receiver<Event>) {
    while let Some((topic, event)) = rx.recv().await {
        let ctx = containerd_shim::protos::ttrpc::context::with_timeout(5_000_000_000);
        if let Err(e) = publisher.publish(ctx, topic, &namespace, event).await {
            tracing::warn!(topic, error = %e, "publishing an event to containerd");
        }
    }
}
