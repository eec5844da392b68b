//! The QEMU command line for a husk VM: `-M microvm` without ACPI, shared memfd guest memory
//! (vhost-user back ends need it; without it QEMU boots with a dead device and exits 0), the
//! serial console on stdio, husk's vhost-user vsock device, a virtio-rng device, virtio-fs
//! devices, husk's vhost-user block devices and virtio-net devices on tap fds the caller passes.
//!
//! Owns argument construction only: pure functions, unit-tested. Must never spawn anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::backend::Accel;

/// The inputs of one QEMU command line.
#[derive(Debug, Clone)]
pub struct QemuArgs<'a> {
    pub name: &'a str,
    pub accel: Accel,
    pub icount: bool,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub vhost_vsock_socket: &'a Path,
    pub qmp_socket: &'a Path,
    /// virtio-fs devices: (tag, virtiofsd socket).
    pub shares: &'a [(String, PathBuf)],
    /// virtio-net devices: (the tap fd's number in QEMU, MAC address).
    pub nics: &'a [(i32, String)],
    /// virtio-blk devices: the vhost-user sockets of their `husk-vhost-user block` back ends.
    pub disks: &'a [PathBuf],
}

/// The guest kernel command line: serial console, leave on reset (the VM has no ACPI power-off:
/// `reboot=t` triple-faults and QEMU's `-no-reboot` turns that into an exit), reboot at once
/// on panic, and the TSC frequency so TCG boots skip clock calibration.
pub fn kernel_cmdline(tsc_khz: Option<u64>, extra: &[String]) -> String {
    let mut words = vec![
        "console=ttyS0".to_owned(),
        "reboot=t".into(),
        "panic=-1".into(),
        "quiet".into(),
    ];
    if let Some(khz) = tsc_khz {
        words.push(format!("tsc_early_khz={khz}"));
    }
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// The full argument vector (without the program name).
pub fn argv(a: &QemuArgs<'_>) -> Vec<OsString> {
    let accel: &[&str] = match (a.accel, a.icount) {
        (Accel::Kvm, _) => &["-accel", "kvm", "-cpu", "host"],
        (Accel::Tcg, false) => &["-accel", "tcg", "-cpu", "max"],
        (Accel::Tcg, true) => &[
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-icount",
            "shift=0,sleep=off",
        ],
    };
    let mut v: Vec<OsString> = vec![
        "-name".into(),
        format!("husk-{}", a.name).into(),
        "-M".into(),
        "microvm,acpi=off,memory-backend=mem".into(),
    ];
    v.extend(accel.iter().map(OsString::from));
    v.extend(
        [
            "-smp".to_owned(),
            a.vcpus.to_string(),
            "-m".into(),
            format!("{}M", a.memory_mib),
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                a.memory_mib
            ),
        ]
        .map(OsString::from),
    );
    v.extend(
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .map(OsString::from),
    );
    v.extend([
        "-append".into(),
        a.cmdline.into(),
        "-device".into(),
        "virtio-rng-device".into(),
    ]);
    v.extend([
        "-kernel".into(),
        a.kernel.into(),
        "-initrd".into(),
        a.initrd.into(),
    ]);
    let mut chardev = OsString::from("socket,id=vsock,path=");
    chardev.push(a.vhost_vsock_socket);
    v.extend(["-chardev".into(), chardev]);
    v.extend([
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ]);
    for (i, (tag, socket)) in a.shares.iter().enumerate() {
        let mut chardev = OsString::from(format!("socket,id=fs{i},path="));
        chardev.push(socket);
        v.extend(["-chardev".into(), chardev]);
        v.extend([
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs{i},tag={tag}").into(),
        ]);
    }
    for (i, socket) in a.disks.iter().enumerate() {
        let mut chardev = OsString::from(format!("socket,id=blk{i},path="));
        chardev.push(socket);
        v.extend(["-chardev".into(), chardev]);
        v.extend([
            "-device".into(),
            format!("vhost-user-blk,chardev=blk{i},num-queues=1").into(),
        ]);
    }
    for (i, (fd, mac)) in a.nics.iter().enumerate() {
        v.extend([
            "-netdev".into(),
            format!("tap,id=net{i},fd={fd}").into(),
            "-device".into(),
            format!("virtio-net-device,netdev=net{i},mac={mac}").into(),
        ]);
    }
    let mut qmp = OsString::from("unix:");
    qmp.push(a.qmp_socket);
    qmp.push(",server=on,wait=off");
    v.extend(["-qmp".into(), qmp]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(accel: Accel, icount: bool) -> Vec<String> {
        let a = QemuArgs {
            name: "t1",
            accel,
            icount,
            memory_mib: 256,
            vcpus: 1,
            kernel: Path::new("/k/vmlinux"),
            initrd: Path::new("/i/default.cpio"),
            cmdline: "console=ttyS0",
            vhost_vsock_socket: Path::new("/run/x/vhost-vsock.sock"),
            qmp_socket: Path::new("/run/x/qmp.sock"),
            shares: &[("rootfs".to_owned(), PathBuf::from("/run/x/fs-rootfs.sock"))],
            nics: &[(3, "02:00:0a:00:00:02".to_owned())],
            disks: &[PathBuf::from("/run/x/blk-0.sock")],
        };
        argv(&a)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn shared_memfd_matches_memory_size() {
        let v = args(Accel::Tcg, false);
        assert!(v.contains(&"memory-backend-memfd,id=mem,size=256M,share=on".to_owned()));
        assert!(v.contains(&"256M".to_owned()));
        assert!(v.contains(&"microvm,acpi=off,memory-backend=mem".to_owned()));
        assert!(v.contains(&"-no-reboot".to_owned()));
        assert!(v.contains(&"socket,id=vsock,path=/run/x/vhost-vsock.sock".to_owned()));
        assert!(v.contains(&"socket,id=fs0,path=/run/x/fs-rootfs.sock".to_owned()));
        assert!(v.contains(&"vhost-user-fs-device,chardev=fs0,tag=rootfs".to_owned()));
        assert!(v.contains(&"tap,id=net0,fd=3".to_owned()));
        assert!(v.contains(&"socket,id=blk0,path=/run/x/blk-0.sock".to_owned()));
        assert!(v.contains(&"vhost-user-blk,chardev=blk0,num-queues=1".to_owned()));
        assert!(v.contains(&"virtio-net-device,netdev=net0,mac=02:00:0a:00:00:02".to_owned()));
    }

    #[test]
    fn accelerators() {
        let tcg = args(Accel::Tcg, true).join(" ");
        assert!(
            tcg.contains("-accel tcg -cpu max -icount shift=0,sleep=off"),
            "{tcg}"
        );
        let kvm = args(Accel::Kvm, true).join(" ");
        assert!(
            kvm.contains("-accel kvm -cpu host") && !kvm.contains("icount"),
            "{kvm}"
        );
    }

    #[test]
    fn cmdline_words() {
        let c = kernel_cmdline(Some(2_100_000), &["husk.hostname=a".into()]);
        assert_eq!(
            c,
            "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=2100000 husk.hostname=a"
        );
        assert!(!kernel_cmdline(None, &[]).contains("tsc_early_khz"));
    }
}
