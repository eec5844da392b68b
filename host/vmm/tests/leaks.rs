//! Stopping a VM joins every thread and closes every fd it opened. In a binary of its own,
//! with one test, so no other test's threads or fds disturb the counts.

mod common;

use common::*;
use husk_vmm::arch::x86_64::regs::EntryMode;
use husk_vmm::builder::VmBuilder;
use husk_vmm::vmm::ExitReason;

#[test]
fn stop_joins_threads_and_closes_fds() {
    if !kvm_present("stop_joins_threads_and_closes_fds") {
        return;
    }
    let (threads, fds) = (thread_count(), fd_count());
    for round in 0..2 {
        // 2 vCPUs (the second waits for a SIPI that never comes), a virtio device, a spin loop.
        let code = Asm::new().spin().finish();
        let mut spec = raw_spec(code, EntryMode::Long64, true);
        spec.vcpus = 2;
        spec.boot_timer = true;
        let mut b = VmBuilder::new(spec);
        b.add_virtio(Box::new(DummyVirtio::default()));
        let mut vmm = b.build().unwrap();
        assert!(
            eventually(GUEST_TIMEOUT, || vmm.time_to_first_run().is_some()),
            "round {round}: no vCPU ran"
        );
        // KVM may add a kernel worker to the process (`kvm-nx-lpage-recovery`), so count the
        // vCPU threads by name; the totals before and after must still match.
        // A new thread names itself once it runs, hence the polling.
        let vcpus = || {
            thread_names()
                .iter()
                .filter(|n| n.starts_with("husk-vcpu"))
                .count()
        };
        assert!(
            eventually(GUEST_TIMEOUT, || vcpus() == 2),
            "round {round}: one thread per vCPU: {:?}",
            thread_names()
        );
        assert!(fd_count() > fds);
        if round == 0 {
            assert_eq!(vmm.stop(), ExitReason::Stopped);
            let names = thread_names();
            assert!(
                !names.iter().any(|n| n.starts_with("husk-vcpu")),
                "stop joined the vCPU threads: {names:?}"
            );
        }
        drop(vmm);
        assert!(
            eventually(std::time::Duration::from_secs(2), || thread_count()
                == threads),
            "round {round}: threads left behind: {:?}",
            thread_names()
        );
        assert_eq!(fd_count(), fds, "round {round}: fds left open");
    }
}
