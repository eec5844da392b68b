//! The virtio-fs model ([`Fs`]): a vhost-user front end to `virtiofsd`.
//!
//! Owns the config space, the vhost-user connection while the device is active, and the
//! thread forwarding virtiofsd's call eventfds to the guest interrupt. Must never read or write
//! the queues itself (virtiofsd owns them once enabled) and never send virtiofsd a memory
//! region it cannot map.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, info, warn};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{MAX_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::transport::worker::{EventHandler, Worker};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice,
    TYPE_FS, VIRTIO_F_VERSION_1,
};

/// The model's name in logs and errors.
const NAME: &str = "fs";
/// Protocol features husk uses when virtiofsd offers them: MQ (check its queue count) and
/// REPLY_ACK (every setup message is acknowledged, so a refusal surfaces at activation).
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// Why the device could not be built or activated.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("fs: tag {tag:?} must be 1 to {TAG_LEN} bytes")]
    BadTag { tag: String },
    #[error("fs: {count} request queues, 1 to {MAX_REQUEST_QUEUES} are supported")]
    BadQueueCount { count: u32 },
    #[error(
        "fs: guest memory region {addr:#x}+{len:#x} is not backed by a file descriptor; \
         virtiofsd needs shared (memfd) guest memory"
    )]
    RegionWithoutFd { addr: u64, len: u64 },
    #[error("fs: cannot connect to virtiofsd at {socket}: {detail}")]
    Connect { socket: PathBuf, detail: String },
    #[error("fs: vhost-user {step} failed: {detail}")]
    Protocol { step: &'static str, detail: String },
    #[error("fs: virtiofsd does not offer VIRTIO_F_VERSION_1 (features {features:#x})")]
    NoVersion1 { features: u64 },
    #[error("fs: virtiofsd serves {max} queues, the device has {needed}")]
    TooFewBackendQueues { max: u64, needed: usize },
    #[error("fs queue {queue}: guest address {addr:#x} is not in guest memory")]
    QueueAddress { queue: usize, addr: u64 },
    #[error("fs: cannot create the call eventfd of queue {queue}")]
    CallEventFd {
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error("fs: cannot start the interrupt forwarder")]
    Forwarder(#[source] io::Error),
}

impl From<FsError> for ActivateError {
    fn from(e: FsError) -> Self {
        ActivateError::Backend {
            device: NAME,
            detail: e.to_string(),
        }
    }
}

/// Forwards virtiofsd's "used buffers" call on queue `i` to the guest.
#[derive(Debug)]
struct CallForwarder {
    interrupt: Arc<dyn Interrupt>,
}

impl EventHandler for CallForwarder {
    fn handle(&mut self, index: usize) {
        let queue = u16::try_from(index).unwrap_or(u16::MAX);
        if let Err(e) = self.interrupt.signal_used_queue(queue) {
            warn!(device = NAME, queue, "cannot raise the interrupt: {e}");
        }
    }
}

/// The virtio-fs model. The vhost-user connection lives from the first activation until the
/// model is dropped (dropping it closes the socket, and virtiofsd exits); a driver reset only
/// stops the rings.
pub struct Fs {
    socket: PathBuf,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    acked: u64,
    frontend: Option<Frontend>,
    /// Forwards the call eventfds while active.
    forwarder: Option<Worker>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("socket", &self.socket)
            .field("queues", &self.queue_sizes.len())
            .field("acked", &self.acked)
            .field("connected", &self.frontend.is_some())
            .field("forwarder", &self.forwarder)
            .finish()
    }
}

impl Fs {
    /// A virtio-fs device whose guest mount tag is `tag`, served by the virtiofsd listening
    /// on `socket` (connected to on activation), with one hiprio queue and
    /// `num_request_queues` request queues.
    pub fn new(
        socket: impl Into<PathBuf>,
        tag: &str,
        num_request_queues: u32,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::BadTag { tag: tag.into() });
        }
        if num_request_queues == 0 || num_request_queues > MAX_REQUEST_QUEUES {
            return Err(FsError::BadQueueCount {
                count: num_request_queues,
            });
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
        Ok(Self {
            socket: socket.into(),
            config,
            queue_sizes: vec![QUEUE_SIZE; 1 + num_request_queues as usize],
            acked: 0,
            frontend: None,
            forwarder: None,
        })
    }

    fn connect(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        queue_events: &[EventFd],
    ) -> Result<(Frontend, Vec<EventFd>), FsError> {
        // Everything that can be checked locally first: no half-configured virtiofsd.
        let regions = memory_regions(mem)?;
        let rings = queues
            .iter()
            .enumerate()
            .map(|(i, q)| vring_config(i, q, mem))
            .collect::<Result<Vec<_>, _>>()?;

        let proto = |step: &'static str| {
            move |e: vhost::Error| FsError::Protocol {
                step,
                detail: e.to_string(),
            }
        };
        // The connection survives a driver reset (its rings were stopped then); a fresh one
        // is claimed first. On any error below it is dropped, and virtiofsd with it.
        let mut frontend = match self.frontend.take() {
            Some(frontend) => frontend,
            None => {
                let frontend =
                    Frontend::connect(&self.socket, queues.len() as u64).map_err(|e| {
                        FsError::Connect {
                            socket: self.socket.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                frontend.set_owner().map_err(proto("SET_OWNER"))?;
                frontend
            }
        };
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NoVersion1 {
                features: backend_features,
            });
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let has_protocol = backend_features & protocol_bit != 0;
        let features = (self.acked & backend_features) | (backend_features & protocol_bit);
        frontend
            .set_features(features)
            .map_err(proto("SET_FEATURES"))?;
        if has_protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            let acked = offered & WANTED_PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(acked)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
                if max < queues.len() as u64 {
                    return Err(FsError::TooFewBackendQueues {
                        max,
                        needed: queues.len(),
                    });
                }
            }
        }
        frontend
            .set_mem_table(&regions)
            .map_err(proto("SET_MEM_TABLE"))?;

        let mut calls = Vec::with_capacity(queues.len());
        for (i, ((q, ring), kick)) in queues.iter().zip(&rings).zip(queue_events).enumerate() {
            frontend
                .set_vring_num(i, q.size())
                .map_err(proto("SET_VRING_NUM"))?;
            frontend
                .set_vring_addr(i, ring)
                .map_err(proto("SET_VRING_ADDR"))?;
            frontend
                .set_vring_base(i, q.next_avail())
                .map_err(proto("SET_VRING_BASE"))?;
            frontend
                .set_vring_kick(i, kick)
                .map_err(proto("SET_VRING_KICK"))?;
            let call = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|source| FsError::CallEventFd { queue: i, source })?;
            frontend
                .set_vring_call(i, &call)
                .map_err(proto("SET_VRING_CALL"))?;
            calls.push(call);
        }
        if has_protocol {
            for i in 0..queues.len() {
                frontend
                    .set_vring_enable(i, true)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
        }
        Ok((frontend, calls))
    }
}

/// The memory table for virtiofsd: every region with its fd and offset.
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    mem.iter()
        .map(|region| {
            let missing = FsError::RegionWithoutFd {
                addr: region.start_addr().0,
                len: region.len(),
            };
            if region.file_offset().is_none() {
                return Err(missing);
            }
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| missing)
        })
        .collect()
}

/// A queue's rings as virtiofsd wants them: in this process's address space (vhost-user
/// translates them through the memory table).
fn vring_config(
    index: usize,
    q: &Queue,
    mem: &GuestMemoryMmap,
) -> Result<VringConfigData, FsError> {
    let host = |addr: u64| {
        mem.get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|_| FsError::QueueAddress { queue: index, addr })
    };
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: host(q.desc_table())?,
        used_ring_addr: host(q.used_ring())?,
        avail_ring_addr: host(q.avail_ring())?,
        log_addr: None,
    })
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked = acked & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let expected = self.queue_sizes.len();
        if ctx.queues.len() != expected || ctx.queue_events.len() != expected {
            return Err(ActivateError::QueueCount {
                device: NAME,
                expected,
                got: ctx.queues.len(),
            });
        }
        let (frontend, calls) = self.connect(&ctx.mem, &ctx.queues, &ctx.queue_events)?;
        let forwarder = Worker::spawn(
            "fs-irq",
            calls,
            CallForwarder {
                interrupt: ctx.interrupt,
            },
            ctx.seccomp,
        )
        .map_err(FsError::Forwarder)?;
        info!(device = NAME, socket = %self.socket.display(), "virtiofsd serves the queues");
        self.frontend = Some(frontend);
        self.forwarder = Some(forwarder);
        Ok(())
    }

    fn reset(&mut self) {
        let Some(mut forwarder) = self.forwarder.take() else {
            return;
        };
        forwarder.stop();
        // GET_VRING_BASE stops each ring in virtiofsd; a connection that fails it is dropped.
        if let Some(frontend) = &self.frontend {
            for i in 0..self.queue_sizes.len() {
                if let Err(e) = frontend.get_vring_base(i) {
                    warn!(
                        device = NAME,
                        queue = i,
                        "cannot stop the ring, disconnecting: {e}"
                    );
                    self.frontend = None;
                    break;
                }
            }
        }
        debug!(device = NAME, "rings stopped");
        self.acked = 0;
    }

    fn is_activated(&self) -> bool {
        self.forwarder.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::devices::virtio::block::testing::memfd_mem;
    use virtio_queue::mock::MockSplitQueue;

    #[derive(Debug)]
    struct NoInterrupt;

    impl Interrupt for NoInterrupt {
        fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
            Ok(())
        }
        fn signal_config_change(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn config_space_is_tag_then_queue_count() {
        let fs = Fs::new("/nonexistent.sock", "rootfs", 2).unwrap();
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE; 3]);
        let mut tag = [0xffu8; TAG_LEN];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"rootfs");
        assert!(tag[6..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        fs.read_config(TAG_LEN as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), 2);
        fs.read_config(TAG_LEN as u64 + 4, &mut n);
        assert_eq!(n, [0; 4]);
    }

    #[test]
    fn bad_tags_and_queue_counts_are_refused() {
        assert!(matches!(Fs::new("s", "", 1), Err(FsError::BadTag { .. })));
        let long = "x".repeat(TAG_LEN + 1);
        assert!(matches!(
            Fs::new("s", &long, 1),
            Err(FsError::BadTag { .. })
        ));
        assert!(Fs::new("s", &"x".repeat(TAG_LEN), 1).is_ok());
        assert!(matches!(
            Fs::new("s", "t", 0),
            Err(FsError::BadQueueCount { .. })
        ));
        assert!(matches!(
            Fs::new("s", "t", MAX_REQUEST_QUEUES + 1),
            Err(FsError::BadQueueCount { .. })
        ));
    }

    fn queues(mem: &GuestMemoryMmap, n: usize) -> (Vec<Queue>, Vec<EventFd>) {
        (0..n)
            .map(|i| {
                let vq = MockSplitQueue::create(mem, GuestAddress(0x10_0000 * i as u64), 16);
                (
                    vq.create_queue::<Queue>().unwrap(),
                    EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                )
            })
            .unzip()
    }

    fn ctx(mem: GuestMemoryMmap, n: usize) -> ActivateContext {
        let (queues, queue_events) = queues(&mem, n);
        ActivateContext {
            mem,
            queues,
            queue_events,
            interrupt: Arc::new(NoInterrupt),
            seccomp: crate::seccomp::Enforcement::Kill,
        }
    }

    #[test]
    fn anonymous_guest_memory_is_refused_before_connecting() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut fs = Fs::new("/nonexistent/virtiofsd.sock", "rootfs", 1).unwrap();
        let err = fs.activate(ctx(mem, 2)).unwrap_err().to_string();
        assert!(err.contains("not backed by a file descriptor"), "{err}");
        assert!(err.contains("0x0+0x400000"), "{err}");
        assert!(!fs.is_activated());
    }

    #[test]
    fn a_missing_virtiofsd_is_a_connect_error() {
        let mem = memfd_mem(0x40_0000);
        let mut fs = Fs::new("/nonexistent/virtiofsd.sock", "rootfs", 1).unwrap();
        let err = fs.activate(ctx(mem, 2)).unwrap_err().to_string();
        assert!(err.contains("cannot connect"), "{err}");
    }

    /// The handshake with a real virtiofsd (skipped when it is not installed).
    #[test]
    fn handshake_with_virtiofsd_completes() {
        let Some(virtiofsd) = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd"))
            .filter(|p| p.exists())
        else {
            eprintln!("virtiofsd not installed, skipping");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fs.sock");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        // Listen first and hand virtiofsd the listening socket: no race on its creation.
        let listener = UnixListener::bind(&socket).unwrap();
        let fd = listener.as_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns, so the child inherits it.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        let mut child = Command::new(virtiofsd)
            .arg("--fd")
            .arg(fd.to_string())
            .arg("--shared-dir")
            .arg(&shared)
            .args([
                "--sandbox",
                "none",
                "--seccomp",
                "none",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        drop(listener);

        let mem = memfd_mem(0x40_0000);
        let mut fs = Fs::new(&socket, "rootfs", 1).unwrap();
        fs.set_acked_features(1 << VIRTIO_F_VERSION_1);
        let first = fs.activate(ctx(mem.clone(), 2));
        fs.reset();
        // A driver reset keeps the connection: the device comes up again.
        fs.set_acked_features(1 << VIRTIO_F_VERSION_1);
        let again = fs.activate(ctx(mem, 2));
        assert!(fs.is_activated() == again.is_ok());
        fs.reset();
        drop(fs);
        // virtiofsd exits once its front end hangs up.
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let exited = rx.recv_timeout(Duration::from_secs(10)).is_ok();
        if !exited {
            // SAFETY: signalling the child this test started, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        first.unwrap();
        again.unwrap();
        assert!(exited, "virtiofsd did not exit after the disconnect");
    }
}
