//! A pod network namespace as a CNI plugin leaves one: a named netns (`ip netns add`) holding
//! one end of a veth pair, `eth0` with an address, MTU and default route, the other end in the
//! host's namespace with the gateway address. Made with iproute2, removed on drop.
//!
//! Owns the namespace's life in tests. Must never touch a device it did not create.

use std::path::PathBuf;
use std::process::Command;

/// The pod's side of the veth, as CRI names it.
pub const POD_IF: &str = "eth0";
/// The MTU given to the pod's veth (not the default, so the guest is seen to copy it).
pub const POD_MTU: u32 = 1400;

/// A CNI-like pod network.
#[derive(Debug)]
pub struct PodNetns {
    pub name: String,
    /// The host's end of the veth.
    pub host_if: String,
    /// The host's address (the pod's gateway), e.g. 10.213.7.1.
    pub gateway: String,
    /// The pod's address, e.g. 10.213.7.2.
    pub address: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run with iproute2's `ip`/`tc` (empty on failure).
pub fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl PodNetns {
    /// Makes the namespace, the veth pair and their addresses; `n` (0-249) picks the subnet
    /// 10.213.n.0/24 and the names, so concurrent tests do not collide.
    pub fn create(n: u8) -> Self {
        let name = format!("husk-e2e-{}-{n}", std::process::id());
        let host_if = format!("hk{}v{n}", std::process::id() % 100_000);
        let (gateway, address) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let me = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            gateway: gateway.clone(),
            address: address.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", POD_IF, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let mtu = POD_MTU.to_string();
        ip(&["-n", &name, "link", "set", POD_IF, "mtu", &mtu, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            POD_IF,
        ]);
        ip(&["-n", &name, "route", "add", "default", "via", &gateway]);
        me
    }

    /// The namespace's path, as a spec names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        output("ip", &all)
    }

    /// `tc -n NS ARGS` output.
    pub fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        output("tc", &all)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host's.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}
