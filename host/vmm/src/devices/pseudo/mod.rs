//! Pseudo devices: the boot timer (stub).
