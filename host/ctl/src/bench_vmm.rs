//! `husk bench vmm`: husk's embedded KVM VMM (`husk-vmm`) against a bare `kvm-ioctls`
//! reference written here, both running the same hand-made guest blob in the same invocation:
//!
//! 1. build → first guest instruction: `VmBuilder::build()` up to the first KVM_RUN
//!    ([`Vmm::time_to_first_run`]) against the same steps done bare (open /dev/kvm, create the
//!    VM, one 128 MiB memfd memslot, one vCPU with the same real-mode entry registers, first
//!    KVM_RUN);
//! 2. IO-exit round trips per second: a guest doing N `out`s to the serial scratch register
//!    then `hlt`, through husk's vCPU thread and port bus against a bare `KVM_RUN; match exit`
//!    loop;
//! 3. VMM host memory overhead with a 128 MiB guest: process RSS with the VM built, the guest
//!    halted and the VM alive, minus RSS before the build, minus the guest pages in RSS (the
//!    memfd mapping's own `Rss` in `/proc/self/smaps`), each sample in a fresh child process.
//!
//! The guests are a few bytes of 16-bit real-mode code, assembled by hand below. Owns the
//! benchmark procedure and its report; must never be used as a test assertion.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use husk_vmm::arch::x86_64::regs::EntryMode;
use husk_vmm::builder::{BootSource, RawCode, SerialOutput, VmBuilder, VmSpec};
use husk_vmm::vmm::{ExitReason, Vmm};
use husk_vmm::vstate::kvm::{flavour, KvmFlavour};
use kvm_ioctls::VcpuExit;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::bench::{stats, Stats};

/// Guest RAM of every VM here, as in Firecracker's memory-overhead target.
const MEM_MIB: u64 = 128;
/// Where the guest code is loaded; real mode, so CS = 0x1000, IP = 0.
const CODE_ADDR: u64 = 0x1_0000;
/// Where the memory guest leaves its "done" word (DS = 0).
const DONE_ADDR: u16 = 0xF000;
const DONE_WORD: u16 = 0x600D;
/// The serial port's scratch register (0x3f8 + 7): a real device on husk's port bus whose
/// write has no side effect.
const SCRATCH_PORT: u16 = 0x3ff;
/// How long any guest may take.
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Firecracker's published VMM memory overhead target for 1 vCPU and 128 MiB (SPECIFICATION.md).
const FIRECRACKER_TARGET_MIB: f64 = 5.0;

/// Flags of `husk bench vmm`.
#[derive(Debug, Clone, clap::Args)]
pub struct VmmBenchArgs {
    /// Runs of each VMM per measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// `out` instructions the IO-exit guest executes per run (1 to 65535).
    #[arg(long, default_value_t = 20_000)]
    io_exits: u16,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Internal: one memory sample in this (fresh) process; prints it as JSON.
    #[arg(long, hide = true, value_name = "husk|bare")]
    memory_probe: Option<Probe>,
}

/// Which VMM a memory probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    Husk,
    Bare,
}

// --- the guests (16-bit real mode, loaded at CODE_ADDR, DS = ES = 0 on entry) ---

/// `hlt` (F4): the first instruction is the last.
fn guest_hlt() -> Vec<u8> {
    vec![0xf4]
}

/// `n` port writes, then `hlt`:
/// ```text
///   mov dx, 0x3ff      BA ff 03
///   mov cx, n          B9 lo hi
/// top:
///   out dx, al         EE          ; one KVM_EXIT_IO each
///   dec cx             49
///   jnz top            75 FC       ; back 4 bytes
///   hlt                F4
/// ```
fn guest_io_loop(n: u16) -> Vec<u8> {
    let [p0, p1] = SCRATCH_PORT.to_le_bytes();
    let [n0, n1] = n.to_le_bytes();
    vec![0xba, p0, p1, 0xb9, n0, n1, 0xee, 0x49, 0x75, 0xfc, 0xf4]
}

/// Writes 64 KiB (16 pages at 0x20000), leaves [`DONE_WORD`] at [`DONE_ADDR`], then `cli; hlt`
/// (with an in-kernel irqchip the vCPU then sleeps in KVM_RUN; without one, KVM_RUN returns
/// KVM_EXIT_HLT):
/// ```text
///   mov ax, 0x2000           B8 00 20
///   mov es, ax               8E C0
///   xor di, di               31 FF
///   mov cx, 0x8000           B9 00 80    ; 32768 words
///   cld                      FC
///   rep stosw                F3 AB
///   mov word [0xF000], done  C7 06 00 F0 0D 60
///   cli                      FA
///   hlt                      F4
/// ```
fn guest_touch_and_halt() -> Vec<u8> {
    let [a0, a1] = DONE_ADDR.to_le_bytes();
    let [d0, d1] = DONE_WORD.to_le_bytes();
    vec![
        0xb8, 0x00, 0x20, 0x8e, 0xc0, 0x31, 0xff, 0xb9, 0x00, 0x80, 0xfc, 0xf3, 0xab, 0xc7, 0x06,
        a0, a1, d0, d1, 0xfa, 0xf4,
    ]
}

// --- husk ---

fn husk_spec(code: Vec<u8>, irqchip: bool) -> VmSpec {
    VmSpec {
        vcpus: 1,
        mem_mib: MEM_MIB,
        boot: BootSource::Raw(RawCode {
            code,
            load_addr: CODE_ADDR,
            mode: EntryMode::Real16,
            irqchip,
        }),
        serial: SerialOutput::Discard,
        boot_timer: false,
        // As in production: the vCPU thread runs confined.
        seccomp: husk_vmm::seccomp::Enforcement::Kill,
    }
}

fn husk_build(code: Vec<u8>, irqchip: bool) -> anyhow::Result<Vmm> {
    VmBuilder::new(husk_spec(code, irqchip))
        .build()
        .context("husk-vmm: building the VM")
}

/// Waits for a guest that ends in `hlt` without an irqchip.
fn husk_wait_halted(vmm: &mut Vmm) -> anyhow::Result<Instant> {
    match vmm.wait_timeout(GUEST_TIMEOUT) {
        Some(ExitReason::Halted { .. }) => Ok(Instant::now()),
        Some(other) => bail!("husk-vmm: the guest ended with {other}, not a halt"),
        None => bail!("husk-vmm: the guest did not halt within {GUEST_TIMEOUT:?}"),
    }
}

/// (Build start → first KVM_RUN, build start → `build()` returned.)
fn husk_first_run(irqchip: bool) -> anyhow::Result<(Duration, Duration)> {
    let mut vmm = husk_build(guest_hlt(), irqchip)?;
    let built = vmm.build_started().elapsed();
    if irqchip {
        // With an irqchip `hlt` sleeps in the kernel: wait for the first KVM_RUN, then stop.
        let start = Instant::now();
        while vmm.time_to_first_run().is_none() && start.elapsed() < GUEST_TIMEOUT {
            std::thread::sleep(Duration::from_micros(200));
        }
        vmm.stop();
    } else {
        husk_wait_halted(&mut vmm)?;
    }
    let first = vmm
        .time_to_first_run()
        .context("husk-vmm: the vCPU never entered KVM_RUN")?;
    Ok((first, built))
}

/// First KVM_RUN → the VM reported halted (`wait` returned), for the IO-loop guest.
fn husk_io_loop(n: u16) -> anyhow::Result<Duration> {
    let mut vmm = husk_build(guest_io_loop(n), false)?;
    let end = husk_wait_halted(&mut vmm)?;
    let first = vmm
        .time_to_first_run()
        .context("husk-vmm: no first KVM_RUN recorded")?;
    Ok(end.saturating_duration_since(vmm.build_started() + first))
}

// --- the bare kvm-ioctls reference ---

/// Guest RAM for the reference: one memfd mapped shared, as husk does.
struct BareMemory {
    ptr: *mut u8,
    len: usize,
    _file: File,
}

impl BareMemory {
    fn new(len: usize) -> anyhow::Result<Self> {
        // SAFETY: a valid NUL-terminated name and constant flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"bench-bare-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).context("sizing the memfd")?;
        // SAFETY: a fresh shared mapping of `len` bytes of our own memfd at an address the
        // kernel picks; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of guest memory");
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            _file: file,
        })
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> anyhow::Result<()> {
        let start = usize::try_from(addr)?;
        ensure!(
            start
                .checked_add(bytes.len())
                .is_some_and(|e| e <= self.len),
            "guest write outside RAM"
        );
        // SAFETY: `start..start + len` lies inside the live mapping (checked above), which
        // nothing else aliases as a Rust reference.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len()) };
        Ok(())
    }
}

impl Drop for BareMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this address and length and is
        // unmapped once; the VM using it (declared after it in `BareVm`) is already gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A VM made with nothing but kvm-ioctls. Fields drop in order: vCPU, VM, then memory.
struct BareVm {
    vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
    mem: BareMemory,
}

impl BareVm {
    /// Open /dev/kvm, create the VM, one memslot, the code, one vCPU entering at `CODE_ADDR`
    /// in real mode (the registers husk sets for `EntryMode::Real16`).
    fn new(code: &[u8]) -> anyhow::Result<Self> {
        let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let mut mem = BareMemory::new(usize::try_from(MEM_MIB << 20)?)?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: mem.len as u64,
            userspace_addr: mem.ptr as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes that outlives the VM
        // (`BareVm` drops the VM before the memory).
        unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
        mem.write(CODE_ADDR, code)?;
        let vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
        let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
        sregs.cs.base = CODE_ADDR;
        sregs.cs.selector = (CODE_ADDR >> 4) as u16;
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        sregs.cr0 &= !(0x1 | 0x8000_0000); // PE, PG
        vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
        let regs = kvm_bindings::kvm_regs {
            rip: 0,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
        Ok(Self { vcpu, _vm: vm, mem })
    }

    /// Runs until `hlt`; returns the number of port-out exits on the way.
    fn run_to_halt(&mut self) -> anyhow::Result<u64> {
        let mut outs = 0u64;
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(..)) => outs += 1,
                Ok(VcpuExit::Hlt) => return Ok(outs),
                Ok(other) => bail!("bare KVM: unexpected exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return Err(e).context("bare KVM: KVM_RUN"),
            }
        }
    }
}

fn bare_first_run() -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut vm = BareVm::new(&guest_hlt())?;
    let first = start.elapsed();
    vm.run_to_halt()?;
    Ok(first)
}

fn bare_io_loop(n: u16) -> anyhow::Result<Duration> {
    let mut vm = BareVm::new(&guest_io_loop(n))?;
    let start = Instant::now();
    let outs = vm.run_to_halt()?;
    let took = start.elapsed();
    ensure!(
        outs == u64::from(n),
        "bare KVM: {outs} port exits, expected {n}"
    );
    Ok(took)
}

// --- memory probes (one per fresh child process) ---

/// One memory sample, in KiB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemSample {
    /// VmRSS before the build.
    rss_before_kib: u64,
    /// VmRSS with the VM alive and the guest halted.
    rss_after_kib: u64,
    /// RssAnon / RssFile / RssShmem deltas (VmRSS is their sum).
    anon_delta_kib: i64,
    file_delta_kib: i64,
    shmem_delta_kib: i64,
    /// `Rss` of the guest-memory mappings in /proc/self/smaps: guest pages in RSS.
    guest_rss_kib: u64,
    /// rss_after - rss_before - guest_rss.
    overhead_kib: i64,
}

/// Fields of /proc/self/status in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

fn read_rss() -> anyhow::Result<Rss> {
    let s = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        shmem: field("RssShmem:")?,
    })
}

/// The `Rss` (KiB) of the mapping starting at `addr`, from /proc/self/smaps.
fn mapping_rss_kib(smaps: &str, addr: usize) -> anyhow::Result<u64> {
    let start = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    ensure!(lines.next().is_some(), "no mapping at {addr:#x} in smaps");
    lines
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no Rss for the mapping at {addr:#x}"))
}

fn guest_rss_kib(addrs: &[usize]) -> anyhow::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").context("reading /proc/self/smaps")?;
    addrs.iter().map(|&a| mapping_rss_kib(&smaps, a)).sum()
}

fn sample(before: Rss, after: Rss, guest_rss_kib: u64) -> MemSample {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    MemSample {
        rss_before_kib: before.total,
        rss_after_kib: after.total,
        anon_delta_kib: d(after.anon, before.anon),
        file_delta_kib: d(after.file, before.file),
        shmem_delta_kib: d(after.shmem, before.shmem),
        guest_rss_kib,
        overhead_kib: d(after.total, before.total) - guest_rss_kib as i64,
    }
}

/// husk: built with its in-kernel irqchip (as for Linux), so after `cli; hlt` the vCPU thread
/// sleeps in KVM_RUN and the whole VM stays alive while RSS is read.
fn probe_husk() -> anyhow::Result<MemSample> {
    let before = read_rss()?;
    let mut vmm = husk_build(guest_touch_and_halt(), true)?;
    let start = Instant::now();
    loop {
        let w: u16 = vmm
            .guest_memory()
            .read_obj(GuestAddress(u64::from(DONE_ADDR)))
            .context("reading guest memory")?;
        if w == DONE_WORD {
            break;
        }
        if let Some(r) = vmm.wait_timeout(Duration::from_millis(1)) {
            bail!("husk-vmm: the memory guest ended early: {r}");
        }
        ensure!(
            start.elapsed() < GUEST_TIMEOUT,
            "husk-vmm: the memory guest did not finish"
        );
    }
    // Two more instructions (cli; hlt), emulated at a few µs each.
    std::thread::sleep(Duration::from_millis(20));
    ensure!(vmm.running_vcpus() == 1, "husk-vmm: the vCPU thread ended");
    let addrs: Vec<usize> = vmm
        .guest_memory()
        .iter()
        .map(|r| r.as_ptr() as usize)
        .collect();
    let after = read_rss()?;
    let guest = guest_rss_kib(&addrs)?;
    vmm.stop();
    Ok(sample(before, after, guest))
}

/// Bare: the vCPU runs on this thread until KVM_EXIT_HLT; the VM, vCPU and memory stay alive
/// while RSS is read.
fn probe_bare() -> anyhow::Result<MemSample> {
    let before = read_rss()?;
    let mut vm = BareVm::new(&guest_touch_and_halt())?;
    vm.run_to_halt()?;
    let after = read_rss()?;
    let guest = guest_rss_kib(&[vm.mem.ptr as usize])?;
    drop(vm);
    Ok(sample(before, after, guest))
}

fn memory_sample(which: Probe) -> anyhow::Result<MemSample> {
    let exe = std::env::current_exe().context("finding the husk binary")?;
    let arg = match which {
        Probe::Husk => "husk",
        Probe::Bare => "bare",
    };
    let out = Command::new(&exe)
        .args(["bench", "vmm", "--memory-probe", arg])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} for a memory probe", exe.display()))?;
    ensure!(out.status.success(), "memory probe {arg}: {}", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("memory probe {arg}: bad output"))
}

// --- report ---

/// min / median / max of plain numbers.
#[derive(Debug, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

fn spread(v: &[f64]) -> Spread {
    let mut x = v.to_vec();
    x.sort_by(f64::total_cmp);
    let median = match x.len() {
        0 => 0.0,
        l if l % 2 == 1 => x[l / 2],
        l => (x[l / 2 - 1] + x[l / 2]) / 2.0,
    };
    Spread {
        min: x.first().copied().unwrap_or(0.0),
        median,
        max: x.last().copied().unwrap_or(0.0),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(f64::MIN_POSITIVE)
}

#[derive(Debug, Serialize)]
struct FirstRun {
    husk: Stats,
    /// Build start → `build()` returned (the vCPU thread spawned, not yet necessarily running).
    husk_build_returned: Stats,
    /// husk's `build()` returned ÷ bare's first KVM_RUN (medians): the builder's own work,
    /// without the wait for the scheduler to run the new vCPU thread.
    build_returned_ratio: f64,
    husk_irqchip: Stats,
    bare: Stats,
    median_ratio: f64,
}

#[derive(Debug, Serialize)]
struct IoExits {
    exits_per_run: u16,
    husk_window: Stats,
    bare_window: Stats,
    husk_exits_per_s: Spread,
    bare_exits_per_s: Spread,
    /// husk exits/s ÷ bare exits/s (medians).
    median_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    husk_overhead_mib: Spread,
    bare_overhead_mib: Spread,
    husk_guest_rss_mib: Spread,
    /// The whole probe process (the `husk` binary with the VM alive) minus guest pages.
    husk_process_mib: Spread,
    bare_process_mib: Spread,
    median_ratio: f64,
    firecracker_target_mib: f64,
    husk_samples: Vec<MemSample>,
    bare_samples: Vec<MemSample>,
}

#[derive(Debug, Serialize)]
struct Report {
    kvm: String,
    /// /proc/loadavg and the CPU count when the benchmark started (the host is often shared).
    load_at_start: String,
    build: &'static str,
    runs: usize,
    first_run: FirstRun,
    io_exits: IoExits,
    memory: Memory,
}

fn kvm_words() -> String {
    match flavour() {
        KvmFlavour::Hardware => "hardware KVM (VMX/SVM)".into(),
        KvmFlavour::SoftwarePvm => {
            "kvm_pvm (software PVM: ring-0 guest code is emulated, so absolute exit costs are not hardware figures)".into()
        }
        KvmFlavour::Absent => "no KVM module found".into(),
    }
}

pub fn run(args: &VmmBenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(which) = args.memory_probe {
        let s = match which {
            Probe::Husk => probe_husk()?,
            Probe::Bare => probe_bare()?,
        };
        println!("{}", serde_json::to_string(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.io_exits == 0 {
        bail!("--io-exits must be at least 1");
    }
    let report = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The six orders of the three build variants (0: husk, 1: husk with irqchip, 2: bare).
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];
/// Pause before each timed build.
const SETTLE: Duration = Duration::from_millis(10);

fn measure(args: &VmmBenchArgs) -> anyhow::Result<Report> {
    let n = args.runs;
    let load_at_start = format!(
        "load average {} on {} CPUs",
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Warm-up (page cache, the kick handler, first-use allocations), not recorded.
    husk_first_run(false)?;
    bare_first_run()?;

    let (mut h, mut hb, mut hi, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        eprintln!("[bench] build → first KVM_RUN {}/{n}", i + 1);
        // Every order in turn, so no variant always follows the teardown of the same other
        // one, and a pause first, so the previous VM's teardown in the kernel is over.
        for k in ORDERS[i % ORDERS.len()] {
            std::thread::sleep(SETTLE);
            match k {
                0 => {
                    let (first, built) = husk_first_run(false).context("husk, no irqchip")?;
                    h.push(first);
                    hb.push(built);
                }
                1 => hi.push(husk_first_run(true).context("husk, irqchip")?.0),
                _ => b.push(bare_first_run().context("bare KVM")?),
            }
        }
    }
    let (h, hb, hi, b) = (stats(&h), stats(&hb), stats(&hi), stats(&b));
    let first_run = FirstRun {
        median_ratio: ratio(h.median_ms, b.median_ms),
        build_returned_ratio: ratio(hb.median_ms, b.median_ms),
        husk_build_returned: hb,
        husk: h,
        husk_irqchip: hi,
        bare: b,
    };

    let (mut h, mut b) = (Vec::new(), Vec::new());
    for i in 0..n {
        eprintln!("[bench] {} IO exits {}/{n}", args.io_exits, i + 1);
        if i % 2 == 0 {
            h.push(husk_io_loop(args.io_exits).context("husk IO loop")?);
            b.push(bare_io_loop(args.io_exits).context("bare IO loop")?);
        } else {
            b.push(bare_io_loop(args.io_exits).context("bare IO loop")?);
            h.push(husk_io_loop(args.io_exits).context("husk IO loop")?);
        }
    }
    let rate = |d: &[Duration]| -> Vec<f64> {
        d.iter()
            .map(|d| f64::from(args.io_exits) / d.as_secs_f64().max(f64::MIN_POSITIVE))
            .collect()
    };
    let (hr, br) = (spread(&rate(&h)), spread(&rate(&b)));
    let io_exits = IoExits {
        exits_per_run: args.io_exits,
        median_ratio: ratio(hr.median, br.median),
        husk_window: stats(&h),
        bare_window: stats(&b),
        husk_exits_per_s: hr,
        bare_exits_per_s: br,
    };

    let (mut hs, mut bs) = (Vec::new(), Vec::new());
    for i in 0..n {
        eprintln!("[bench] memory (fresh process each) {}/{n}", i + 1);
        if i % 2 == 0 {
            hs.push(memory_sample(Probe::Husk)?);
            bs.push(memory_sample(Probe::Bare)?);
        } else {
            bs.push(memory_sample(Probe::Bare)?);
            hs.push(memory_sample(Probe::Husk)?);
        }
    }
    let mib = |v: &[MemSample], f: fn(&MemSample) -> f64| -> Spread {
        spread(&v.iter().map(f).collect::<Vec<_>>())
    };
    let ho = mib(&hs, |s| s.overhead_kib as f64 / 1024.0);
    let bo = mib(&bs, |s| s.overhead_kib as f64 / 1024.0);
    let memory = Memory {
        median_ratio: ratio(ho.median, bo.median),
        husk_overhead_mib: ho,
        bare_overhead_mib: bo,
        husk_guest_rss_mib: mib(&hs, |s| s.guest_rss_kib as f64 / 1024.0),
        husk_process_mib: mib(&hs, |s| {
            (s.rss_after_kib as f64 - s.guest_rss_kib as f64) / 1024.0
        }),
        bare_process_mib: mib(&bs, |s| {
            (s.rss_after_kib as f64 - s.guest_rss_kib as f64) / 1024.0
        }),
        firecracker_target_mib: FIRECRACKER_TARGET_MIB,
        husk_samples: hs,
        bare_samples: bs,
    };

    Ok(Report {
        kvm: kvm_words(),
        load_at_start,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        runs: n,
        first_run,
        io_exits,
        memory,
    })
}

fn median_of(v: &[MemSample], f: fn(&MemSample) -> i64) -> f64 {
    let mut x: Vec<i64> = v.iter().map(f).collect();
    x.sort_unstable();
    x.get(x.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
}

/// A measurement's title, then the column heads.
fn header(title: &str) {
    println!("  {title}");
    println!("  {:<36} {:>11} {:>11} {:>11}", "", "min", "median", "max");
}

fn print_report(r: &Report) {
    println!(
        "VMM benchmark: husk-vmm against bare kvm-ioctls, same guest blob, {} runs each ({} build)",
        r.runs, r.build
    );
    println!("  /dev/kvm: {}", r.kvm);
    println!("  host at start: {}", r.load_at_start);
    println!(
        "  guests: a few bytes of 16-bit real-mode code at {CODE_ADDR:#x}; 1 vCPU, {MEM_MIB} MiB memfd RAM"
    );

    let f = &r.first_run;
    println!();
    header("build → first KVM_RUN");
    let us = |name: &str, s: &Stats| {
        println!(
            "  {name:<36} {:>8.0} µs {:>8.0} µs {:>8.0} µs",
            s.min_ms * 1000.0,
            s.median_ms * 1000.0,
            s.max_ms * 1000.0
        )
    };
    us("husk VmBuilder::build (no irqchip)", &f.husk);
    us("bare kvm-ioctls (same steps)", &f.bare);
    us("husk with irqchip (as for Linux)", &f.husk_irqchip);
    us(
        "husk, build() returned (no irqchip)",
        &f.husk_build_returned,
    );
    println!(
        "  ratio husk / bare (median, no irqchip)  {:.2}×",
        f.median_ratio
    );
    println!(
        "  ratio husk build() returned / bare      {:.2}×",
        f.build_returned_ratio
    );
    println!(
        "  (bare: open /dev/kvm, CREATE_VM, memfd + mmap + 1 memslot, CREATE_VCPU, SREGS/REGS;"
    );
    println!(
        "   husk adds CPUID, FPU, MSRs, its buses and devices, and a vCPU thread, whose first"
    );
    println!(
        "   KVM_RUN waits for the scheduler to run it: on a busy host that wait can dominate)"
    );

    let io = &r.io_exits;
    println!();
    header(&format!(
        "IO-exit round trips ({} `out` to port {SCRATCH_PORT:#x} per run)",
        io.exits_per_run
    ));
    let rate = |name: &str, s: &Spread| {
        println!(
            "  {name:<36} {:>8.0} /s {:>8.0} /s {:>8.0} /s   ({:.2} µs per exit, median)",
            s.min,
            s.median,
            s.max,
            1e6 / s.median.max(f64::MIN_POSITIVE)
        )
    };
    rate("husk vCPU thread + port bus", &io.husk_exits_per_s);
    rate("bare KVM_RUN loop", &io.bare_exits_per_s);
    println!(
        "  ratio husk / bare exits/s (median)      {:.2}×",
        io.median_ratio
    );
    println!("  (window: first KVM_RUN → guest halted; includes the guest's dec/jnz, emulated on kvm_pvm)");

    let m = &r.memory;
    println!();
    header(&format!(
        "VMM memory overhead, {MEM_MIB} MiB guest (fresh process per sample)"
    ));
    let mb = |name: &str, s: &Spread| {
        println!(
            "  {name:<36} {:>7.2} MiB {:>7.2} MiB {:>7.2} MiB",
            s.min, s.median, s.max
        )
    };
    mb("husk-vmm (VM alive, vCPU halted)", &m.husk_overhead_mib);
    mb("bare kvm-ioctls", &m.bare_overhead_mib);
    println!(
        "  ratio husk / bare (median)              {:.2}×",
        m.median_ratio
    );
    println!(
        "  Firecracker's published target         ≤ {:.0} MiB (1 vCPU, 128 MiB guest; its whole process)",
        m.firecracker_target_mib
    );
    mb("whole husk process − guest pages", &m.husk_process_mib);
    mb("whole bare process − guest pages", &m.bare_process_mib);
    println!(
        "  (whole process: the `husk` CLI binary itself (clap, tracing, …) with the VM alive; both"
    );
    println!("   probes are the same binary, so the difference between the rows is the VMM)");
    println!(
        "  husk median deltas: RssAnon {:+.2} MiB, RssFile {:+.2} MiB, RssShmem {:+.2} MiB; guest pages in RSS {:.2} MiB",
        median_of(&m.husk_samples, |s| s.anon_delta_kib),
        median_of(&m.husk_samples, |s| s.file_delta_kib),
        median_of(&m.husk_samples, |s| s.shmem_delta_kib),
        m.husk_guest_rss_mib.median
    );
    println!(
        "  (overhead = VmRSS after − VmRSS before the build − guest pages in RSS; guest RAM is a"
    );
    println!(
        "   memfd mapped shared, so its touched pages count in RssShmem: they are the `Rss` of"
    );
    println!("   its mapping in /proc/self/smaps and are subtracted; RssFile is mostly husk-vmm's code pages");
    println!("   first run by the build, plus the kvm_run page; KVM's kernel memory is not RSS)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_loop_jumps_back_to_the_out() {
        let g = guest_io_loop(3);
        // jnz's rel8 is relative to the byte after it and must land on `out` (EE).
        let jnz = g.iter().position(|&b| b == 0x75).unwrap();
        let target = (jnz as i64 + 2 + i64::from(g[jnz + 1] as i8)) as usize;
        assert_eq!(g[target], 0xee);
        assert_eq!(&g[4..6], &3u16.to_le_bytes());
    }

    #[test]
    fn smaps_rss_of_one_mapping() {
        let smaps = "7f00-7f10 rw-s 00000000 00:01 5 /memfd:x (deleted)\nSize: 64 kB\nRss: 12 kB\n\
                     7f10-7f20 rw-p 00000000 00:00 0\nSize: 64 kB\nRss: 64 kB\n";
        assert_eq!(mapping_rss_kib(smaps, 0x7f00).unwrap(), 12);
        assert_eq!(mapping_rss_kib(smaps, 0x7f10).unwrap(), 64);
        assert!(mapping_rss_kib(smaps, 0x7e00).is_err());
    }

    #[test]
    fn spread_keeps_negative_minimums() {
        let s = spread(&[-1.0, 2.0, 3.0]);
        assert_eq!((s.min, s.median, s.max), (-1.0, 2.0, 3.0));
    }
}
