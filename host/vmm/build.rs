//! Marks test builds on hosts with hardware virtualisation (`cfg(hardware_kvm)`), so tests that
//! need it (Linux on the builtin VMM) are reported as ignored with the reason elsewhere, never
//! as passed. `HUSK_HARDWARE_KVM=0/1` overrides the probe.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hardware_kvm)");
    println!("cargo::rerun-if-env-changed=HUSK_HARDWARE_KVM");
    let hardware = match std::env::var("HUSK_HARDWARE_KVM").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|m| std::path::Path::new("/sys/module").join(m).exists()),
    };
    if hardware {
        println!("cargo::rustc-cfg=hardware_kvm");
    }
}
