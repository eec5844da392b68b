//! Real KVM_RUN on this machine's /dev/kvm (hardware or `kvm_pvm`) with hand-made guests:
//! serial output, MMIO both ways, the boot timer, i8042 reset, HLT, triple fault, pause and
//! resume, virtio queue notifications as ioeventfds. Each test prints why it did not run when
//! /dev/kvm is absent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use husk_vmm::arch::x86_64::layout::{BOOT_TIMER_ADDRESS, SERIAL_PORT};
use husk_vmm::arch::x86_64::regs::EntryMode;
use husk_vmm::builder::{SerialOutput, VmBuilder};
use husk_vmm::devices::virtio::transport::mmio::QUEUE_NOTIFY;
use husk_vmm::vmm::ExitReason;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn serial_output_reaches_the_log() {
    if !kvm_present("serial_output_reaches_the_log") {
        return;
    }
    // 16-bit: mov dx, 0x3f8; "Hi\n" to the UART; i8042 reset; spin.
    let code = Asm::new()
        .mov_dx16(SERIAL_PORT)
        .print(b"Hi\n")
        .i8042_reset()
        .spin()
        .finish();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut spec = raw_spec(code, EntryMode::Real16, true);
    spec.serial = SerialOutput::File(log.path().to_owned());
    let mut vmm = VmBuilder::new(spec).build().unwrap();
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    assert_eq!(std::fs::read(log.path()).unwrap(), b"Hi\n");
}

#[test]
fn serial_input_reaches_the_guest_and_is_echoed() {
    if !kvm_present("serial_input_reaches_the_guest_and_is_echoed") {
        return;
    }
    // 16-bit: loop { wait for LSR.DR; al = RBR; THR = al; until al == '\n' }; reset.
    let mut a = Asm::new();
    let top = a.here();
    a.mov_dx16(SERIAL_PORT + 5);
    let poll = a.here();
    a.in_al_dx().test_al(0x01).jz_short(poll);
    a.mov_dx16(SERIAL_PORT)
        .in_al_dx()
        .out_dx_al()
        .cmp_al(b'\n')
        .jnz_short(top)
        .i8042_reset()
        .spin();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut b = VmBuilder::new(raw_spec(a.finish(), EntryMode::Real16, true));
    b.serial_writer(Box::new(SharedBuf(out.clone())));
    let mut vmm = b.build().unwrap();
    assert_eq!(vmm.serial_input(b"echo\n"), 5);
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    assert_eq!(&*out.lock().unwrap(), b"echo\n");
}

#[test]
fn long_mode_mmio_reaches_devices_both_ways_and_the_boot_timer_fires() {
    if !kvm_present("long_mode_mmio_reaches_devices_both_ways_and_the_boot_timer_fires") {
        return;
    }
    const DEV: u64 = 0xD000_0000;
    // 64-bit: ebx = [DEV]; ebx += 1; [DEV + 8] = ebx; byte [boot timer] = 123; "ok" on the
    // serial port; i8042 reset.
    let code = Asm::new()
        .mov_rax(DEV)
        .load_ebx_from_rax()
        .inc_ebx()
        .store_ebx_to_rax(8)
        .mov_rax(BOOT_TIMER_ADDRESS)
        .store_byte_to_rax(123)
        .mov_dx64(SERIAL_PORT)
        .print(b"ok")
        .i8042_reset()
        .spin()
        .finish();
    let dev = recorder(0x1234_5678);
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut spec = raw_spec(code, EntryMode::Long64, true);
    spec.boot_timer = true;
    let mut b = VmBuilder::new(spec);
    b.add_mmio_device(dev.clone(), DEV, 0x1000)
        .serial_writer(Box::new(SharedBuf(out.clone())));
    let mut vmm = b.build().unwrap();
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    let d = dev.lock().unwrap();
    assert_eq!(d.reads, vec![(0, 4)]);
    assert_eq!(d.writes, vec![(8, 0x1234_5679u32.to_le_bytes().to_vec())]);
    assert_eq!(&*out.lock().unwrap(), b"ok");
    let boot = vmm
        .boot_time()
        .expect("the boot timer recorded the magic write");
    let first = vmm.time_to_first_run().expect("a vCPU entered KVM_RUN");
    assert!(
        first <= boot.wall,
        "first run {first:?} after boot {boot:?}"
    );
    say(&format!(
        "build → first KVM_RUN {first:?}; build → boot-timer write {:?} (CPU {:?})",
        boot.wall, boot.cpu
    ));
}

#[derive(Debug)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn serial_interrupt_reaches_the_guest_through_the_irqfd() {
    if !kvm_present("serial_interrupt_reaches_the_guest_through_the_irqfd") {
        return;
    }
    // 16-bit, code at 0x10000 (CS = 0x1000, IP = 0), DS = 0. The handler is placed at a fixed
    // offset so the interrupt vector can point at it before it is assembled.
    const HANDLER: u16 = 0x80;
    const VECTOR: u16 = 0x08 + 4; // master PIC base 8, IRQ 4
    let mut a = Asm::new();
    // IVT entry for the serial IRQ: offset HANDLER, segment 0x1000.
    a.mov_word_at16(VECTOR * 4, HANDLER)
        .mov_word_at16(VECTOR * 4 + 2, 0x1000);
    // Master 8259: ICW1 edge+ICW4, ICW2 base 8, ICW3 slave on IRQ2, ICW4 8086; mask all but IRQ4.
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xef),
    ] {
        a.mov_al(v).out_imm_al(port);
    }
    // UART IER = THR empty: the model raises its interrupt line (the irqfd) at once.
    a.mov_dx16(SERIAL_PORT + 1).mov_al(0x02).out_dx_al();
    a.sti().spin();
    assert!(a.here() <= usize::from(HANDLER));
    a.bytes.resize(usize::from(HANDLER), 0x90);
    // Handler: "!" on the UART, then reset.
    a.mov_dx16(SERIAL_PORT).print(b"!").i8042_reset().spin();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut b = VmBuilder::new(raw_spec(a.finish(), EntryMode::Real16, true));
    b.serial_writer(Box::new(SharedBuf(out.clone())));
    let mut vmm = b.build().unwrap();
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    assert_eq!(&*out.lock().unwrap(), b"!", "the interrupt handler ran");
}

#[test]
fn i8042_reset_ends_the_vm_with_reason_reset() {
    if !kvm_present("i8042_reset_ends_the_vm_with_reason_reset") {
        return;
    }
    let code = Asm::new().i8042_reset().spin().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Real16, true))
        .build()
        .unwrap();
    let r = vmm.wait_timeout(GUEST_TIMEOUT);
    assert_eq!(r, Some(ExitReason::Reset));
    assert_eq!(r.unwrap().to_string(), "reset");
    assert_eq!(vmm.running_vcpus(), 0, "wait joined the vCPU threads");
}

#[test]
fn hlt_is_reported_without_an_irqchip() {
    if !kvm_present("hlt_is_reported_without_an_irqchip") {
        return;
    }
    let code = Asm::new().hlt().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Real16, false))
        .build()
        .unwrap();
    assert_eq!(
        vmm.wait_timeout(GUEST_TIMEOUT),
        Some(ExitReason::Halted { vcpu: 0 })
    );
}

#[test]
fn stop_ends_a_vcpu_halted_in_the_kernel() {
    if !kvm_present("stop_ends_a_vcpu_halted_in_the_kernel") {
        return;
    }
    // cli; hlt with an irqchip: the vCPU sleeps in KVM_RUN for good; only the kick wakes it.
    let code = Asm::new().cli().hlt().spin().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Real16, true))
        .build()
        .unwrap();
    assert!(eventually(GUEST_TIMEOUT, || vmm
        .time_to_first_run()
        .is_some()));
    assert_eq!(
        vmm.wait_timeout(Duration::from_millis(50)),
        None,
        "still halted"
    );
    vmm.pause().unwrap();
    vmm.resume().unwrap();
    let t = std::time::Instant::now();
    assert_eq!(vmm.stop(), ExitReason::Stopped);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(vmm.running_vcpus(), 0);
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_present("triple_fault_is_reported") {
        return;
    }
    // ud2 with the empty boot IDT: #UD → #NP/#GP → #DF → triple fault → KVM_EXIT_SHUTDOWN.
    let code = Asm::new().ud2().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Long64, true))
        .build()
        .unwrap();
    assert_eq!(
        vmm.wait_timeout(GUEST_TIMEOUT),
        Some(ExitReason::TripleFault { vcpu: 0 })
    );
}

#[test]
fn a_vcpu_fault_is_reported_with_its_index_and_address() {
    if !kvm_present("a_vcpu_fault_is_reported_with_its_index_and_address") {
        return;
    }
    // Jump into the MMIO gap where no memory is: KVM cannot fetch (or emulate) instructions
    // from MMIO and stops the vCPU with an internal error.
    const NOWHERE: u64 = 0xD000_0000;
    let code = Asm::new().mov_rax(NOWHERE).jmp_rax().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Long64, true))
        .build()
        .unwrap();
    let r = vmm.wait_timeout(GUEST_TIMEOUT).expect("the vCPU stopped");
    let msg = r.to_string();
    say(&format!("fetch from MMIO ended the VM with: {msg}"));
    match r {
        ExitReason::Fault(f) => {
            assert!(msg.contains("vCPU 0"), "{msg}");
            assert!(msg.contains("0xd0000000"), "{msg} {f:?}");
        }
        other => panic!("expected a vCPU fault, got {other:?}"),
    }
}

/// A device that panics on any access.
struct Exploding;

impl husk_vmm::devices::bus::BusDevice for Exploding {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {
        panic!("test device: read");
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        panic!("test device: write (expected by the test)");
    }
}

#[test]
fn a_device_panicking_on_a_vcpu_thread_ends_the_vm_with_a_fault() {
    if !kvm_present("a_device_panicking_on_a_vcpu_thread_ends_the_vm_with_a_fault") {
        return;
    }
    const DEV: u64 = 0xD000_0000;
    let code = Asm::new().mov_rax(DEV).store_byte_to_rax(1).spin().finish();
    let mut spec = raw_spec(code, EntryMode::Long64, true);
    // The panic hook symbolizes a backtrace (opening files) when RUST_BACKTRACE is set; release
    // builds abort on panic instead. Denied calls fail with EPERM rather than kill the tests.
    spec.seccomp = husk_vmm::seccomp::Enforcement::Deny;
    let mut b = VmBuilder::new(spec);
    b.add_mmio_device(Arc::new(Mutex::new(Exploding)), DEV, 0x1000);
    let mut vmm = b.build().unwrap();
    let r = vmm.wait_timeout(GUEST_TIMEOUT);
    assert_eq!(
        r,
        Some(ExitReason::Fault(
            husk_vmm::vstate::vcpu::VcpuFault::Panicked { vcpu: 0 }
        ))
    );
    assert_eq!(vmm.running_vcpus(), 0);
}

#[test]
fn pause_and_resume_a_guest_in_a_loop() {
    if !kvm_present("pause_and_resume_a_guest_in_a_loop") {
        return;
    }
    const COUNTER: u64 = 0x4000;
    // 64-bit: rax = COUNTER; loop { inc qword [rax] }.
    let mut a = Asm::new();
    a.mov_rax(COUNTER);
    let top = a.here();
    a.inc_qword_at_rax().jmp_short(top);
    let mut vmm = VmBuilder::new(raw_spec(a.finish(), EntryMode::Long64, true))
        .build()
        .unwrap();
    let count = |vmm: &husk_vmm::vmm::Vmm| -> u64 {
        vmm.guest_memory().read_obj(GuestAddress(COUNTER)).unwrap()
    };
    assert!(
        eventually(GUEST_TIMEOUT, || count(&vmm) > 0),
        "the guest loop never ran"
    );
    vmm.pause().unwrap();
    assert!(vmm.is_paused());
    let c1 = count(&vmm);
    std::thread::sleep(Duration::from_millis(100));
    let c2 = count(&vmm);
    assert_eq!(c1, c2, "the counter moved while paused");
    vmm.resume().unwrap();
    assert!(
        eventually(GUEST_TIMEOUT, || count(&vmm) > c2),
        "the guest did not run again after resume"
    );
    // Pause twice in a row is harmless, and a paused VM stops cleanly.
    vmm.pause().unwrap();
    vmm.pause().unwrap();
    assert_eq!(vmm.stop(), ExitReason::Stopped);
    assert!(vmm.pause().is_err(), "a stopped VM cannot be paused");
    assert_eq!(vmm.wait(), ExitReason::Stopped);
}

#[test]
fn virtio_queue_notify_is_an_ioeventfd_and_stop_resets_the_device() {
    if !kvm_present("virtio_queue_notify_is_an_ioeventfd_and_stop_resets_the_device") {
        return;
    }
    // Boot timer on, so the virtio device takes the second slot.
    let base = BOOT_TIMER_ADDRESS + 0x1000;
    // 64-bit: dword [base + QueueNotify] = 0 (queue 0); reset.
    let code = Asm::new()
        .mov_rax(base)
        .store_imm32_to_rax(QUEUE_NOTIFY as i8, 0)
        .i8042_reset()
        .spin()
        .finish();
    let mut spec = raw_spec(code, EntryMode::Long64, true);
    spec.boot_timer = true;
    let dummy = DummyVirtio::default();
    let resets = dummy.resets.clone();
    let mut b = VmBuilder::new(spec);
    b.add_virtio(Box::new(dummy));
    let mut vmm = b.build().unwrap();
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    let t = vmm.virtio_transports()[0].lock().unwrap();
    assert_eq!(t.queue_events()[0].read().unwrap(), 1, "queue 0 was kicked");
    drop(t);
    assert_eq!(*resets.lock().unwrap(), 1, "the device was reset at VM end");
}

#[test]
fn a_waker_ends_a_wait_while_the_guest_keeps_running() {
    if !kvm_present("a_waker_ends_a_wait_while_the_guest_keeps_running") {
        return;
    }
    let code = Asm::new().spin().finish();
    let mut vmm = VmBuilder::new(raw_spec(code, EntryMode::Long64, true))
        .build()
        .unwrap();
    let waker = vmm.waker().unwrap();
    let t = std::thread::spawn(move || waker.write(1).unwrap());
    let started = std::time::Instant::now();
    // Woken, not timed out: the VM is still running.
    assert_eq!(vmm.wait_timeout(GUEST_TIMEOUT), None);
    assert!(started.elapsed() < GUEST_TIMEOUT);
    assert_eq!(vmm.running_vcpus(), 1);
    t.join().unwrap();
    assert_eq!(vmm.stop(), ExitReason::Stopped);
}

/// The test guest is a virtio-mmio driver for the rng device: it negotiates VERSION_1, writes
/// a descriptor table with one device-writable buffer and an avail ring offering it, sets up
/// queue 0, sets DRIVER_OK and kicks; the device fills the buffer, puts it on the used ring and
/// raises its interrupt — all through real KVM exits and the ioeventfd.
#[test]
fn a_virtqueue_kicked_by_the_guest_is_processed() {
    if !kvm_present("a_virtqueue_kicked_by_the_guest_is_processed") {
        return;
    }
    use husk_vmm::builder::MmioAllocator;
    use husk_vmm::devices::virtio::rng::Rng;
    const DESC: u64 = 0x10_000;
    const AVAIL: u64 = 0x11_000;
    const USED: u64 = 0x12_000;
    const BUF: u64 = 0x13_000;
    const BUF_LEN: u32 = 64;
    const QUEUE_SIZE: u32 = 8;
    // The first virtio slot, as the builder allocates it.
    let (base, _irq) = MmioAllocator::new(false).allocate().unwrap();
    let (status, features_sel, features) = (0x70, 0x24, 0x20);
    let mut a = Asm::new();
    // The rings: desc[0] = {BUF, BUF_LEN, VIRTQ_DESC_F_WRITE}; avail = {flags 0, idx 1, [0]}.
    a.mov_rax(DESC)
        .store_imm32_to_rax(0, BUF as u32)
        .store_imm32_to_rax(4, 0)
        .store_imm32_to_rax(8, BUF_LEN)
        .store_imm32_to_rax(12, 2)
        .mov_rax(AVAIL)
        .store_imm32_to_rax(0, 1 << 16)
        .store_imm32_to_rax(4, 0);
    a.mov_rax(base)
        .store_imm32_to_rax(status, 1) // ACKNOWLEDGE
        .store_imm32_to_rax(status, 1 | 2) // DRIVER
        .store_imm32_to_rax(features_sel, 1)
        .store_imm32_to_rax(features, 1) // bit 32: VERSION_1
        .store_imm32_to_rax(features_sel, 0)
        .store_imm32_to_rax(features, 0)
        .store_imm32_to_rax(status, 1 | 2 | 8) // FEATURES_OK
        .store_imm32_to_rax(0x30, 0) // QueueSel
        .store_imm32_to_rax(0x38, QUEUE_SIZE) // QueueNum
        .mov_rax(base + 0x80)
        .store_imm32_to_rax(0x00, DESC as u32) // QueueDescLow
        .store_imm32_to_rax(0x04, 0)
        .store_imm32_to_rax(0x10, AVAIL as u32) // QueueDriverLow
        .store_imm32_to_rax(0x14, 0)
        .store_imm32_to_rax(0x20, USED as u32) // QueueDeviceLow
        .store_imm32_to_rax(0x24, 0)
        .mov_rax(base)
        .store_imm32_to_rax(0x44, 1) // QueueReady
        .store_imm32_to_rax(status, 1 | 2 | 8 | 4) // DRIVER_OK
        .store_imm32_to_rax(QUEUE_NOTIFY as i8, 0) // kick queue 0
        .spin();
    let mut b = VmBuilder::new(raw_spec(a.finish(), EntryMode::Long64, true));
    b.add_virtio(Box::new(Rng::new()));
    let mut vmm = b.build().unwrap();
    let mem = vmm.guest_memory().clone();

    let used_idx = || mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
    assert!(
        eventually(GUEST_TIMEOUT, || used_idx() == 1),
        "the device never used the buffer (used idx {}, status {:#x})",
        used_idx(),
        vmm.virtio_transports()[0].lock().unwrap().status()
    );
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, BUF_LEN, "the whole buffer was filled");
    let mut buf = [0u8; BUF_LEN as usize];
    mem.read_slice(&mut buf, GuestAddress(BUF)).unwrap();
    assert!(buf.iter().any(|&b| b != 0), "random bytes arrived");
    let t = vmm.virtio_transports()[0].lock().unwrap();
    assert_eq!(t.status(), 1 | 2 | 8 | 4, "DRIVER_OK, no NEEDS_RESET");
    assert_eq!(t.interrupt_status() & 1, 1, "used-buffer interrupt raised");
    drop(t);
    assert_eq!(vmm.stop(), ExitReason::Stopped);
}
