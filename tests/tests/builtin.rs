//! Linux on husk's builtin VMM: boot, the boot timer written from inside the guest, the agent
//! reached over the builtin vsock device, clean shutdown with nothing left.
//!
//! Needs hardware virtualisation. Elsewhere (this project's build fleet, where /dev/kvm is
//! kvm_pvm) every test here is reported "ignored" with the reason — never passed — and the
//! builtin VMM is exercised with tiny test guests instead (host/vmm/tests/). `tests/real-kvm.sh`
//! runs these on a real-KVM host.

use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_e2e::{runtime, Harness, SHUTDOWN_TIMEOUT};
use husk_hypervisor::BackendChoice;

const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
#[cfg_attr(
    not(hardware_kvm),
    ignore = "not run: no hardware virtualisation (/dev/kvm is not kvm_intel/kvm_amd); tests/real-kvm.sh runs it on a real-KVM host"
)]
fn linux_boots_on_the_builtin_vmm_and_reaches_the_agent() {
    let h = Harness::with_backend(BackendChoice::Builtin);
    assert_eq!(h.hv.name(), "builtin");
    let mut config = h.config(&h.image("default"));
    config.vcpus = 2;
    let (mut vm, report) = h.boot_ready(&config);
    let timer = report
        .boot_timer
        .expect("husk-init wrote the boot timer (husk.boot_timer= on the command line)");
    assert!(timer <= report.ready, "{timer:?} > {:?}", report.ready);
    eprintln!(
        "builtin boot: boot timer {timer:?}, init ready {:?}",
        report.ready
    );
    runtime().block_on(async {
        let client = AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT)
            .await
            .expect("agent over the builtin vsock device");
        let d = client.guest_details().await.expect("GetGuestDetails");
        assert_eq!(d.online_cpus, 2);
    });
    let exit = vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    assert!(exit.status.contains("reset"), "{}", exit.status);
    h.finish(vm);
}

#[test]
#[cfg_attr(
    not(hardware_kvm),
    ignore = "not run: no hardware virtualisation (/dev/kvm is not kvm_intel/kvm_amd); tests/real-kvm.sh runs it on a real-KVM host"
)]
fn the_builtin_vmm_pauses_and_resumes_a_linux_guest() {
    let h = Harness::with_backend(BackendChoice::Builtin);
    let (mut vm, _) = h.boot_ready(&h.config(&h.image("default")));
    vm.pause().expect("pause");
    vm.resume().expect("resume");
    runtime().block_on(async {
        let client = AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT)
            .await
            .expect("agent after resume");
        client.check().await.expect("Check after resume");
    });
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}
