//! Seeds the kernel's entropy pool from the virtio-rng device, so that early `getrandom`
//! callers (the agent's TLS, container ids) never block or run on a thin pool.
//!
//! Owns reading `/dev/hwrng` and crediting it with `RNDADDENTROPY`. Must never block boot:
//! a missing or silent device is logged and skipped.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// Bytes of seed read and credited.
const SEED_BYTES: usize = 64;

/// Where the virtio-rng device appears.
const HWRNG: &str = "/dev/hwrng";

/// Reads a seed from the hardware RNG and credits it. Returns whether the pool was seeded.
pub fn seed_from_hwrng() -> bool {
    match try_seed() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "entropy not seeded from {HWRNG}");
            false
        }
    }
}

fn try_seed() -> io::Result<()> {
    let mut seed = [0u8; SEED_BYTES];
    File::open(HWRNG)?.read_exact(&mut seed)?;
    credit(&seed)
}

/// `struct rand_pool_info` with room for the seed.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; SEED_BYTES],
}

// The kernel declares RNDADDENTROPY as `_IOW('R', 0x03, int[2])`: the size is the header.
nix::ioctl_write_ptr!(rnd_add_entropy, b'R', 0x03, [libc::c_int; 2]);

fn credit(seed: &[u8; SEED_BYTES]) -> io::Result<()> {
    let info = RandPoolInfo {
        entropy_count: (SEED_BYTES * 8) as libc::c_int,
        buf_size: SEED_BYTES as libc::c_int,
        buf: *seed,
    };
    let urandom = File::options().write(true).open("/dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a `rand_pool_info` header followed by `buf_size` bytes; `info`
    // is a live, correctly laid out struct holding exactly that many bytes after the header.
    unsafe { rnd_add_entropy(urandom.as_raw_fd(), (&info as *const RandPoolInfo).cast()) }
        .map(drop)
        .map_err(io::Error::from)
}
