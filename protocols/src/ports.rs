//! vsock addressing shared by host and guest (ARCHITECTURE.md §1).
//!
//! Only constants live here; who listens and who connects is documented per port.

/// The host's context id, as seen from the guest (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// The context id husk gives every guest. Each VM has its own vsock device, so all can share it.
pub const GUEST_CID: u32 = 3;

/// ttrpc agent API; the agent listens in the guest, the host connects.
pub const AGENT_PORT: u32 = 1024;

/// husk-init's control channel (`husk.init.v1`): the guest connects to this host port as soon
/// as init is up, announces readiness and then takes shutdown requests on the same stream.
/// On the host it arrives at `<vsock.sock>_1025`.
pub const INIT_PORT: u32 = 1025;

/// Console server (`husk.console.v1`); listens in the guest.
pub const CONSOLE_PORT: u32 = 1026;

/// First port of the per-process stdio streams.
pub const STDIO_PORT_BASE: u32 = 1027;

/// Guest → host trace export (OTLP).
pub const TRACE_PORT: u32 = 10240;

/// The file name on the host where guest connections to host `port` arrive, for a hybrid
/// vsock socket at `uds_path` (Firecracker's convention: `<uds_path>_<port>`).
pub fn host_listener_path(uds_path: &std::path::Path, port: u32) -> std::path::PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_path_appends_port() {
        let p = host_listener_path(std::path::Path::new("/run/husk/vm1/vsock.sock"), INIT_PORT);
        assert_eq!(p, std::path::Path::new("/run/husk/vm1/vsock.sock_1025"));
    }
}
