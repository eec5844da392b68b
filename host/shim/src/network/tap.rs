//! A tap device made in the current thread's network namespace: `/dev/net/tun` opened and
//! bound with TUNSETIFF (IFF_TAP | IFF_NO_PI). The device lives as long as an fd to it is open
//! (the shim's and the hypervisor's copy), so it can never outlive the pod.
//!
//! Owns the tun ioctl. Must never make a persistent device (TUNSETPERSIST): one would be left
//! behind by a killed shim.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;

/// TUNSETIFF, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a new tap device named `name` (at most 15 bytes).
pub fn open(name: &str) -> anyhow::Result<OwnedFd> {
    anyhow::ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "tap name {name:?} must be 1-15 bytes"
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (is the tun module loaded?)")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`; `req` is a live,
    // correctly laid out 40-byte ifreq for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc != 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error())
            .context(format!("making the tap device {name}")));
    }
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(size_of::<IfReq>(), 40);
        assert!(open("").is_err());
        assert!(open("sixteen-bytes-xx").is_err());
    }
}
