//! Tells the builtin VMM's boot timer that the guest is up: one byte,
//! [`husk_protocols::cmdline::BOOT_TIMER_MAGIC`], written to the register the command line
//! names (`husk.boot_timer=`), through /dev/mem.
//!
//! Owns that write only. Must never map more than the register's page, and must never touch
//! memory unless the host named an address (under QEMU there is none and this does nothing).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use husk_protocols::cmdline;

/// Writes the boot-timer byte if the command line asks for it; returns whether it did.
pub fn signal_booted(cmdline_text: &str) -> std::io::Result<bool> {
    let Some(addr) = cmdline::lookup(cmdline_text, cmdline::BOOT_TIMER) else {
        return Ok(false);
    };
    let Some(addr) = cmdline::parse_boot_timer(addr) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}={addr} is not a page-aligned 0x address",
                cmdline::BOOT_TIMER
            ),
        ));
    };
    // O_SYNC: uncached access to device memory.
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")?;
    let offset = libc::off_t::try_from(addr)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: maps one page of /dev/mem at a page-aligned offset; the result is checked and
    // unmapped below, and nothing else aliases it.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            offset,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `page` is a live, writable one-page mapping; a volatile byte store is one MMIO
    // write that the VMM sees.
    unsafe { std::ptr::write_volatile(page.cast::<u8>(), cmdline::BOOT_TIMER_MAGIC) };
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(page, 4096) };
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_happens_without_the_key() {
        assert!(!signal_booted("console=ttyS0 husk.log=info").unwrap());
    }

    #[test]
    fn a_malformed_address_is_an_error_not_a_write() {
        let e = signal_booted("husk.boot_timer=0xc0000123").unwrap_err();
        assert!(e.to_string().contains("page-aligned"), "{e}");
    }
}
