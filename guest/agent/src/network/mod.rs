//! The pod's network in the guest: the NICs and routes CreateSandbox names, checked and then
//! applied through netlink ([`netlink`]), and the loopback device every sandbox gets.
//!
//! Owns validating the host's network description ([`NetworkPlan::parse`], pure and
//! unit-tested). Must never trust a name, address, prefix or count from the host unchecked,
//! nor touch a device the plan does not name (the NIC is found by its MAC address).

pub mod netlink;

use std::net::IpAddr;

use husk_protocols::agent::{Interface, Route};

/// Most interfaces one sandbox may name.
pub const MAX_INTERFACES: usize = 8;
/// Most routes one sandbox may name.
pub const MAX_ROUTES: usize = 128;
/// Most addresses on one interface.
pub const MAX_ADDRESSES: usize = 32;
/// Linux's limit on an interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Why a network description was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("no network device in the guest has MAC address {mac} (for interface {name:?}): the VM was booted without that NIC")]
    NoDevice { name: String, mac: String },
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        source: rtnetlink::Error,
    },
}

impl NetworkError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            NetworkError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            NetworkError::NoDevice { .. } => ttrpc::Code::FAILED_PRECONDITION,
            NetworkError::Socket(_) | NetworkError::Netlink { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// A checked interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// None: the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// Index into [`NetworkPlan::nics`].
    pub nic: usize,
    pub source: Option<IpAddr>,
    pub ipv6: bool,
}

/// What CreateSandbox asks of the guest's network, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    pub nics: Vec<Nic>,
    pub routes: Vec<RouteSpec>,
}

fn invalid(msg: String) -> NetworkError {
    NetworkError::Invalid(msg)
}

/// At most 80 characters of untrusted text, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Parses "10.0.0.2/24" or "fd00::2/64", the prefix within the family's bounds.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn optional_ip(s: &str, what: &str) -> Result<Option<IpAddr>, NetworkError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| invalid(format!("route {what} {:?} is not an IP address", clip(s))))
}

impl NetworkPlan {
    /// Checks the host's description: counts, names, MACs, MTUs, addresses, and that each
    /// route names an interface and keeps to one address family.
    pub fn parse(interfaces: &[Interface], routes: &[Route]) -> Result<Self, NetworkError> {
        if interfaces.len() > MAX_INTERFACES {
            return Err(invalid(format!(
                "{} interfaces, over the limit of {MAX_INTERFACES}",
                interfaces.len()
            )));
        }
        if routes.len() > MAX_ROUTES {
            return Err(invalid(format!(
                "{} routes, over the limit of {MAX_ROUTES}",
                routes.len()
            )));
        }
        let mut nics: Vec<Nic> = Vec::with_capacity(interfaces.len());
        for i in interfaces {
            if !valid_ifname(&i.name) || i.name == "lo" {
                return Err(invalid(format!(
                    "interface name {:?} must be 1-{MAX_IFNAME} printable bytes without '/' or ':' (and not lo)",
                    clip(&i.name)
                )));
            }
            let mac = husk_protocols::mac::parse(&i.mac).ok_or_else(|| {
                invalid(format!(
                    "interface {:?}: MAC address {:?} is not of the form aa:bb:cc:dd:ee:ff",
                    i.name,
                    clip(&i.mac)
                ))
            })?;
            if !(68..=65535).contains(&i.mtu) {
                return Err(invalid(format!(
                    "interface {:?}: MTU {} is outside 68-65535",
                    i.name, i.mtu
                )));
            }
            if i.addresses.len() > MAX_ADDRESSES {
                return Err(invalid(format!(
                    "interface {:?}: {} addresses, over the limit of {MAX_ADDRESSES}",
                    i.name,
                    i.addresses.len()
                )));
            }
            let addresses = i
                .addresses
                .iter()
                .map(|a| {
                    parse_cidr(a).ok_or_else(|| {
                        invalid(format!(
                            "interface {:?}: address {:?} is not an address/prefix",
                            i.name,
                            clip(a)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if nics.iter().any(|n| n.name == i.name || n.mac == mac) {
                return Err(invalid(format!(
                    "interface {:?} ({}) is named twice",
                    i.name, i.mac
                )));
            }
            nics.push(Nic {
                name: i.name.clone(),
                mac,
                mtu: i.mtu,
                addresses,
            });
        }
        let mut plan_routes = Vec::with_capacity(routes.len());
        for r in routes {
            let nic = nics
                .iter()
                .position(|n| n.name == r.device)
                .ok_or_else(|| {
                    invalid(format!(
                        "route to {:?} names device {:?}, which is not one of the sandbox's interfaces",
                        clip(&r.destination),
                        clip(&r.device)
                    ))
                })?;
            let destination = match r.destination.as_str() {
                "" => None,
                d => Some(parse_cidr(d).ok_or_else(|| {
                    invalid(format!(
                        "route destination {:?} is not an address/prefix",
                        clip(d)
                    ))
                })?),
            };
            let gateway = optional_ip(&r.gateway, "gateway")?;
            let source = optional_ip(&r.source, "source")?;
            let ipv6 = match destination {
                Some((a, _)) => a.is_ipv6(),
                None => gateway.map(|g| g.is_ipv6()).unwrap_or(r.ipv6),
            };
            if [gateway, source]
                .iter()
                .flatten()
                .any(|a| a.is_ipv6() != ipv6)
            {
                return Err(invalid(format!(
                    "route to {:?} mixes IPv4 and IPv6 addresses",
                    clip(&r.destination)
                )));
            }
            plan_routes.push(RouteSpec {
                destination,
                gateway,
                nic,
                source,
                ipv6,
            });
        }
        Ok(Self {
            nics,
            routes: plan_routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: &str) -> Interface {
        Interface {
            name: name.into(),
            mac: mac.into(),
            mtu: 1500,
            addresses: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
            ..Default::default()
        }
    }

    fn route(dest: &str, gw: &str, dev: &str) -> Route {
        Route {
            destination: dest.into(),
            gateway: gw.into(),
            device: dev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_network_parses() {
        let plan = NetworkPlan::parse(
            &[nic("eth0", "02:00:0a:00:00:02")],
            &[
                route("", "10.0.0.1", "eth0"),
                route("10.9.0.0/16", "", "eth0"),
                route("", "fd00::1", "eth0"),
            ],
        )
        .unwrap();
        assert_eq!(plan.nics[0].mac, [2, 0, 10, 0, 0, 2]);
        assert_eq!(plan.nics[0].addresses.len(), 2);
        assert_eq!(plan.routes[0].destination, None);
        assert!(!plan.routes[0].ipv6);
        assert_eq!(plan.routes[1].destination.unwrap().1, 16);
        assert!(plan.routes[2].ipv6);
    }

    #[test]
    fn hostile_descriptions_are_refused() {
        let bad_nics = [
            nic("", "02:00:00:00:00:01"),
            nic("a/b", "02:00:00:00:00:01"),
            nic("..", "02:00:00:00:00:01"),
            nic("lo", "02:00:00:00:00:01"),
            nic(&"x".repeat(16), "02:00:00:00:00:01"),
            nic("eth0", "02:00:00:00:00"),
            nic("eth0", "02:00:00:00:00:01:07"),
            nic("eth0", "zz:00:00:00:00:01"),
        ];
        for n in bad_nics {
            let e = NetworkPlan::parse(std::slice::from_ref(&n), &[]).unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{n:?}");
        }
        let mut tiny = nic("eth0", "02:00:00:00:00:01");
        tiny.mtu = 10;
        assert!(NetworkPlan::parse(&[tiny], &[]).is_err());
        let mut prefix = nic("eth0", "02:00:00:00:00:01");
        prefix.addresses = vec!["10.0.0.1/33".into()];
        assert!(NetworkPlan::parse(&[prefix], &[]).is_err());
        let many: Vec<_> = (0..9)
            .map(|i| nic(&format!("eth{i}"), &format!("02:00:00:00:00:0{i}")))
            .collect();
        assert!(NetworkPlan::parse(&many, &[]).is_err());
        let twice = [
            nic("eth0", "02:00:00:00:00:01"),
            nic("eth1", "02:00:00:00:00:01"),
        ];
        assert!(NetworkPlan::parse(&twice, &[]).is_err());
    }

    #[test]
    fn routes_must_name_a_nic_and_keep_one_family() {
        let nics = [nic("eth0", "02:00:00:00:00:01")];
        let e = NetworkPlan::parse(&nics, &[route("", "10.0.0.1", "eth9")]).unwrap_err();
        assert!(e.to_string().contains("eth9"), "{e}");
        assert!(NetworkPlan::parse(&nics, &[route("10.0.0.0/8", "fd00::1", "eth0")]).is_err());
        assert!(NetworkPlan::parse(&nics, &[route("10.0.0.0/40", "", "eth0")]).is_err());
        assert!(NetworkPlan::parse(&nics, &[route("", "gateway", "eth0")]).is_err());
        let too_many: Vec<_> = (0..=MAX_ROUTES).map(|_| route("", "", "eth0")).collect();
        assert!(NetworkPlan::parse(&nics, &too_many).is_err());
    }
}
