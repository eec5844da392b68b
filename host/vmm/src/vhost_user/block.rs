//! The block model as a vhost-user back end: `husk-vhost-user block` serves one raw image to
//! one QEMU (`-device vhost-user-blk-pci,chardev=...`) until it disconnects.
//!
//! Owns the adaptation only: `vhost-user-backend`'s `VhostUserDaemon` runs the protocol and the
//! vring thread; on each kick [`BlockBackend`] hands the vring's `virtio_queue::Queue` and the
//! mapped guest memory to the very [`BlockCore`] the mmio model uses. Config space (capacity) is
//! served through the CONFIG protocol feature. Must never parse or execute a request itself.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tracing::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::devices::virtio::block::{BlockCore, BlockError};
use crate::devices::virtio::read_config_bytes;
use crate::seccomp::Enforcement;

/// The one request queue.
const NUM_QUEUES: usize = 1;
/// The daemon's (and its thread's) name.
const DAEMON_NAME: &str = "husk-vhost-user-blk";

/// Largest vring accepted: QEMU 7.2's vhost-user-blk on virtio-mmio sets up 1024-entry rings
/// (the mmio device of the builtin VMM offers [`crate::devices::virtio::block::QUEUE_SIZE`]).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// What `husk-vhost-user block` serves.
#[derive(Debug, Clone)]
pub struct BlockBackendConfig {
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// The raw disk image.
    pub path: PathBuf,
    pub read_only: bool,
    /// The serial id the guest reads (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
    pub serial: Option<String>,
    /// How the whole process is confined once the front end has connected
    /// ([`crate::seccomp`]).
    pub seccomp: Enforcement,
}

/// Why the back end stopped.
#[derive(Debug, thiserror::Error)]
pub enum BlockBackendError {
    #[error("vhost-user block: {0}")]
    Serve(#[from] super::ServeError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error("vhost-user block: cannot listen on {socket}: {detail}")]
    Listen { socket: PathBuf, detail: String },
    #[error("vhost-user block: {detail}")]
    Daemon { detail: String },
}

/// [`BlockCore`] behind the vhost-user framework.
#[derive(Debug)]
pub struct BlockBackend {
    core: BlockCore,
    config: [u8; 8],
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl BlockBackend {
    pub fn new(core: BlockCore) -> Self {
        Self {
            config: core.config_space(),
            core,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        }
    }
}

impl VhostUserBackendMut for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.core.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&mut self, enabled: bool) {
        // Not offered; the framework tells each vring itself if it ever is.
        debug!(enabled, "vhost-user block: event idx");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size.min(u32::from(u16::MAX)) as usize];
        read_config_bytes(&self.config, u64::from(offset), &mut out);
        out
    }

    /// Lets the framework stop (and join) the vring thread when the daemon goes away.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                warn!("vhost-user block: cannot create the exit event: {e}");
                None
            }
        }
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!(
                device_event,
                "vhost-user block: unexpected event set {evset:?}"
            );
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            warn!(device_event, "vhost-user block: event for an unknown queue");
            return Ok(());
        };
        let mem = self.mem.memory();
        let notify = {
            let mut state = vring.get_mut();
            self.core
                .process_queue(state.get_queue_mut(), device_event, &mem)
                .map_err(io::Error::other)?
        };
        if notify {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// Serves one VM until QEMU disconnects.
pub fn serve(config: &BlockBackendConfig) -> Result<(), BlockBackendError> {
    let listener = Listener::new(&config.socket, true).map_err(|e| BlockBackendError::Listen {
        socket: config.socket.clone(),
        detail: e.to_string(),
    })?;
    serve_listener(config, listener)
}

/// [`serve`] on a socket already listening (tests bind first, then connect).
pub fn serve_listener(
    config: &BlockBackendConfig,
    mut listener: Listener,
) -> Result<(), BlockBackendError> {
    let core = BlockCore::open(&config.path, config.read_only, config.serial.as_deref())?;
    info!(
        image = %config.path.display(),
        sectors = core.capacity(),
        read_only = config.read_only,
        "vhost-user block: serving"
    );
    let backend = Arc::new(RwLock::new(BlockBackend::new(core)));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let daemon_error = |e: vhost_user_backend::Error| BlockBackendError::Daemon {
        detail: e.to_string(),
    };
    let mut daemon =
        VhostUserDaemon::new(DAEMON_NAME.into(), backend, mem).map_err(daemon_error)?;
    // Dropping the daemon afterwards stops and joins the vring threads.
    Ok(super::serve_one(
        &mut daemon,
        &mut listener,
        config.seccomp,
    )?)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::thread;

    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;

    use super::*;
    use crate::devices::virtio::block::SECTOR_SIZE;

    #[test]
    fn a_frontend_negotiates_reads_the_capacity_and_disconnects() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&image).unwrap();
        f.write_all(&vec![0u8; 8 * SECTOR_SIZE as usize]).unwrap();
        let socket = dir.path().join("blk.sock");
        let config = BlockBackendConfig {
            socket: socket.clone(),
            path: image,
            read_only: true,
            serial: None,
            seccomp: Enforcement::Off,
        };
        let listener = Listener::new(&socket, true).unwrap();
        let server = thread::spawn(move || serve_listener(&config, listener));

        let mut frontend = Frontend::connect(&socket, NUM_QUEUES as u64).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        assert_ne!(
            features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert_ne!(
            features & (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO),
            0
        );
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        frontend.set_protocol_features(protocol).unwrap();
        assert_eq!(frontend.get_queue_num().unwrap(), NUM_QUEUES as u64);
        let (_, config) = frontend
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
            .unwrap();
        assert_eq!(config, 8u64.to_le_bytes());
        drop(frontend);
        server.join().unwrap().unwrap();
    }

    /// A whole request through vhost-user: memory table, vring setup, kick, call.
    #[test]
    fn serves_a_read_over_vhost_user() {
        use std::time::Duration;

        use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
        use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
        use virtio_queue::QueueT;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
        use vmm_sys_util::eventfd::EventFd;

        use crate::devices::virtio::block::request::RequestHeader;
        use crate::devices::virtio::block::testing::{
            memfd_mem, wait_readable, TestQueue, DATA, MEM_SIZE, QSIZE,
        };

        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let content: Vec<u8> = (0..4 * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8 + 1)
            .collect();
        std::fs::write(&image, &content).unwrap();
        let socket = dir.path().join("blk.sock");
        let config = BlockBackendConfig {
            socket: socket.clone(),
            path: image,
            read_only: false,
            serial: None,
            seccomp: Enforcement::Off,
        };
        let listener = Listener::new(&socket, true).unwrap();
        let server = thread::spawn(move || serve_listener(&config, listener));

        let mem = memfd_mem(MEM_SIZE as usize);
        let mut tq = TestQueue::new(&mem);
        let q = tq.queue();
        let (hdr, buf, status) = (DATA, DATA + 0x1000, DATA + 0x100);
        let header = RequestHeader {
            request_type: VIRTIO_BLK_T_IN.to_le(),
            reserved: 0,
            sector: 2u64.to_le(),
        };
        mem.write_obj(header, GuestAddress(hdr)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(status)).unwrap();
        tq.push_chain(&[(hdr, 16, false), (buf, 512, true), (status, 1, true)]);

        let mut frontend = Frontend::connect(&socket, NUM_QUEUES as u64).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        frontend.set_protocol_features(protocol).unwrap();
        let regions: Vec<_> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
            .collect();
        frontend.set_mem_table(&regions).unwrap();
        let hva = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as u64;
        frontend.set_vring_num(0, QSIZE).unwrap();
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: crate::devices::virtio::block::QUEUE_SIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: hva(q.desc_table()),
                    used_ring_addr: hva(q.used_ring()),
                    avail_ring_addr: hva(q.avail_ring()),
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(0, 0).unwrap();
        let (kick, call) = (
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        );
        frontend.set_vring_call(0, &call).unwrap();
        frontend.set_vring_kick(0, &kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
        kick.write(1).unwrap();

        assert!(
            wait_readable(&call, Duration::from_secs(10)),
            "no call from the back end"
        );
        assert_eq!(tq.used(0), (0, 513));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(buf)).unwrap();
        assert!(data.iter().all(|&b| b == 3));
        drop(frontend);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_missing_image_is_an_error_before_listening() {
        let dir = tempfile::tempdir().unwrap();
        let config = BlockBackendConfig {
            socket: dir.path().join("blk.sock"),
            path: dir.path().join("nope.img"),
            read_only: false,
            serial: None,
            seccomp: Enforcement::Off,
        };
        let listener = Listener::new(&config.socket, true).unwrap();
        assert!(matches!(
            serve_listener(&config, listener),
            Err(BlockBackendError::Disk(BlockError::Open { .. }))
        ));
    }
}
