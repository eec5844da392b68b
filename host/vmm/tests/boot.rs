//! Boots the real guest kernel and initramfs on the builtin VMM, where the CPU offers hardware
//! virtualisation. On `kvm_pvm` (software virtualisation, as on the CI machines) a stock
//! kernel cannot run: the test is built ignored there (`cfg(hardware_kvm)`, from build.rs), so
//! the test output says "ignored, not run: ..." instead of passing silently.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use husk_vmm::builder::{BootSource, SerialOutput, VmBuilder, VmSpec};
use husk_vmm::vstate::kvm::{flavour, KvmFlavour};

const KERNEL: &str = "/var/lib/husk/kernel/vmlinux";
const INITRD: &str = "/var/lib/husk/images/default.cpio";

#[test]
#[cfg_attr(
    not(hardware_kvm),
    ignore = "not run: no hardware virtualisation (/dev/kvm is not kvm_intel/kvm_amd); tests/real-kvm.sh runs it on a real-KVM host"
)]
fn linux_boots_on_builtin() {
    assert_eq!(
        flavour(),
        KvmFlavour::Hardware,
        "built for a hardware-KVM host"
    );
    for p in [KERNEL, INITRD] {
        assert!(Path::new(p).exists(), "{p} is absent: run scripts/setup.sh");
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let spec = VmSpec {
        vcpus: 1,
        mem_mib: 256,
        boot: BootSource::Kernel {
            kernel: KERNEL.into(),
            initrd: Some(INITRD.into()),
            cmdline_extra: String::new(),
        },
        serial: SerialOutput::File(log.path().to_owned()),
        boot_timer: true,
        seccomp: husk_vmm::seccomp::Enforcement::Kill,
    };
    let mut vmm = VmBuilder::new(spec).build().unwrap();
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(60) {
        let out = std::fs::read_to_string(log.path()).unwrap_or_default();
        if out.contains("husk-init") {
            seen = true;
            break;
        }
        if let Some(r) = vmm.wait_timeout(Duration::from_millis(100)) {
            panic!("the guest ended ({r}) before husk-init spoke; serial:\n{out}");
        }
    }
    let out = std::fs::read_to_string(log.path()).unwrap_or_default();
    vmm.stop();
    assert!(seen, "no husk-init output within 60 s; serial:\n{out}");
    common::say(&format!(
        "linux_boots_on_builtin: husk-init after {:?}; boot timer {:?}",
        start.elapsed(),
        vmm.boot_time()
    ));
}
