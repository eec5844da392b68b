//! The virtio-blk disk ([`BlockCore`]) and model ([`Block`]).
//!
//! [`BlockCore`] owns the image file and executes requests: given a `&mut virtio_queue::Queue`
//! and guest memory it drains the available chains and says whether the driver must be
//! notified. Both transports drive it: [`Block`] from its mmio worker thread, and the vhost-user
//! back end (`crate::vhost_user::block`) from the framework's vring thread.
//!
//! Must never read or write outside the image's whole sectors or outside guest memory, and
//! never panic on a guest request (see [`super::request`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::request::{self, Request, RequestType};
use super::{QUEUE_SIZE, SECTOR_SIZE, SERIAL_LEN};
use crate::devices::virtio::chains::{self, RingError};
use crate::devices::virtio::transport::worker::{self, Worker};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, GuestMemoryMmap, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// The model's name in logs and errors.
const NAME: &str = "block";
/// Bytes moved between the image and guest memory per copy.
const CHUNK: usize = 64 * 1024;

/// Why the disk could not be opened or a queue could not be served.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block: cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("block: cannot size disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("block: serial {serial:?} is longer than {SERIAL_LEN} bytes")]
    SerialTooLong { serial: String },
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// The disk behind a virtio-blk device and the request engine both transports share.
#[derive(Debug)]
pub struct BlockCore {
    path: PathBuf,
    file: File,
    read_only: bool,
    /// In 512-byte sectors (a partial last sector is not exposed).
    capacity: u64,
    serial: [u8; SERIAL_LEN],
}

impl BlockCore {
    /// Opens the raw image at `path` (read-write unless `read_only`); `serial` is what GET_ID
    /// returns (at most 20 bytes).
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let mut id = [0u8; SERIAL_LEN];
        if let Some(s) = serial {
            let bytes = s.as_bytes();
            if bytes.len() > SERIAL_LEN {
                return Err(BlockError::SerialTooLong { serial: s.into() });
            }
            id[..bytes.len()].copy_from_slice(bytes);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.into(),
                source,
            })?;
        // Seeking works for block devices too, whose metadata length is 0.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.into(),
                source,
            })?;
        if len % SECTOR_SIZE != 0 {
            warn!(
                path = %path.display(),
                len, "disk image is not a whole number of sectors; the tail is not exposed"
            );
        }
        Ok(Self {
            path: path.into(),
            file,
            read_only,
            capacity: len / SECTOR_SIZE,
            serial: id,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The feature bits the device offers (virtio 1, FLUSH, and RO for a read-only disk).
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The config space (`struct virtio_blk_config` up to `capacity`: the other fields are
    /// behind features husk does not offer).
    pub fn config_space(&self) -> [u8; 8] {
        self.capacity.to_le_bytes()
    }

    /// Serves every available chain of `queue` (index `queue_index`, for logs); true when the
    /// driver must be notified.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        queue_index: u16,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, BlockError> {
        Ok(chains::serve(
            NAME,
            queue,
            queue_index,
            mem,
            |head, descs| self.handle(queue_index, head, descs, mem),
        )?)
    }

    /// Handles one chain; returns the used length (bytes written to the guest, status
    /// included; 0 for a dropped chain).
    fn handle(
        &mut self,
        queue: u16,
        head: u16,
        descs: &[virtio_queue::desc::split::Descriptor],
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let parsed = request::parse(head, descs, mem, self.capacity);
        let (status, written) = match parsed.result {
            Ok(req) => match self.execute(&req, mem) {
                Ok(written) => (VIRTIO_BLK_S_OK, written),
                Err(e) => {
                    if matches!(e, ExecError::Unsupported(_)) {
                        debug!(device = NAME, queue, head, "{e}");
                    } else {
                        warn!(device = NAME, queue, head, sector = req.sector, "{e}");
                    }
                    (status_for(&e), 0)
                }
            },
            Err(e) => {
                debug!(device = NAME, queue, head, "bad request: {e}");
                if e.is_dropped() {
                    return 0;
                }
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        let Some(status_addr) = parsed.status else {
            return 0;
        };
        if let Err(e) = mem.write_obj(status as u8, status_addr) {
            debug!(
                device = NAME,
                queue,
                head,
                addr = status_addr.0,
                "cannot write status: {e}"
            );
            return 0;
        }
        written.saturating_add(1)
    }

    /// Runs a checked request; the bytes written to guest memory.
    fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Result<u32, ExecError> {
        match req.request_type {
            RequestType::In => {
                let mut offset = req.sector * SECTOR_SIZE;
                for seg in &req.data {
                    self.copy_to_guest(offset, seg.addr, seg.len as usize, mem)?;
                    offset += u64::from(seg.len);
                }
                Ok(u32::try_from(req.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if self.read_only {
                    return Err(ExecError::ReadOnly);
                }
                let mut offset = req.sector * SECTOR_SIZE;
                for seg in &req.data {
                    self.copy_from_guest(offset, seg.addr, seg.len as usize, mem)?;
                    offset += u64::from(seg.len);
                }
                Ok(0)
            }
            RequestType::Flush => {
                self.file.sync_data().map_err(|source| ExecError::Io {
                    path: self.path.clone(),
                    what: "flush",
                    source,
                })?;
                Ok(0)
            }
            RequestType::GetId => {
                let mut rest: &[u8] = &self.serial;
                let mut written = 0u32;
                for seg in &req.data {
                    if rest.is_empty() {
                        break;
                    }
                    let n = rest.len().min(seg.len as usize);
                    mem.write_slice(&rest[..n], seg.addr)
                        .map_err(|_| ExecError::Guest { addr: seg.addr.0 })?;
                    rest = &rest[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            RequestType::Unsupported(t) => Err(ExecError::Unsupported(t)),
        }
    }

    fn copy_to_guest(
        &self,
        mut offset: u64,
        addr: GuestAddress,
        len: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<(), ExecError> {
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.file
                .read_exact_at(&mut buf[..n], offset)
                .map_err(|source| ExecError::Io {
                    path: self.path.clone(),
                    what: "read",
                    source,
                })?;
            let at = addr.unchecked_add(done as u64);
            mem.write_slice(&buf[..n], at)
                .map_err(|_| ExecError::Guest { addr: at.0 })?;
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    fn copy_from_guest(
        &self,
        mut offset: u64,
        addr: GuestAddress,
        len: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<(), ExecError> {
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = addr.unchecked_add(done as u64);
            mem.read_slice(&mut buf[..n], at)
                .map_err(|_| ExecError::Guest { addr: at.0 })?;
            self.file
                .write_all_at(&buf[..n], offset)
                .map_err(|source| ExecError::Io {
                    path: self.path.clone(),
                    what: "write",
                    source,
                })?;
            done += n;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Why a well-formed request failed (the guest gets IOERR or UNSUPP).
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("write refused: the disk is read-only")]
    ReadOnly,
    #[error("{what} of {path} failed")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("guest buffer at {addr:#x} became inaccessible")]
    Guest { addr: u64 },
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

/// The status byte for a failed request: UNSUPP for an unknown type, IOERR otherwise.
fn status_for(e: &ExecError) -> u32 {
    match e {
        ExecError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
        _ => VIRTIO_BLK_S_IOERR,
    }
}

/// The virtio-blk model for the mmio transport.
#[derive(Debug)]
pub struct Block {
    core: Arc<Mutex<BlockCore>>,
    features: u64,
    config: [u8; 8],
    acked: u64,
    worker: Option<Worker>,
}

impl Block {
    /// A block device over `core`.
    pub fn new(core: BlockCore) -> Self {
        Self {
            features: core.features(),
            config: core.config_space(),
            core: Arc::new(Mutex::new(core)),
            acked: 0,
            worker: None,
        }
    }

    /// A block device over the raw image at `path` (see [`BlockCore::open`]).
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        BlockCore::open(path, read_only, serial).map(Self::new)
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked = acked & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let core = self.core.clone();
        let worker = worker::spawn_request_queue(NAME, ctx, move |queue, index, mem| {
            // A poisoned lock means an earlier request panicked; the disk state is still valid.
            let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
            core.process_queue(queue, index, mem)
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
        self.acked = 0;
    }

    fn is_activated(&self) -> bool {
        self.worker.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_bindings::virtio_mmio::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::Bytes;

    use super::super::request::RequestHeader;
    use super::super::testing::{
        bring_up, test_mem, wait_readable, TestQueue, DATA, MEM_SIZE, QSIZE,
    };
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::transport::mmio::MmioTransport;

    const SECTORS: u64 = 16;
    const HDR: u64 = DATA;
    const STATUS: u64 = DATA + 0x100;
    const BUF: u64 = DATA + 0x1000;
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    /// What the status byte holds before the device writes it.
    const UNTOUCHED: u8 = 0xee;

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, BlockCore) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let image: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
            .map(|i| (i / 512) as u8)
            .collect();
        f.write_all(&image).unwrap();
        f.flush().unwrap();
        let core = BlockCore::open(f.path(), read_only, Some("husk-serial-01")).unwrap();
        (f, core)
    }

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let h = RequestHeader {
            request_type: request_type.to_le(),
            reserved: 0,
            sector: sector.to_le(),
        };
        mem.write_obj(h, GuestAddress(HDR)).unwrap();
        mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Runs one queue pass; returns (notify, used elements).
    fn run(
        core: &mut BlockCore,
        tq: &TestQueue,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Vec<(u32, u32)> {
        let before = tq.used_idx();
        core.process_queue(q, 0, mem).unwrap();
        (before..tq.used_idx()).map(|n| tq.used(n)).collect()
    }

    /// A standard three-descriptor request; returns (used length, status).
    fn request(
        core: &mut BlockCore,
        request_type: u32,
        sector: u64,
        data: (u64, u32, bool),
    ) -> (u32, u8) {
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        header(&mem, request_type, sector);
        tq.push_chain(&[(HDR, 16, false), data, (STATUS, 1, true)]);
        let mut q = tq.queue();
        let used = run(core, &tq, &mut q, &mem);
        assert_eq!(used.len(), 1);
        (used[0].1, status(&mem))
    }

    #[test]
    fn read_write_round_trip_against_the_image() {
        let (file, mut core) = disk(false);
        assert_eq!(core.capacity(), SECTORS);
        assert_eq!(core.config_space(), SECTORS.to_le_bytes());
        assert_eq!(core.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        // Write 2 sectors at sector 3 (two data descriptors), then read them back.
        mem.write_slice(&[0xab; 512], GuestAddress(BUF)).unwrap();
        mem.write_slice(&[0xcd; 512], GuestAddress(BUF + 0x1000))
            .unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        tq.push_chain(&[
            (HDR, 16, false),
            (BUF, 512, false),
            (BUF + 0x1000, 512, false),
            (STATUS, 1, true),
        ]);
        let mut q = tq.queue();
        assert!(core.process_queue(&mut q, 0, &mem).unwrap());
        assert_eq!(tq.used(0), (0, 1));
        assert_eq!(status(&mem), OK);
        let image = std::fs::read(file.path()).unwrap();
        assert!(image[3 * 512..4 * 512].iter().all(|&b| b == 0xab));
        assert!(image[4 * 512..5 * 512].iter().all(|&b| b == 0xcd));
        assert!(image[5 * 512..6 * 512].iter().all(|&b| b == 5));

        header(&mem, VIRTIO_BLK_T_IN, 4);
        let head = tq.push_chain(&[
            (HDR, 16, false),
            (BUF + 0x4000, 1024, true),
            (STATUS, 1, true),
        ]);
        assert!(core.process_queue(&mut q, 0, &mem).unwrap());
        assert_eq!(tq.used(1), (u32::from(head), 1025));
        assert_eq!(status(&mem), OK);
        let mut back = [0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(BUF + 0x4000))
            .unwrap();
        assert!(back[..512].iter().all(|&b| b == 0xcd));
        assert!(back[512..].iter().all(|&b| b == 5));
    }

    #[test]
    fn flush_and_get_id() {
        let (_f, mut core) = disk(false);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        tq.push_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        let mut q = tq.queue();
        assert_eq!(run(&mut core, &tq, &mut q, &mem), vec![(0, 1)]);
        assert_eq!(status(&mem), OK);

        let (len, st) = request(&mut core, VIRTIO_BLK_T_GET_ID, 0, (BUF, 20, true));
        assert_eq!((len, st), (21, OK));
        // A short buffer gets a prefix.
        let (len, st) = request(&mut core, VIRTIO_BLK_T_GET_ID, 0, (BUF, 4, true));
        assert_eq!((len, st), (5, OK));
    }

    #[test]
    fn get_id_writes_the_padded_serial() {
        let (_f, mut core) = disk(false);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        mem.write_slice(&[0xff; 32], GuestAddress(BUF)).unwrap();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        tq.push_chain(&[(HDR, 16, false), (BUF, 32, true), (STATUS, 1, true)]);
        let mut q = tq.queue();
        assert_eq!(run(&mut core, &tq, &mut q, &mem), vec![(0, 21)]);
        let mut id = [0u8; 32];
        mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(&id[..14], b"husk-serial-01");
        assert_eq!(&id[14..20], &[0; 6]);
        assert_eq!(&id[20..], &[0xff; 12]);
        assert!(matches!(
            BlockCore::open(_f.path(), true, Some("123456789012345678901")),
            Err(BlockError::SerialTooLong { .. })
        ));
    }

    #[test]
    fn read_only_disks_refuse_writes_and_say_so() {
        let (file, mut core) = disk(true);
        assert_ne!(core.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = test_mem();
        let _ = mem;
        let (len, st) = request(&mut core, VIRTIO_BLK_T_OUT, 0, (BUF, 512, false));
        assert_eq!((len, st), (1, IOERR));
        let image = std::fs::read(file.path()).unwrap();
        assert!(image[..512].iter().all(|&b| b == 0));
        // Reads still work.
        let (len, st) = request(&mut core, VIRTIO_BLK_T_IN, 1, (BUF, 512, true));
        assert_eq!((len, st), (513, OK));
    }

    #[test]
    fn requests_past_the_end_or_unaligned_fail_with_ioerr() {
        let (_f, mut core) = disk(false);
        for (sector, len) in [
            (SECTORS - 1, 1024),
            (SECTORS, 512),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (0, 100),
            (0, 513),
        ] {
            for (t, write) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
                let (used, st) = request(&mut core, t, sector, (BUF, len, write));
                assert_eq!((used, st), (1, IOERR), "type {t} sector {sector} len {len}");
            }
        }
        // The last sector exactly is fine.
        let (used, st) = request(&mut core, VIRTIO_BLK_T_IN, SECTORS - 1, (BUF, 512, true));
        assert_eq!((used, st), (513, OK));
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let (_f, mut core) = disk(false);
        let (used, st) = request(&mut core, 99, 0, (BUF, 512, true));
        assert_eq!((used, st), (1, UNSUPP));
    }

    #[test]
    fn wrong_directions_and_sizes() {
        let (_f, mut core) = disk(false);
        // IN with a device-readable data buffer, OUT with a writable one.
        assert_eq!(
            request(&mut core, VIRTIO_BLK_T_IN, 0, (BUF, 512, false)),
            (1, IOERR)
        );
        assert_eq!(
            request(&mut core, VIRTIO_BLK_T_OUT, 0, (BUF, 512, true)),
            (1, IOERR)
        );
        // Zero-length and oversized data descriptors.
        assert_eq!(
            request(&mut core, VIRTIO_BLK_T_IN, 0, (BUF, 0, true)),
            (1, IOERR)
        );
        assert_eq!(
            request(&mut core, VIRTIO_BLK_T_IN, 0, (BUF, u32::MAX - 511, true)),
            (1, IOERR)
        );
        // A flush with data.
        assert_eq!(
            request(&mut core, VIRTIO_BLK_T_FLUSH, 0, (BUF, 512, true)),
            (1, IOERR)
        );

        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        // Device-writable header.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        tq.push_chain(&[(HDR, 16, true), (BUF, 512, true), (STATUS, 1, true)]);
        // Short header.
        tq.push_chain(&[(HDR, 8, false), (BUF, 512, true), (STATUS, 1, true)]);
        let mut q = tq.queue();
        assert_eq!(run(&mut core, &tq, &mut q, &mem), vec![(0, 1), (3, 1)]);
        assert_eq!(status(&mem), IOERR);

        // Device-readable status: dropped, the byte is left alone.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        tq.push_chain(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, false)]);
        // Empty status descriptor.
        tq.push_chain(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 0, true)]);
        assert_eq!(run(&mut core, &tq, &mut q, &mem), vec![(6, 0), (9, 0)]);
        assert_eq!(status(&mem), UNTOUCHED);
    }

    #[test]
    fn hostile_chains_are_dropped_or_fail_never_panic() {
        let (_f, mut core) = disk(false);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        // 0 -> 1 -> 0: a loop.
        tq.raw(0, HDR, 16, next, 1);
        tq.raw(1, BUF, 512, write | next, 0);
        tq.push_head(0);
        // A next index past the queue.
        tq.raw(2, HDR, 16, next, QSIZE + 3);
        tq.push_head(2);
        // One descriptor only.
        tq.raw(3, STATUS, 1, write, 0);
        tq.push_head(3);
        // Header outside guest memory (status fine): IOERR.
        tq.raw(4, MEM_SIZE + 0x1000, 16, next, 5);
        tq.raw(5, BUF, 512, write | next, 6);
        tq.raw(6, STATUS, 1, write, 0);
        tq.push_head(4);
        // Data outside guest memory, and straddling its end: IOERR.
        tq.raw(7, HDR, 16, next, 8);
        tq.raw(8, MEM_SIZE - 256, 512, write | next, 9);
        tq.raw(9, STATUS, 1, write, 0);
        tq.push_head(7);
        tq.raw(10, HDR, 16, next, 11);
        tq.raw(11, u64::MAX - 255, 512, write | next, 12);
        tq.raw(12, STATUS, 1, write, 0);
        tq.push_head(10);
        // Status outside guest memory: dropped.
        tq.raw(13, HDR, 16, next, 14);
        tq.raw(14, BUF, 512, write | next, 15);
        tq.raw(15, u64::MAX, 1, write, 0);
        tq.push_head(13);
        // A head index past the queue.
        tq.push_head(QSIZE + 1);
        let mut q = tq.queue();
        let used = run(&mut core, &tq, &mut q, &mem);
        assert_eq!(
            &used[..7],
            &[(0, 0), (2, 0), (3, 0), (4, 1), (7, 1), (10, 1), (13, 0)]
        );
        assert_eq!(status(&mem), IOERR);
        // The guest buffer next to the end of memory was not written.
        let mut tail = [0u8; 256];
        mem.read_slice(&mut tail, GuestAddress(MEM_SIZE - 256))
            .unwrap();
        assert_eq!(tail, [0; 256]);
    }

    #[test]
    fn hostile_indirect_tables_are_dropped() {
        use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
        let (_f, mut core) = disk(false);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        let indirect = VRING_DESC_F_INDIRECT as u16;
        // A table outside guest memory, one whose length is not a whole number of
        // descriptors, and one that points back at itself.
        tq.raw(0, MEM_SIZE + 0x1000, 64, indirect, 0);
        tq.push_head(0);
        tq.raw(1, DATA + 0x8000, 20, indirect, 0);
        tq.push_head(1);
        let table = DATA + 0x9000;
        let d = virtio_queue::desc::split::Descriptor::new(table, 16, indirect, 0);
        mem.write_obj(
            virtio_queue::desc::RawDescriptor::from(d),
            GuestAddress(table),
        )
        .unwrap();
        tq.raw(2, table, 16, indirect, 0);
        tq.push_head(2);
        let mut q = tq.queue();
        assert_eq!(
            run(&mut core, &tq, &mut q, &mem),
            vec![(0, 0), (1, 0), (2, 0)]
        );
    }

    #[test]
    fn a_bogus_available_index_stops_processing() {
        let (_f, mut core) = disk(false);
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        tq.push_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        // The driver claims far more chains than the queue holds.
        for _ in 0..QSIZE + 5 {
            tq.push_head(0);
        }
        let mut q = tq.queue();
        assert!(!core.process_queue(&mut q, 0, &mem).unwrap());
        assert_eq!(tq.used_idx(), 0);
    }

    /// The model behind the real mmio transport: registers, activation, a kick, the interrupt.
    #[test]
    fn serves_a_request_through_the_mmio_transport() {
        let (_f, core) = disk(false);
        let mem = test_mem();
        let mut t = MmioTransport::new(mem.clone(), Box::new(Block::new(core))).unwrap();
        let wr =
            |t: &mut MmioTransport, reg: u32, v: u32| t.write(u64::from(reg), &v.to_le_bytes());
        let mut cap = [0u8; 8];
        t.read(0x100, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), SECTORS);

        let mut tq = TestQueue::new(&mem);
        bring_up(&mut t, &tq);
        assert!(t.device().is_activated());

        header(&mem, VIRTIO_BLK_T_IN, 2);
        tq.push_chain(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)]);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(wait_readable(t.irq_event(), Duration::from_secs(10)));
        assert_eq!(t.interrupt_status() & 1, 1);
        assert_eq!(tq.used(0), (0, 513));
        assert_eq!(status(&mem), OK);
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(BUF)).unwrap();
        assert!(data.iter().all(|&b| b == 2));

        // Reset stops the worker.
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert!(!t.device().is_activated());
    }
}
