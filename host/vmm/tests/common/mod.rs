//! Shared harness for the KVM integration tests: skip logic, a tiny x86 assembler for the
//! hand-made guests (a few hundred bytes of 16-bit or 64-bit code), VM specs for raw guests,
//! a recording MMIO test device and a dummy virtio device.
//!
//! Guests run at CPL0, which `kvm_pvm` emulates instruction by instruction (~1-2 µs each), so
//! they stay tiny.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_vmm::arch::x86_64::regs::EntryMode;
use husk_vmm::builder::{BootSource, RawCode, SerialOutput, VmSpec};
use husk_vmm::devices::bus::BusDevice;
use husk_vmm::devices::virtio::{ActivateContext, ActivateError, VirtioDevice};

/// Where raw test code is loaded (64 KiB, clear of the boot tables below it).
pub const CODE_ADDR: u64 = 0x1_0000;
/// How long a test waits for a guest before calling it hung.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Prints a line that libtest does not capture: writes to the stderr handle directly (only
/// the `print!`/`eprint!` macros are captured), so a "not run" reason always shows in the test
/// output, passing or not.
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// True when `/dev/kvm` exists; otherwise prints why `test` is skipped and returns false.
pub fn kvm_present(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    say(&format!("{test}: not run: /dev/kvm is absent"));
    false
}

/// A VM spec running `code` at [`CODE_ADDR`].
pub fn raw_spec(code: Vec<u8>, mode: EntryMode, irqchip: bool) -> VmSpec {
    VmSpec {
        vcpus: 1,
        mem_mib: 16,
        boot: BootSource::Raw(RawCode {
            code,
            load_addr: CODE_ADDR,
            mode,
            irqchip,
        }),
        serial: SerialOutput::Discard,
        boot_timer: false,
        seccomp: husk_vmm::seccomp::Enforcement::Kill,
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// A byte-level x86 assembler: just the instructions the test guests use. Encodings are
/// for the mode named in each method (16-bit real mode or 64-bit long mode).
#[derive(Debug, Default)]
pub struct Asm {
    pub bytes: Vec<u8>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// Current offset (for jump targets).
    pub fn here(&self) -> usize {
        self.bytes.len()
    }

    // --- either mode ---

    /// `mov al, imm8` (B0 ib).
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.emit(&[0xb0, v])
    }

    /// `out dx, al` (EE).
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.emit(&[0xee])
    }

    /// `out imm8, al` (E6 ib).
    pub fn out_imm_al(&mut self, port: u8) -> &mut Self {
        self.emit(&[0xe6, port])
    }

    /// `in al, dx` (EC).
    pub fn in_al_dx(&mut self) -> &mut Self {
        self.emit(&[0xec])
    }

    /// `test al, imm8` (A8 ib).
    pub fn test_al(&mut self, v: u8) -> &mut Self {
        self.emit(&[0xa8, v])
    }

    /// `cmp al, imm8` (3C ib).
    pub fn cmp_al(&mut self, v: u8) -> &mut Self {
        self.emit(&[0x3c, v])
    }

    /// `jz short target` (74 rel8).
    pub fn jz_short(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[0x74, rel as i8 as u8])
    }

    /// `jnz short target` (75 rel8).
    pub fn jnz_short(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[0x75, rel as i8 as u8])
    }

    /// `hlt` (F4).
    pub fn hlt(&mut self) -> &mut Self {
        self.emit(&[0xf4])
    }

    /// `jmp $` (EB FE): spin forever.
    pub fn spin(&mut self) -> &mut Self {
        self.emit(&[0xeb, 0xfe])
    }

    /// `jmp short target` (EB rel8), `target` an offset from [`Self::here`].
    pub fn jmp_short(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[0xeb, rel as i8 as u8])
    }

    /// `ud2` (0F 0B): invalid opcode; with the empty boot IDT it ends in a triple fault.
    pub fn ud2(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x0b])
    }

    /// Writes `s` to the serial port, byte by byte (`mov al, c; out dx, al`; needs DX = 0x3f8).
    pub fn print(&mut self, s: &[u8]) -> &mut Self {
        for &c in s {
            self.mov_al(c).out_dx_al();
        }
        self
    }

    /// `mov al, 0xfe; out 0x64, al`: i8042 CPU reset.
    pub fn i8042_reset(&mut self) -> &mut Self {
        self.mov_al(0xfe).out_imm_al(0x64)
    }

    // --- 16-bit real mode ---

    /// `mov dx, imm16` in 16-bit code (BA iw).
    pub fn mov_dx16(&mut self, v: u16) -> &mut Self {
        let [a, b] = v.to_le_bytes();
        self.emit(&[0xba, a, b])
    }

    /// `mov word [addr16], imm16` in 16-bit code with DS = 0 (C7 06 aw iw).
    pub fn mov_word_at16(&mut self, addr: u16, v: u16) -> &mut Self {
        let [a, b] = addr.to_le_bytes();
        let [c, d] = v.to_le_bytes();
        self.emit(&[0xc7, 0x06, a, b, c, d])
    }

    /// `cli` (FA).
    pub fn cli(&mut self) -> &mut Self {
        self.emit(&[0xfa])
    }

    /// `sti` (FB).
    pub fn sti(&mut self) -> &mut Self {
        self.emit(&[0xfb])
    }

    // --- 64-bit long mode ---

    /// `mov dx, imm16` in 64-bit code (66 BA iw).
    pub fn mov_dx64(&mut self, v: u16) -> &mut Self {
        let [a, b] = v.to_le_bytes();
        self.emit(&[0x66, 0xba, a, b])
    }

    /// `mov rax, imm64` (48 B8 io).
    pub fn mov_rax(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xb8]).emit(&v.to_le_bytes())
    }

    /// `mov ebx, [rax]` (8B 18): a 4-byte load.
    pub fn load_ebx_from_rax(&mut self) -> &mut Self {
        self.emit(&[0x8b, 0x18])
    }

    /// `inc ebx` (FF C3).
    pub fn inc_ebx(&mut self) -> &mut Self {
        self.emit(&[0xff, 0xc3])
    }

    /// `mov [rax + disp8], ebx` (89 58 db): a 4-byte store.
    pub fn store_ebx_to_rax(&mut self, disp: i8) -> &mut Self {
        self.emit(&[0x89, 0x58, disp as u8])
    }

    /// `mov dword [rax + disp8], imm32` (C7 40 db id): a 4-byte store of a constant.
    pub fn store_imm32_to_rax(&mut self, disp: i8, v: u32) -> &mut Self {
        self.emit(&[0xc7, 0x40, disp as u8]).emit(&v.to_le_bytes())
    }

    /// `mov byte [rax], imm8` (C6 00 ib).
    pub fn store_byte_to_rax(&mut self, v: u8) -> &mut Self {
        self.emit(&[0xc6, 0x00, v])
    }

    /// `jmp rax` (FF E0).
    pub fn jmp_rax(&mut self) -> &mut Self {
        self.emit(&[0xff, 0xe0])
    }

    /// `inc qword [rax]` (48 FF 00).
    pub fn inc_qword_at_rax(&mut self) -> &mut Self {
        self.emit(&[0x48, 0xff, 0x00])
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// An MMIO device that answers reads with a fixed value and records writes.
#[derive(Debug, Default)]
pub struct Recorder {
    pub read_value: u32,
    pub reads: Vec<(u64, usize)>,
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        let v = self.read_value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

pub fn recorder(read_value: u32) -> Arc<Mutex<Recorder>> {
    Arc::new(Mutex::new(Recorder {
        read_value,
        ..Default::default()
    }))
}

/// A virtio device with one queue and no behaviour, to check the builder's wiring; `resets`
/// counts [`VirtioDevice::reset`] calls.
#[derive(Debug, Default)]
pub struct DummyVirtio {
    pub resets: Arc<Mutex<u32>>,
}

impl VirtioDevice for DummyVirtio {
    fn name(&self) -> &'static str {
        "dummy"
    }
    fn device_type(&self) -> u32 {
        husk_vmm::devices::virtio::TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn device_features(&self) -> u64 {
        1 << husk_vmm::devices::virtio::VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, _acked: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _ctx: ActivateContext) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {
        *self.resets.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
    fn is_activated(&self) -> bool {
        false
    }
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Names of this process's threads.
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
