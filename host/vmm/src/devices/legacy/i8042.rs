//! A minimal i8042 keyboard controller at ports 0x60-0x64: the CPU-reset command (0xFE on the
//! command port) signals an eventfd so the running VM ends with reason "reset", and enough of
//! the command set answers (self test, control byte, interface test, keyboard ACKs) that
//! Linux's probe finds a controller and moves on.
//!
//! Owns the controller's registers. Must never stop the VM itself (the owner of the reset
//! eventfd does) and never emulate a keyboard beyond acknowledging commands.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Offsets from port 0x60.
const DATA: u64 = 0;
const COMMAND: u64 = 4;
/// Status bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;
/// Commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
/// The guest asks for a CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_BAT_OK: u8 = 0xaa;
/// Control byte: keyboard interrupt, system flag, translation.
const CTR_DEFAULT: u8 = 0x45;
const OUT_BUF_MAX: usize = 16;

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
    control: u8,
    status: u8,
    out: VecDeque<u8>,
    /// The command whose data byte the next write to the data port carries.
    pending: Option<u8>,
    outp: u8,
}

impl I8042 {
    /// A controller that signals `reset_evt` on the CPU-reset command.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            control: CTR_DEFAULT,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            out: VecDeque::new(),
            pending: None,
            outp: 0x01,
        }
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < OUT_BUF_MAX {
            self.out.push_back(b);
        }
    }

    fn status(&self) -> u8 {
        let avail = if self.out.is_empty() {
            0
        } else {
            SB_OUT_DATA_AVAIL
        };
        self.status | avail
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_RESET_CPU => {
                tracing::info!("i8042: guest requested a CPU reset");
                if let Err(e) = self.reset_evt.write(1) {
                    tracing::warn!(error = %e, "i8042: signalling the reset failed");
                }
            }
            CMD_READ_CTR => self.push(self.control),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.status &= !SB_KBD_ENABLED,
            CMD_KBD_ENABLE => self.status |= SB_KBD_ENABLED,
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            other => tracing::debug!(command = other, "i8042: ignored command"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            // A byte for the (absent) mouse: swallowed.
            Some(_) => {}
            // A keyboard command: acknowledged (reset also reports a passed self test).
            None => {
                self.push(KBD_ACK);
                if value == KBD_RESET {
                    self.push(KBD_BAT_OK);
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = match offset {
            DATA => self.out.pop_front().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            DATA => self.data(v),
            COMMAND => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> I8042 {
        I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_the_eventfd() {
        let mut d = dev();
        assert!(d.reset_evt.read().is_err(), "no reset yet");
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(d.reset_evt.read().unwrap(), 1);
        // 0xFE on the data port is a keyboard byte, not a reset.
        d.write(DATA, &[CMD_RESET_CPU]);
        assert!(d.reset_evt.read().is_err());
    }

    #[test]
    fn self_test_and_control_byte_answer_like_a_pc() {
        let mut d = dev();
        assert_eq!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        assert_ne!(rd(&mut d, COMMAND) & SB_SYSTEM_FLAG, 0);
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_ne!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(rd(&mut d, DATA), SELF_TEST_OK);
        assert_eq!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x30]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, DATA), 0x30);
        d.write(DATA, &[KBD_RESET]);
        assert_eq!((rd(&mut d, DATA), rd(&mut d, DATA)), (KBD_ACK, KBD_BAT_OK));
        // Empty buffer reads zero; odd offsets and empty accesses are harmless.
        assert_eq!(rd(&mut d, DATA), 0);
        d.write(2, &[1]);
        d.write(COMMAND, &[]);
        assert_eq!(rd(&mut d, 3), 0);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let mut d = dev();
        for _ in 0..100 {
            d.write(COMMAND, &[CMD_SELF_TEST]);
        }
        assert_eq!(d.out.len(), OUT_BUF_MAX);
    }
}
