//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 register block): one 4 KiB window
//! per device on the MMIO bus, announced to Linux with `virtio_mmio.device=4K@<base>:<irq>`.
//!
//! Owns the register state machine (§2.1 device status: ACKNOWLEDGE → DRIVER → FEATURES_OK →
//! DRIVER_OK, FAILED at any time, reset on a write of 0), feature negotiation and queue
//! configuration, and the interrupt status the guest reads and acknowledges. On DRIVER_OK it
//! builds the `virtio_queue::Queue`s, checks them against guest memory and activates the model
//! with an [`ActivateContext`]; a queue that does not fit in guest memory fails activation and
//! sets DEVICE_NEEDS_RESET.
//!
//! Must never process a queue's buffers (that is the model's job) nor touch KVM (the builder
//! registers [`MmioTransport::queue_events`] as ioeventfds at `base + QUEUE_NOTIFY` with the
//! queue index as datamatch, and [`MmioTransport::irq_event`] as an irqfd). Every guest access
//! is checked: registers are 32-bit and aligned, config space takes any width; anything else is
//! ignored (reads return zero) and logged at debug level, never a panic.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_SHM_BASE_HIGH,
    VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_SEL, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::{
    ActivateContext, ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::seccomp::Enforcement;

/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// "virt", little-endian (MagicValue).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The register layout version (2: virtio 1.x, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// The VendorID husk reports (as Firecracker does; Linux only prints it).
pub const MMIO_VENDOR_ID: u32 = 0;
/// What the shared-memory length and base registers read: no region.
const NO_SHM_REGION: u32 = u32::MAX;
/// Where device config space starts in the window.
const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Why activation failed (logged; the guest sees DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("{device}: queue {queue} is not ready at DRIVER_OK")]
    QueueNotReady { device: &'static str, queue: usize },
    #[error(
        "{device}: queue {queue} (size {size}, descriptors {desc:#x}, driver area {avail:#x}, \
         device area {used:#x}) does not fit in guest memory"
    )]
    QueueInvalid {
        device: &'static str,
        queue: usize,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
    #[error("{device}: queue {queue} state is inconsistent: {detail}")]
    QueueState {
        device: &'static str,
        queue: usize,
        detail: String,
    },
    #[error("{device}: cannot clone the kick eventfd of queue {queue}")]
    CloneEventFd {
        device: &'static str,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

/// The interrupt the transport hands its model: status bits in an atomic the guest reads at
/// InterruptStatus, plus a write to the irqfd.
#[derive(Debug)]
struct MmioInterrupt {
    status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    irq: EventFd,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }
}

/// One virtio device behind a virtio-mmio register block.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queue_events: Vec<EventFd>,
    irq_event: EventFd,
    /// The queues as the driver configures them (not yet handed to the model).
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    /// How the model's worker threads confine themselves (the builder sets the VM's choice).
    seccomp: Enforcement,
}

impl MmioTransport {
    /// Wraps `device`; creates one kick eventfd per queue and the interrupt eventfd.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: bad queue max size {max}: {e}", device.name()),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            queue_events,
            irq_event: EventFd::new(libc::EFD_NONBLOCK)?,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            config_generation: Arc::new(AtomicU32::new(0)),
            seccomp: Enforcement::Kill,
        })
    }

    /// How the model's worker threads confine themselves once activated (default: kill on any
    /// call outside the device filter).
    pub fn set_seccomp(&mut self, seccomp: Enforcement) {
        self.seccomp = seccomp;
    }

    /// The kick eventfds, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Signalled (as an irqfd) whenever the device raises its interrupt.
    pub fn irq_event(&self) -> &EventFd {
        &self.irq_event
    }

    /// The wrapped model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register as the driver last left it (plus DEVICE_NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The pending interrupt bits (bit 0 used buffer, bit 1 config change).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status.load(Ordering::SeqCst)
    }

    /// Stops the model (VM stop); the guest sees nothing.
    pub fn shutdown(&mut self) {
        self.device.reset();
    }

    fn name(&self) -> &'static str {
        self.device.name()
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// The selected queue, while the driver may still configure it (FEATURES_OK, not yet
    /// DRIVER_OK, not FAILED).
    fn configurable_queue(&mut self, what: &str) -> Option<&mut Queue> {
        let open = self.has(VIRTIO_CONFIG_S_FEATURES_OK)
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0;
        if !open {
            debug!(
                device = self.device.name(),
                status = self.status,
                "{what} written outside queue configuration, ignored"
            );
            return None;
        }
        let name = self.device.name();
        let sel = self.queue_sel;
        let queue = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i));
        if queue.is_none() {
            debug!(
                device = name,
                queue = sel,
                "{what} for a queue that does not exist"
            );
        }
        queue
    }

    fn selected_queue(&self) -> Option<&Queue> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation.load(Ordering::SeqCst),
            // No shared memory regions: all-ones length and base mean "no such region" (Linux
            // reads 0 as a region of length 0, which makes virtio-fs with DAX fail to probe).
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => NO_SHM_REGION,
            _ => {
                debug!(
                    device = self.name(),
                    offset, "read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                let name = self.name();
                if let Some(q) = self.configurable_queue("QueueNum") {
                    let size = u16::try_from(value).unwrap_or(0);
                    if q.try_set_size(size).is_err() {
                        debug!(
                            device = name,
                            size = value,
                            max = q.max_size(),
                            "queue size is not a power of two up to the maximum, ignored"
                        );
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.configurable_queue("QueueReady") {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(offset, value),
            _ => debug!(
                device = self.name(),
                offset, value, "write to a read-only or unknown register, ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has(VIRTIO_CONFIG_S_DRIVER) || self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
            debug!(
                device = self.name(),
                status = self.status,
                "DriverFeatures written outside feature negotiation, ignored"
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => debug!(
                device = self.name(),
                sel, "DriverFeatures for a selector past 1, ignored"
            ),
        }
    }

    fn write_queue_address(&mut self, offset: u32, value: u32) {
        let name = self.name();
        let Some(q) = self.configurable_queue("a queue address") else {
            return;
        };
        let (current, high) = match offset {
            VIRTIO_MMIO_QUEUE_DESC_LOW => (q.desc_table(), false),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => (q.desc_table(), true),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => (q.avail_ring(), false),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => (q.avail_ring(), true),
            VIRTIO_MMIO_QUEUE_USED_LOW => (q.used_ring(), false),
            _ => (q.used_ring(), true),
        };
        let addr = if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        };
        let addr = GuestAddress(addr);
        let result = match offset {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(addr)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                q.try_set_avail_ring_address(addr)
            }
            _ => q.try_set_used_ring_address(addr),
        };
        if let Err(e) = result {
            debug!(device = name, addr = addr.0, "queue address refused: {e}");
        }
    }

    /// A QueueNotify that reached the bus (no ioeventfd registered): kick the queue's eventfd
    /// as the ioeventfd would have.
    fn notify(&self, queue: u32) {
        let Some(event) = usize::try_from(queue)
            .ok()
            .and_then(|i| self.queue_events.get(i))
        else {
            debug!(
                device = self.name(),
                queue, "notify for a queue that does not exist"
            );
            return;
        };
        if let Err(e) = event.write(1) {
            warn!(
                device = self.name(),
                queue, "cannot kick the queue eventfd: {e}"
            );
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let keep = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & keep != keep {
            debug!(
                device = self.name(),
                status = self.status,
                value,
                "the driver cleared status bits without a reset, ignored"
            );
            return;
        }
        let new = value & !self.status;
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
        // Each bit in protocol order, each step checked against the one before.
        if new & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            if self.status & !VIRTIO_CONFIG_S_FAILED == 0 {
                self.status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
            } else {
                self.refuse("ACKNOWLEDGE");
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER != 0 {
            if self.has(VIRTIO_CONFIG_S_ACKNOWLEDGE) {
                self.status |= VIRTIO_CONFIG_S_DRIVER;
            } else {
                self.refuse("DRIVER");
            }
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            if self.has(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER) {
                self.features_ok();
            } else {
                self.refuse("FEATURES_OK");
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if self.has(
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
            ) && !self.has(VIRTIO_CONFIG_S_FAILED)
            {
                self.driver_ok();
            } else {
                self.refuse("DRIVER_OK");
            }
        }
        if new & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            debug!(
                device = self.name(),
                "the driver set DEVICE_NEEDS_RESET, ignored"
            );
        }
    }

    fn refuse(&self, bit: &str) {
        debug!(
            device = self.name(),
            status = self.status,
            "{bit} out of order, ignored"
        );
    }

    /// The driver's features are fixed: accept them only if the device offered every one and
    /// virtio 1 was among them; otherwise FEATURES_OK stays clear (the driver reads it back).
    fn features_ok(&mut self) {
        let offered = self.device.device_features();
        let extra = self.driver_features & !offered;
        if extra != 0 {
            warn!(
                device = self.name(),
                extra = format_args!("{extra:#x}"),
                "the driver acked features the device did not offer; FEATURES_OK refused"
            );
            return;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!(
                device = self.name(),
                "the driver did not ack VIRTIO_F_VERSION_1 (legacy is not supported); \
                 FEATURES_OK refused"
            );
            return;
        }
        self.device.set_acked_features(self.driver_features);
        self.status |= VIRTIO_CONFIG_S_FEATURES_OK;
    }

    fn driver_ok(&mut self) {
        match self.activate() {
            Ok(()) => self.status |= VIRTIO_CONFIG_S_DRIVER_OK,
            Err(e) => {
                warn!("activation failed, the device needs a reset: {e}");
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                let interrupt = MmioInterrupt {
                    status: self.interrupt_status.clone(),
                    config_generation: self.config_generation.clone(),
                    irq: match self.irq_event.try_clone() {
                        Ok(irq) => irq,
                        Err(_) => return,
                    },
                };
                if let Err(e) = interrupt.signal_config_change() {
                    warn!(device = self.name(), "cannot raise the interrupt: {e}");
                }
            }
        }
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        let device = self.name();
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(MmioError::QueueNotReady { device, queue: i });
            }
            if !q.is_valid(&self.mem) {
                return Err(MmioError::QueueInvalid {
                    device,
                    queue: i,
                    size: q.size(),
                    desc: q.desc_table(),
                    avail: q.avail_ring(),
                    used: q.used_ring(),
                });
            }
            let mut q = Queue::try_from(q.state()).map_err(|e| MmioError::QueueState {
                device,
                queue: i,
                detail: e.to_string(),
            })?;
            q.set_event_idx(event_idx);
            queues.push(q);
        }
        let queue_events = self
            .queue_events
            .iter()
            .enumerate()
            .map(|(queue, e)| {
                e.try_clone().map_err(|source| MmioError::CloneEventFd {
                    device,
                    queue,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let irq = self
            .irq_event
            .try_clone()
            .map_err(|source| ActivateError::Io {
                device,
                what: "cannot clone the interrupt eventfd".into(),
                source,
            })?;
        let interrupt = Arc::new(MmioInterrupt {
            status: self.interrupt_status.clone(),
            config_generation: self.config_generation.clone(),
            irq,
        });
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt,
            seccomp: self.seccomp,
        })?;
        Ok(())
    }

    /// Status 0: the model stops and forgets its queues, the transport forgets everything the
    /// driver told it.
    fn reset(&mut self) {
        if self.device.is_activated() {
            self.device.reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }
}

/// A register access: 4 bytes, 4-aligned, inside the register block.
fn register_offset(offset: u64, len: usize) -> Option<u32> {
    (len == 4 && offset % 4 == 0 && offset < CONFIG_OFFSET)
        .then(|| u32::try_from(offset).ok())
        .flatten()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_OFFSET, data);
            } else {
                debug!(
                    device = self.name(),
                    offset,
                    len = data.len(),
                    "odd config read"
                );
                data.fill(0);
            }
            return;
        }
        match register_offset(offset, data.len()) {
            Some(reg) => data.copy_from_slice(&self.read_register(reg).to_le_bytes()),
            None => {
                debug!(
                    device = self.name(),
                    offset,
                    len = data.len(),
                    "register read that is not 32-bit aligned, ignored"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_OFFSET, data);
            } else {
                debug!(
                    device = self.name(),
                    offset,
                    len = data.len(),
                    "odd config write"
                );
            }
            return;
        }
        match (
            register_offset(offset, data.len()),
            <[u8; 4]>::try_from(data),
        ) {
            (Some(reg), Ok(bytes)) => self.write_register(reg, u32::from_le_bytes(bytes)),
            _ => debug!(
                device = self.name(),
                offset,
                len = data.len(),
                "register write that is not 32-bit aligned, ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::read_config_bytes;

    const QUEUE_MAX: u16 = 16;
    const FEATURE_X: u64 = 1 << 3;

    /// What the test model saw, shared with the test.
    #[derive(Debug, Default)]
    struct Seen {
        acked: Option<u64>,
        activations: Vec<(Vec<Queue>, usize)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
        interrupt: Option<Arc<dyn Interrupt>>,
    }

    #[derive(Debug)]
    struct TestDevice {
        seen: Arc<Mutex<Seen>>,
        activated: bool,
        fail: bool,
    }

    impl VirtioDevice for TestDevice {
        fn name(&self) -> &'static str {
            "test"
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[QUEUE_MAX, QUEUE_MAX]
        }
        fn device_features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | FEATURE_X | (1 << VIRTIO_RING_F_EVENT_IDX)
        }
        fn set_acked_features(&mut self, acked: u64) {
            self.seen.lock().unwrap().acked = Some(acked);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Backend {
                    device: "test",
                    detail: "refused".into(),
                });
            }
            let mut seen = self.seen.lock().unwrap();
            seen.activations.push((ctx.queues, ctx.queue_events.len()));
            seen.interrupt = Some(ctx.interrupt);
            self.activated = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
            self.activated = false;
        }
        fn is_activated(&self) -> bool {
            self.activated
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let dev = TestDevice {
            seen: seen.clone(),
            activated: false,
            fail,
        };
        (MmioTransport::new(mem(), Box::new(dev)).unwrap(), seen)
    }

    fn rd(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(reg), &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, reg: u32, v: u32) {
        t.write(u64::from(reg), &v.to_le_bytes());
    }

    fn set_status(t: &mut MmioTransport, bits: u32) {
        let s = rd(t, VIRTIO_MMIO_STATUS);
        wr(t, VIRTIO_MMIO_STATUS, s | bits);
    }

    fn ack_features(t: &mut MmioTransport, features: u64) {
        set_status(t, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        set_status(t, VIRTIO_CONFIG_S_DRIVER);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        set_status(t, VIRTIO_CONFIG_S_FEATURES_OK);
    }

    /// Queue `i` at `0x1000 * (i + 1)`: descriptors, then the driver and device areas.
    fn setup_queue(t: &mut MmioTransport, i: u32, base: u64) {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, i);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_MAX));
        let (desc, avail, used) = (base, base + 0x100, base + 0x200);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport(false);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            FEATURE_X as u32 | (1 << 29)
        );
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(t.queue_events().len(), 2);
    }

    #[test]
    fn features_are_taken_only_between_driver_and_features_ok() {
        let (mut t, seen) = transport(false);
        // Before DRIVER: ignored.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, FEATURE_X as u32);
        ack_features(&mut t, V1 | FEATURE_X);
        assert_eq!(seen.lock().unwrap().acked, Some(V1 | FEATURE_X));
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        // After FEATURES_OK: ignored.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        assert_eq!(t.driver_features, V1 | FEATURE_X);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_bits_or_without_version_1() {
        let (mut t, seen) = transport(false);
        ack_features(&mut t, V1 | (1 << 7));
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        assert_eq!(seen.lock().unwrap().acked, None);

        let (mut t, seen) = transport(false);
        ack_features(&mut t, FEATURE_X);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        assert_eq!(seen.lock().unwrap().acked, None);
    }

    #[test]
    fn status_bits_must_come_in_order() {
        let (mut t, _) = transport(false);
        wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        // Clearing a bit without a reset is ignored.
        wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        // FAILED is always taken.
        set_status(&mut t, VIRTIO_CONFIG_S_FAILED);
        assert_ne!(rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED, 0);
    }

    #[test]
    fn queues_are_configured_only_after_features_ok_and_checked() {
        let (mut t, _) = transport(false);
        // Before FEATURES_OK.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), QUEUE_MAX);
        ack_features(&mut t, V1);
        // Not a power of two, too big, zero: ignored.
        for bad in [3, 32, 0, 0x1_0008] {
            wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, bad);
            assert_eq!(t.queues[0].size(), QUEUE_MAX, "size {bad}");
        }
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 8);
        // Misaligned descriptor table: ignored.
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
        assert_eq!(t.queues[0].desc_table(), 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_1000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        // A selector past the last queue changes nothing.
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn driver_ok_activates_with_ready_queues_and_interrupts_work() {
        let (mut t, seen) = transport(false);
        ack_features(&mut t, V1 | (1 << VIRTIO_RING_F_EVENT_IDX));
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
            0
        );
        let interrupt = {
            let s = seen.lock().unwrap();
            assert_eq!(s.activations.len(), 1);
            let (queues, events) = &s.activations[0];
            assert_eq!(*events, 2);
            assert_eq!(queues[1].desc_table(), 0x2000);
            assert_eq!(queues[1].avail_ring(), 0x2100);
            assert_eq!(queues[1].used_ring(), 0x2200);
            assert!(queues[0].event_idx_enabled());
            s.interrupt.clone().unwrap()
        };
        // Queue configuration is closed after DRIVER_OK.
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), QUEUE_MAX);

        interrupt.signal_used_queue(0).unwrap();
        assert_eq!(t.irq_event().read().unwrap(), 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        let generation = rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        interrupt.signal_config_change().unwrap();
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), generation + 1);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);

        // A notify that reaches the bus kicks the eventfd; a bad index is ignored.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        assert_eq!(t.queue_events()[1].read().unwrap(), 1);
        assert!(t.queue_events()[0].read().is_err());
    }

    #[test]
    fn a_queue_outside_guest_memory_fails_activation_with_needs_reset() {
        let (mut t, seen) = transport(false);
        ack_features(&mut t, V1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x10_0000 - 0x100);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let status = rd(&mut t, VIRTIO_MMIO_STATUS);
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(seen.lock().unwrap().activations.is_empty());
        assert_ne!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2, 0);
    }

    #[test]
    fn unready_queues_or_a_failing_model_fail_activation() {
        let (mut t, seen) = transport(false);
        ack_features(&mut t, V1);
        setup_queue(&mut t, 0, 0x1000);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert!(seen.lock().unwrap().activations.is_empty());

        let (mut t, _) = transport(true);
        ack_features(&mut t, V1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let status = rd(&mut t, VIRTIO_MMIO_STATUS);
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        // The driver may still reset and start over.
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn status_zero_resets_model_and_transport() {
        let (mut t, seen) = transport(false);
        ack_features(&mut t, V1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        seen.lock()
            .unwrap()
            .interrupt
            .clone()
            .unwrap()
            .signal_used_queue(0)
            .unwrap();
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.queues[1].desc_table(), 0);
        assert_eq!(t.driver_features, 0);
        // And it can be brought up again.
        ack_features(&mut t, V1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        set_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn bad_widths_and_offsets_are_ignored() {
        let (mut t, _) = transport(false);
        let mut two = [0xaau8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xaau8; 4];
        t.read(2, &mut four);
        assert_eq!(four, [0; 4]);
        let mut eight = [0xaau8; 8];
        t.read(0, &mut eight);
        assert_eq!(eight, [0; 8]);
        // No shared memory regions.
        wr(&mut t, VIRTIO_MMIO_SHM_SEL, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        // An unknown register and a write-only one read as zero.
        assert_eq!(rd(&mut t, 0xf0), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
        // Narrow and misaligned status writes are dropped.
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Read-only registers ignore writes.
        wr(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        // Past the window's end (the bus never sends this, but it must not panic).
        t.read(u64::MAX - 3, &mut four);
        t.write(u64::MAX - 3, &four);
    }

    #[test]
    fn config_space_takes_any_width() {
        let (mut t, seen) = transport(false);
        let mut one = [0u8; 1];
        t.read(0x103, &mut one);
        assert_eq!(one, [4]);
        let mut two = [0u8; 2];
        t.read(0x101, &mut two);
        assert_eq!(two, [2, 3]);
        let mut eight = [0u8; 8];
        t.read(0x100, &mut eight);
        assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
        t.read(0x106, &mut eight);
        assert_eq!(eight, [7, 8, 0, 0, 0, 0, 0, 0]);
        let mut three = [0xaau8; 3];
        t.read(0x100, &mut three);
        assert_eq!(three, [0; 3]);
        t.write(0x104, &[9, 9]);
        t.write(0x104, &[9, 9, 9]);
        assert_eq!(seen.lock().unwrap().config_writes, vec![(4, vec![9u8, 9])]);
    }
}
