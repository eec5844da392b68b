//! Legacy port-IO devices: 8250 serial, i8042 (stub).
