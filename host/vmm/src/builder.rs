//! Builds a running [`Vmm`] from a plain-data [`VmSpec`] (Firecracker style: configuration and
//! construction kept apart from the running VM): guest memory, the VM with its irqchip, the
//! legacy devices (serial, i8042), the boot timer, each virtio device behind an
//! [`MmioTransport`] at the next 4 KiB slot of the MMIO gap with the next IRQ (its queue
//! notifications as ioeventfds, its interrupt as an irqfd, a `virtio_mmio.device=` entry on
//! the command line), the kernel (or a raw code blob for tests), and the vCPUs.
//!
//! Owns the order of construction and the wiring. Must never run the guest loop itself (the
//! vCPU threads do) and never keep anything the [`Vmm`] does not own.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    self, BOOT_TIMER_ADDRESS, CMDLINE_MAX_SIZE, I8042_PORT, I8042_PORT_SIZE, IRQ_BASE, IRQ_MAX,
    MMIO_GAP_START, MMIO_SLOTS_END, MMIO_SLOT_SIZE, SERIAL_IRQ, SERIAL_PORT, SERIAL_PORT_SIZE,
};
use crate::arch::x86_64::regs::{Entry, EntryMode};
use crate::arch::x86_64::{boot, mptable, regs};
use crate::devices::bus::{Bus, BusError, SharedDevice};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{SerialDevice, SerialOut};
use crate::devices::pseudo::boot_timer::{self, BootTimer};
use crate::devices::virtio::transport::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use crate::devices::virtio::{GuestMemoryMmap, VirtioDevice};
use crate::seccomp::{self, Enforcement, SeccompError, ThreadKind};
use crate::vmm::{Vmm, VmmParts};
use crate::vstate::kvm::{Kvm, KvmError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{ExitSink, RunControl, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Firecracker's command line, plus the serial console and no PCI.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 nomodule i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce pci=off";

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// A Linux kernel (ELF vmlinux or bzImage), an optional initramfs, and command-line
    /// arguments appended to [`DEFAULT_CMDLINE`].
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline_extra: String,
    },
    /// Raw machine code, for tests.
    Raw(RawCode),
}

/// A hand-made guest: `code` loaded at `load_addr`, entered in `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCode {
    pub code: Vec<u8>,
    pub load_addr: u64,
    /// [`EntryMode::Real16`] (below 1 MiB) or [`EntryMode::Long64`] (identity-mapped 0..4 GiB,
    /// stack at [`layout::BOOT_STACK_POINTER`]).
    pub mode: EntryMode,
    /// With an in-kernel irqchip (the default for kernels), `hlt` waits in the kernel for an
    /// interrupt, as on hardware; without one, `hlt` ends the VM with [`crate::vmm::ExitReason::Halted`]
    /// and no irqfd is registered.
    pub irqchip: bool,
}

/// Where the serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// Nowhere.
    #[default]
    Discard,
    /// Appended to this file (a log file or a pty).
    File(PathBuf),
}

/// The VM to build, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub vcpus: u8,
    pub mem_mib: u64,
    pub boot: BootSource,
    pub serial: SerialOutput,
    /// Attach the boot timer at [`BOOT_TIMER_ADDRESS`].
    pub boot_timer: bool,
    /// How the vCPU threads are confined once set up ([`crate::seccomp`]).
    pub seccomp: Enforcement,
}

/// Why the VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} vCPUs requested: need 1 to {max}", max = mptable::max_cpus())]
    VcpuCount(u8),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("placing {what} on the {bus} bus: {source}")]
    Bus {
        what: String,
        bus: &'static str,
        #[source]
        source: BusError,
    },
    #[error("serial output {path}: {source}")]
    SerialOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no room for virtio device {device}: {detail}")]
    NoSlot {
        device: &'static str,
        detail: String,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("raw code ({len} bytes at {addr:#x}): {detail}")]
    RawCode {
        len: usize,
        addr: u64,
        detail: String,
    },
}

/// Hands out MMIO windows and IRQs to virtio devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioAllocator {
    next_addr: u64,
    next_irq: u32,
}

impl MmioAllocator {
    /// Starts at the first slot of the MMIO gap, or the second when the boot timer takes the
    /// first.
    pub fn new(boot_timer: bool) -> Self {
        Self {
            next_addr: MMIO_GAP_START + if boot_timer { MMIO_SLOT_SIZE } else { 0 },
            next_irq: IRQ_BASE,
        }
    }

    /// The next (window base, IRQ), or why there is none.
    pub fn allocate(&mut self) -> Result<(u64, u32), String> {
        if self.next_irq > IRQ_MAX {
            return Err(format!("IRQs {IRQ_BASE}..={IRQ_MAX} are all taken"));
        }
        if self.next_addr + MMIO_SIZE > MMIO_SLOTS_END {
            return Err(format!(
                "MMIO windows up to {MMIO_SLOTS_END:#x} are all taken"
            ));
        }
        let got = (self.next_addr, self.next_irq);
        self.next_addr += MMIO_SLOT_SIZE.max(MMIO_SIZE);
        self.next_irq += 1;
        Ok(got)
    }
}

/// [`DEFAULT_CMDLINE`], then `extra`, then one `virtio_mmio.device=4K@<base>:<irq>` per device.
pub fn build_cmdline(extra: &str, virtio: &[(u64, u32)]) -> Result<Cmdline, BuildError> {
    let err = |e: linux_loader::cmdline::Error| BuildError::Cmdline(e.to_string());
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(err)?;
    c.insert_str(DEFAULT_CMDLINE).map_err(err)?;
    if !extra.trim().is_empty() {
        c.insert_str(extra.trim()).map_err(err)?;
    }
    for &(base, irq) in virtio {
        c.add_virtio_mmio_device(MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(err)?;
    }
    Ok(c)
}

/// Builds a VM from a [`VmSpec`] plus devices that are not plain data.
pub struct VmBuilder {
    spec: VmSpec,
    virtio: Vec<Box<dyn VirtioDevice>>,
    extra_mmio: Vec<(SharedDevice, u64, u64)>,
    serial_writer: Option<SerialOut>,
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("spec", &self.spec)
            .field("virtio", &self.virtio)
            .field("extra_mmio", &self.extra_mmio.len())
            .finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

fn place(
    bus: &mut Bus,
    bus_name: &'static str,
    what: &str,
    dev: SharedDevice,
    base: u64,
    len: u64,
) -> Result<(), BuildError> {
    bus.insert(dev, base, len)
        .map_err(|source| BuildError::Bus {
            what: what.to_string(),
            bus: bus_name,
            source,
        })
}

impl VmBuilder {
    pub fn new(spec: VmSpec) -> Self {
        Self {
            spec,
            virtio: Vec::new(),
            extra_mmio: Vec::new(),
            serial_writer: None,
        }
    }

    /// Attaches a virtio device (next MMIO slot, next IRQ, in call order).
    pub fn add_virtio(&mut self, device: Box<dyn VirtioDevice>) -> &mut Self {
        self.virtio.push(device);
        self
    }

    /// Places an extra device on the MMIO bus at `base` (tests, pseudo devices).
    pub fn add_mmio_device(&mut self, device: SharedDevice, base: u64, len: u64) -> &mut Self {
        self.extra_mmio.push((device, base, len));
        self
    }

    /// Sends serial output to `out` instead of [`VmSpec::serial`].
    pub fn serial_writer(&mut self, out: SerialOut) -> &mut Self {
        self.serial_writer = Some(out);
        self
    }

    /// Builds the VM and starts its vCPUs.
    pub fn build(self) -> Result<Vmm, BuildError> {
        let build_started = Instant::now();
        let start_cpu = boot_timer::process_cpu_time();
        let spec = &self.spec;
        let max = mptable::max_cpus();
        if spec.vcpus == 0 || spec.vcpus > max {
            return Err(BuildError::VcpuCount(spec.vcpus));
        }
        let irqchip = match &spec.boot {
            BootSource::Kernel { .. } => true,
            BootSource::Raw(r) => r.irqchip,
        };

        let kvm = Kvm::open()?;
        let mem = memory::create_guest_memory(spec.mem_mib)?;
        let mut vm = Vm::new(&kvm)?;
        vm.register_memory(&mem)?;
        if irqchip {
            vm.setup_irqchip()?;
        }

        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();

        // Serial console.
        let serial_out: SerialOut = match (self.serial_writer, &spec.serial) {
            (Some(w), _) => w,
            (None, SerialOutput::Discard) => Box::new(std::io::sink()),
            (None, SerialOutput::File(path)) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| BuildError::SerialOutput {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("serial irq eventfd"))?;
        if irqchip {
            vm.register_irqfd(&serial_irq, SERIAL_IRQ)?;
        }
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
        place(
            &mut io_bus,
            "port",
            "serial 0x3f8",
            serial.clone(),
            u64::from(SERIAL_PORT),
            SERIAL_PORT_SIZE,
        )?;

        // i8042, for reset.
        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("reset eventfd"))?;
        let i8042 = I8042::new(reset_evt.try_clone().map_err(io("reset eventfd clone"))?);
        place(
            &mut io_bus,
            "port",
            "i8042 0x60",
            Arc::new(Mutex::new(i8042)),
            u64::from(I8042_PORT),
            I8042_PORT_SIZE,
        )?;

        // Boot timer in the first MMIO slot.
        let boot_timer = if spec.boot_timer {
            let t = BootTimer::new(build_started, start_cpu);
            let h = t.handle();
            place(
                &mut mmio_bus,
                "MMIO",
                "boot timer",
                Arc::new(Mutex::new(t)),
                BOOT_TIMER_ADDRESS,
                boot_timer::BOOT_TIMER_SIZE,
            )?;
            Some(h)
        } else {
            None
        };

        // Virtio devices.
        let mut alloc = MmioAllocator::new(spec.boot_timer);
        let mut slots = Vec::new();
        let mut transports = Vec::new();
        for device in self.virtio {
            let name = device.name();
            let (base, irq) = alloc.allocate().map_err(|detail| BuildError::NoSlot {
                device: name,
                detail,
            })?;
            let mut t = MmioTransport::new(mem.clone(), device)
                .map_err(io(format!("virtio {name}: transport eventfds")))?;
            t.set_seccomp(spec.seccomp);
            for (q, evt) in t.queue_events().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                    Some(q as u32),
                )?;
            }
            if irqchip {
                vm.register_irqfd(t.irq_event(), irq)?;
            }
            let t = Arc::new(Mutex::new(t));
            place(
                &mut mmio_bus,
                "MMIO",
                &format!("virtio {name}"),
                t.clone(),
                base,
                MMIO_SIZE,
            )?;
            tracing::debug!(device = name, base, irq, "virtio-mmio device attached");
            slots.push((base, irq));
            transports.push(t);
        }
        for (dev, base, len) in self.extra_mmio {
            place(
                &mut mmio_bus,
                "MMIO",
                &format!("device at {base:#x}"),
                dev,
                base,
                len,
            )?;
        }

        // What the guest runs.
        let mem_size = spec.mem_mib * layout::MIB;
        let entry = match &spec.boot {
            BootSource::Kernel {
                kernel,
                initrd,
                cmdline_extra,
            } => {
                let cmdline = build_cmdline(cmdline_extra, &slots)?;
                let k = boot::load_kernel(&mem, kernel)?;
                let initrd = initrd
                    .as_deref()
                    .map(|p| {
                        let limit = boot::initrd_limit(&k, layout::low_ram_end(mem_size));
                        boot::load_initrd(&mem, p, k.end, limit)
                    })
                    .transpose()?;
                boot::write_boot_info(&mem, &k, &cmdline, initrd, mem_size)?
            }
            BootSource::Raw(raw) => load_raw(&mem, raw)?,
        };
        regs::write_boot_tables(&mem, entry.mode)?;
        if irqchip {
            mptable::setup_mptable(&mem, spec.vcpus)?;
        }

        // vCPUs.
        let supported = kvm.supported_cpuid()?;
        let io_bus = Arc::new(io_bus);
        let mmio_bus = Arc::new(mmio_bus);
        let mut vcpus = Vec::with_capacity(usize::from(spec.vcpus));
        for index in 0..spec.vcpus {
            let v = Vcpu::new(&vm, index, io_bus.clone(), mmio_bus.clone())?;
            v.configure(&supported, spec.vcpus, &entry, irqchip)?;
            vcpus.push(v);
        }
        let control = Arc::new(RunControl::default());
        let sink = Arc::new(ExitSink::new().map_err(io("vCPU exit eventfd"))?);
        let first_run = Arc::new(OnceLock::new());
        let filter = seccomp::filter(ThreadKind::Vcpu, spec.seccomp)?;
        let mut handles = Vec::with_capacity(vcpus.len());
        for v in vcpus {
            match v.start(
                control.clone(),
                sink.clone(),
                first_run.clone(),
                filter.clone(),
            ) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    control.request_stop();
                    for h in &handles {
                        h.kick();
                    }
                    for h in handles {
                        h.join();
                    }
                    return Err(e.into());
                }
            }
        }
        tracing::info!(
            vcpus = spec.vcpus,
            mem_mib = spec.mem_mib,
            virtio = transports.len(),
            build_us = build_started.elapsed().as_micros() as u64,
            "VM started"
        );
        drop(kvm);
        let parts = VmmParts {
            vcpus: handles,
            control,
            sink,
            reset_evt,
            virtio: transports,
            io_bus,
            mmio_bus,
            serial,
            boot_timer,
            build_started,
            first_run,
            vm,
            mem,
        };
        Vmm::new(parts).map_err(io("VM exit epoll"))
    }
}

/// Writes a raw code blob and returns its entry.
fn load_raw(mem: &GuestMemoryMmap, raw: &RawCode) -> Result<Entry, BuildError> {
    let err = |detail: String| BuildError::RawCode {
        len: raw.code.len(),
        addr: raw.load_addr,
        detail,
    };
    match raw.mode {
        EntryMode::Real16 if raw.load_addr + raw.code.len() as u64 > 0x10_0000 => {
            return Err(err("real-mode code must sit below 1 MiB".into()))
        }
        EntryMode::Protected32 => {
            return Err(err("raw code enters in real or long mode only".into()))
        }
        _ => {}
    }
    mem.write_slice(&raw.code, GuestAddress(raw.load_addr))
        .map_err(|e| err(e.to_string()))?;
    Ok(Entry {
        mode: raw.mode,
        rip: raw.load_addr,
        boot_info: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_follow_the_boot_timer_and_irqs_start_at_5() {
        let mut a = MmioAllocator::new(true);
        assert_eq!(a.allocate().unwrap(), (0xC000_1000, 5));
        assert_eq!(a.allocate().unwrap(), (0xC000_2000, 6));
        let mut b = MmioAllocator::new(false);
        assert_eq!(b.allocate().unwrap(), (0xC000_0000, 5));
    }

    #[test]
    fn irqs_run_out_at_the_last_ioapic_pin() {
        let mut a = MmioAllocator::new(false);
        for _ in IRQ_BASE..=IRQ_MAX {
            a.allocate().unwrap();
        }
        let e = a.allocate().unwrap_err();
        assert!(e.contains("IRQs"), "{e}");
    }

    #[test]
    fn cmdline_has_defaults_extra_and_virtio_entries() {
        let c = build_cmdline(
            "quiet init=/husk-init",
            &[(0xC000_1000, 5), (0xC000_2000, 6)],
        )
        .unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(s.starts_with(DEFAULT_CMDLINE), "{s}");
        assert!(s.contains(" quiet init=/husk-init "), "{s}");
        assert!(
            s.ends_with("virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"),
            "{s}"
        );
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(BuildError::Cmdline(_))
        ));
    }

    #[test]
    fn raw_code_placement_is_checked() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let raw = |mode, load_addr| RawCode {
            code: vec![0xf4],
            load_addr,
            mode,
            irqchip: false,
        };
        let e = load_raw(&mem, &raw(EntryMode::Real16, 0x1000)).unwrap();
        assert_eq!((e.rip, e.mode), (0x1000, EntryMode::Real16));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xf4);
        assert!(load_raw(&mem, &raw(EntryMode::Real16, 0x10_0000)).is_err());
        assert!(load_raw(&mem, &raw(EntryMode::Protected32, 0x1000)).is_err());
        assert!(load_raw(&mem, &raw(EntryMode::Long64, 0x40_0000)).is_err());
    }
}
