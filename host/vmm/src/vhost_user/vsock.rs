//! The vsock model ([`crate::devices::virtio::vsock::VsockModel`]) as a vhost-user back end,
//! for QEMU's `-device vhost-user-vsock-device,chardev=...`.
//!
//! The framework (`vhost-user-backend`) owns the vhost-user protocol, guest memory mapping,
//! vrings and their kick/call eventfds; its epoll thread calls [`VhostUserBackendMut::handle_event`]
//! on a kick and when the muxer's epoll set ([`MUXER_EVENT`]) is readable, and this adapter
//! runs the same queue-processing core as the virtio-mmio worker. Offers VERSION_1 and
//! vhost-user protocol features CONFIG (QEMU reads `guest_cid` through it) and MQ.
//!
//! Must never reimplement vsock behaviour here, and never return an error from
//! `handle_event` for something the guest did (that would stop the framework's thread).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::devices::virtio::vsock::unix::MuxerError;
use crate::devices::virtio::vsock::{VsockModel, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::{read_config_bytes, GuestMemoryMmap, VIRTIO_F_VERSION_1};
use crate::seccomp::Enforcement;

/// The framework's token for the muxer's epoll set: past the queues and the framework's own
/// exit token (`NUM_QUEUES`).
pub const MUXER_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Largest vring QEMU may set up: its vhost-user-vsock device uses 1024-entry queues
/// (`SET_VRING_NUM` 1024), more than the 256 the virtio-mmio device offers.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// What `husk-vhost-user vsock` serves.
#[derive(Debug, Clone)]
pub struct VsockBackendConfig {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=`).
    pub socket: PathBuf,
    /// The hybrid vsock Unix socket (`CONNECT <port>\n`; guest connections to `<uds>_<port>`).
    pub uds_path: PathBuf,
    /// The guest's context id.
    pub guest_cid: u64,
    /// How the whole process is confined once QEMU has connected ([`crate::seccomp`]).
    pub seccomp: Enforcement,
}

/// Why the back end stopped.
#[derive(Debug, thiserror::Error)]
pub enum VsockBackendError {
    #[error("vhost-user vsock on {}", socket.display())]
    Serve {
        socket: PathBuf,
        #[source]
        source: super::ServeError,
    },
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("vhost-user vsock: creating the exit eventfd: {0}")]
    ExitEvent(#[source] io::Error),
    #[error("vhost-user vsock on {}: {what}: {detail}", socket.display())]
    Daemon {
        socket: PathBuf,
        what: &'static str,
        detail: String,
    },
}

/// The adapter between the framework and the model.
struct VsockBackend {
    model: VsockModel,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    acked_features: u64,
    /// A queue error was logged already.
    queue_broken: bool,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl std::fmt::Debug for VsockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockBackend")
            .field("model", &self.model)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl VsockBackend {
    /// Runs the shared core over the rx and tx vrings, signalling the driver as needed.
    fn process_queues(&mut self, vrings: &[VringRwLock]) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            // Host sockets may be busy before QEMU sent the memory table; rx waits.
            return;
        };
        let (Some(rx), Some(tx)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            return;
        };
        loop {
            let notify_tx = {
                let mut state = tx.get_mut();
                if state.is_enabled() && state.get_queue().ready() {
                    self.model.process_tx(state.get_queue_mut(), &mem)
                } else {
                    Ok(false)
                }
            };
            let tx_stalled = !self.model.muxer().can_accept_tx();
            let notify_rx = {
                let mut state = rx.get_mut();
                if state.is_enabled() && state.get_queue().ready() {
                    self.model.process_rx(state.get_queue_mut(), &mem)
                } else {
                    Ok(false)
                }
            };
            for (vring, notify, name) in [(tx, notify_tx, "tx"), (rx, notify_rx, "rx")] {
                match notify {
                    Ok(true) => {
                        if let Err(e) = vring.signal_used_queue() {
                            tracing::warn!("vhost-user vsock: signalling the {name} queue: {e}");
                        }
                    }
                    Ok(false) => {}
                    Err(e) if !self.queue_broken => {
                        // The driver broke its queue; said once, not on every event.
                        self.queue_broken = true;
                        tracing::error!("vhost-user vsock: {e}");
                    }
                    Err(e) => tracing::debug!("vhost-user vsock: {e}"),
                }
            }
            if !(tx_stalled && self.model.muxer().can_accept_tx()) {
                return;
            }
        }
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // EVENT_IDX is not offered; virtio_queue::Queue handles notification either way.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.model.config();
        let Ok(size) = usize::try_from(size) else {
            return Vec::new();
        };
        if size > config.len() {
            return Vec::new();
        }
        let mut out = vec![0u8; size];
        read_config_bytes(&config, u64::from(offset), &mut out);
        out
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn reset_device(&mut self) {
        self.model.reset();
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match (
            self.exit_consumer.try_clone(),
            self.exit_notifier.try_clone(),
        ) {
            (Ok(c), Ok(n)) => Some((c, n)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("vhost-user vsock: cloning the exit eventfd: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if device_event == MUXER_EVENT {
            self.model.process_muxer_events();
        }
        // A kick on rx, tx or the (unused) event queue, or host sockets: look at both queues.
        self.process_queues(vrings);
        Ok(())
    }
}

/// Serves one VM until QEMU disconnects.
pub fn serve(config: &VsockBackendConfig) -> Result<(), VsockBackendError> {
    let listener = Listener::new(&config.socket, true).map_err(|e| VsockBackendError::Daemon {
        socket: config.socket.clone(),
        what: "listening",
        detail: e.to_string(),
    })?;
    serve_listener(config, listener)
}

/// [`serve`] on a socket already listening (tests bind first, then connect).
pub fn serve_listener(
    config: &VsockBackendConfig,
    mut listener: Listener,
) -> Result<(), VsockBackendError> {
    let daemon_err = |what: &'static str| {
        let socket = config.socket.clone();
        move |e: vhost_user_backend::Error| VsockBackendError::Daemon {
            socket,
            what,
            detail: e.to_string(),
        }
    };
    let model = VsockModel::new(&config.uds_path, config.guest_cid)?;
    let muxer_fd = model.as_raw_fd();
    let (exit_consumer, exit_notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)
        .map_err(VsockBackendError::ExitEvent)?;
    let backend = Arc::new(RwLock::new(VsockBackend {
        model,
        mem: None,
        acked_features: 0,
        queue_broken: false,
        exit_consumer,
        exit_notifier,
    }));
    let mut daemon = VhostUserDaemon::new(
        "husk-vhost-user-vsock".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(daemon_err("starting"))?;
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(muxer_fd, EventSet::IN, u64::from(MUXER_EVENT))
            .map_err(|e| VsockBackendError::Daemon {
                socket: config.socket.clone(),
                what: "watching the muxer",
                detail: e.to_string(),
            })?;
    }
    tracing::info!(
        socket = %config.socket.display(),
        uds = %config.uds_path.display(),
        guest_cid = config.guest_cid,
        "vhost-user vsock: serving"
    );
    let result = super::serve_one(&mut daemon, &mut listener, config.seccomp).map_err(|e| {
        VsockBackendError::Serve {
            socket: config.socket.clone(),
            source: e,
        }
    });
    // Lets the framework's vring thread leave (as `VhostUserDaemon::serve` does).
    if let Err(e) = backend
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .exit_notifier
        .notify()
    {
        tracing::warn!("vhost-user vsock: cannot stop the vring thread: {e}");
    }
    // The muxer (and its listener socket file) goes with the backend.
    drop(daemon);
    drop(backend);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(dir: &std::path::Path) -> VsockBackend {
        let (exit_consumer, exit_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        VsockBackend {
            model: VsockModel::new(&dir.join("v.sock"), 3).unwrap(),
            mem: None,
            acked_features: 0,
            queue_broken: false,
            exit_consumer,
            exit_notifier,
        }
    }

    #[test]
    fn offers_what_qemu_needs() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        assert_eq!(
            b.features() & (1 << VIRTIO_F_VERSION_1),
            1 << VIRTIO_F_VERSION_1
        );
        assert_ne!(
            b.features() & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert!(b
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG));
        assert_eq!(b.get_config(0, 8), 3u64.to_le_bytes());
        assert_eq!(b.get_config(4, 4), [0, 0, 0, 0]);
        assert!(b.get_config(0, 4096).is_empty());
        assert!(b.exit_event(0).is_some());
        assert!(MUXER_EVENT as usize > NUM_QUEUES);
        assert!(
            b.max_queue_size() >= 1024,
            "QEMU's vhost-user-vsock queues are 1024 long"
        );
    }

    /// A vhost-user front end (as QEMU drives it) negotiates, reads `guest_cid` through
    /// GET_CONFIG, sets up 1024-entry vrings, and `serve` returns Ok once it disconnects.
    #[test]
    fn serves_a_front_end_until_it_disconnects() {
        use vhost::vhost_user::message::VhostUserConfigFlags;
        use vhost::vhost_user::{Frontend, VhostUserFrontend};
        use vhost::VhostBackend;

        let dir = tempfile::tempdir().unwrap();
        let config = VsockBackendConfig {
            socket: dir.path().join("vhost.sock"),
            uds_path: dir.path().join("v.sock"),
            guest_cid: 7,
            seccomp: Enforcement::Off,
        };
        // Listening before the daemon runs: the connect below cannot race it.
        let listener = Listener::new(&config.socket, true).unwrap();
        let server = {
            let config = config.clone();
            std::thread::spawn(move || serve_listener(&config, listener))
        };
        let mut frontend = Frontend::connect(&config.socket, NUM_QUEUES as u64).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        frontend.set_protocol_features(protocol).unwrap();
        assert_eq!(frontend.get_queue_num().unwrap(), NUM_QUEUES as u64);
        let (_, cfg) = frontend
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
            .unwrap();
        assert_eq!(cfg, 7u64.to_le_bytes());
        frontend.set_vring_num(0, 1024).unwrap();
        frontend.set_vring_num(1, 1024).unwrap();
        // The hybrid socket is up while the VM runs.
        assert!(config.uds_path.exists());
        drop(frontend);
        server.join().unwrap().unwrap();
        assert!(!config.uds_path.exists());
    }

    #[test]
    fn serve_fails_cleanly_on_a_bad_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = serve(&VsockBackendConfig {
            socket: dir.path().join("no/such/dir/vhost.sock"),
            uds_path: dir.path().join("v.sock"),
            guest_cid: 3,
            seccomp: Enforcement::Off,
        })
        .unwrap_err();
        assert!(matches!(e, VsockBackendError::Daemon { .. }), "{e}");
        assert!(
            !dir.path().join("v.sock").exists(),
            "the muxer socket is removed"
        );
    }
}
