//! husk's guest image builder (`husk image build`).
//!
//! Produces a reproducible initramfs (cpio newc, uncompressed): `/init` is husk-init, the
//! manifest at [`husk_protocols::manifest::MANIFEST_PATH`] names the build id, flavour,
//! component versions and services; the `debug` flavour adds busybox and a console shell.
//! Every image carries husk's SELinux policy ([`selinux`]), compiled at build time.
//!
//! This crate owns the image layout and format. It must never boot anything, and never read
//! host state beyond the input files it is given and the policy compiler it runs (so identical
//! inputs and the same secilc give identical bytes).

pub mod builder;
pub mod container_rootfs;
pub mod cpio;
pub mod elf;
pub mod selinux;
pub mod tree;

pub use builder::{build, BuildReport, Flavour, ImageError, ImageSpec};
