//! husk's guest image builder (`husk image build`).
//!
//! Produces a reproducible initramfs (cpio newc, uncompressed): `/init` is husk-init, the
//! manifest at [`husk_protocols::manifest::MANIFEST_PATH`] names the build id, flavour,
//! component versions and services; the `debug` flavour adds busybox, a console shell and
//! debugging tools (`strace`, `lsof`) with their loader and shared libraries ([`dynlib`]).
//! Every image carries husk's SELinux policy ([`selinux`]), compiled at build time.
//!
//! This crate owns the image layout and format. It must never boot anything, and never read
//! host state beyond the input files it is given, the shared libraries they need, the policy
//! compiler it runs and the Debian package database it asks for tool versions (so identical
//! inputs and the same secilc give identical bytes).

pub mod builder;
pub mod container_rootfs;
pub mod cpio;
pub mod dynlib;
pub mod elf;
pub mod selinux;
pub mod tree;

pub use builder::{build, BuildReport, Flavour, ImageError, ImageSpec};
