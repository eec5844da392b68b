//! `husk-vhost-user`: serves one of husk's device models (vsock, block) to QEMU over a
//! vhost-user socket, for one VM, until QEMU disconnects. The `qemu` back end starts one per
//! device per VM; people rarely run it by hand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use husk_vmm::seccomp::Enforcement;
use husk_vmm::vhost_user::{block, vsock};

#[derive(Debug, Parser)]
#[command(version, about = "Serve a husk virtio device to QEMU over vhost-user")]
struct Cli {
    /// Once QEMU has connected the process confines itself with seccomp: `enforce` (a call
    /// outside the device filter kills it), `log` (allowed and logged by the kernel), `off`.
    #[arg(long, global = true, default_value = "enforce")]
    seccomp: Enforcement,
    #[command(subcommand)]
    device: Device,
}

#[derive(Debug, Subcommand)]
enum Device {
    /// virtio-vsock with husk's hybrid Unix-socket muxer.
    Vsock {
        /// The vhost-user socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// The hybrid vsock socket (`CONNECT <port>`; guest connections go to `<path>_<port>`).
        #[arg(long)]
        uds_path: PathBuf,
        /// The guest's context id.
        #[arg(long, default_value_t = 3)]
        guest_cid: u64,
    },
    /// virtio-blk backed by a raw image file.
    Block {
        /// The vhost-user socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// The raw disk image.
        #[arg(long)]
        path: PathBuf,
        /// Refuse guest writes (the device offers VIRTIO_BLK_F_RO).
        #[arg(long)]
        read_only: bool,
        /// The serial id the guest reads (at most 20 bytes).
        #[arg(long)]
        serial: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let seccomp = cli.seccomp;
    match cli.device {
        Device::Vsock {
            socket,
            uds_path,
            guest_cid,
        } => vsock::serve(&vsock::VsockBackendConfig {
            socket: socket.clone(),
            uds_path,
            guest_cid,
            seccomp,
        })
        .with_context(|| format!("serving vhost-user vsock on {}", socket.display())),
        Device::Block {
            socket,
            path,
            read_only,
            serial,
        } => block::serve(&block::BlockBackendConfig {
            socket: socket.clone(),
            path,
            read_only,
            serial,
            seccomp,
        })
        .with_context(|| format!("serving vhost-user block on {}", socket.display())),
    }
}
