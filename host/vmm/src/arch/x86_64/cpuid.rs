//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`: the hypervisor bit, APIC ids and
//! counts per vCPU, leaf 0xb topology (one socket, one thread per core), and removal of what
//! the VMM does not emulate (the PMU, leaf 0x1f, nested virtualisation).
//!
//! Owns the filtering rules, as a pure function over entries (unit-tested without KVM). Must
//! never set CPUID on a vCPU itself (the vCPU setup does).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: VMX. Leaf 0x8000_0001 ECX: SVM. Nested virtualisation is not offered: the VMM
/// neither saves nested state nor wants guests running guests.
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF_8000_0001_ECX_SVM: u32 = 1 << 2;
/// Leaf 1 EDX: HTT (the logical-processor count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Why the CPUID could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("vCPU {vcpu}: KVM's CPUID list could not be rebuilt ({entries} entries)")]
    Rebuild { vcpu: u8, entries: usize },
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Filters `entries` (KVM's supported CPUID) for vCPU `index` of `count`.
pub fn filter_entries(entries: &mut Vec<kvm_cpuid_entry2>, index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    // Leaf 0x1f (v2 extended topology) would override 0xb; Linux falls back to 0xb without it.
    entries.retain(|e| e.function != 0x1f);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: APIC id [31:24], logical processors [23:16], CLFLUSH size in qwords [15:8].
                e.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                e.ecx &= !LEAF1_ECX_VMX;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // EAX[31:26]: cores per package - 1; [25:14]: logical CPUs sharing the cache - 1
                // (L1/L2 per core, L3 shared by all).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            0x8000_0001 => e.ecx &= !LEAF_8000_0001_ECX_SVM,
            0xa => {
                // No PMU is emulated.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb => {
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The CPUID for vCPU `index` of `count`, from KVM's supported list.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8) -> Result<CpuId, CpuidError> {
    let mut entries = supported.as_slice().to_vec();
    filter_entries(&mut entries, index, count);
    CpuId::from_entries(&entries).map_err(|_| CpuidError::Rebuild {
        vcpu: index,
        entries: entries.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn fake() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0),
            entry(1, 0),
            entry(4, 0),
            entry(0xa, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x1f, 0),
            entry(0x1f, 1),
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn leaf1_has_apic_id_count_and_hypervisor_bit() {
        let mut v = fake();
        filter_entries(&mut v, 2, 4);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let mut one = fake();
        filter_entries(&mut one, 0, 1);
        assert_eq!(find(&one, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_cores_of_one_socket() {
        let mut v = fake();
        filter_entries(&mut v, 3, 4);
        let smt = find(&v, 0xb, 0);
        let core = find(&v, 0xb, 1);
        let end = find(&v, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 3));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 3));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        assert_ne!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        // 3 vCPUs need 2 bits of APIC id.
        let mut three = fake();
        filter_entries(&mut three, 0, 3);
        assert_eq!(find(&three, 0xb, 1).eax, 2);
    }

    #[test]
    fn pmu_and_leaf_1f_are_removed() {
        let mut v = fake();
        filter_entries(&mut v, 0, 1);
        assert!(v.iter().all(|e| e.function != 0x1f));
        let pmu = find(&v, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        assert_eq!(find(&v, 4, 0).eax >> 26, 0);
    }

    #[test]
    fn nested_virtualisation_is_hidden() {
        let mut v = fake();
        v[1].ecx = 0xffff_ffff;
        filter_entries(&mut v, 0, 1);
        assert_eq!(find(&v, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx & LEAF_8000_0001_ECX_SVM, 0);
        assert_ne!(find(&v, 0x8000_0001, 0).ecx & 1, 0, "other bits kept");
    }

    #[test]
    fn rebuilt_list_keeps_the_filtered_entries() {
        let supported = CpuId::from_entries(&fake()).unwrap();
        let c = vcpu_cpuid(&supported, 1, 2).unwrap();
        assert_eq!(c.as_slice().len(), fake().len() - 2);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
