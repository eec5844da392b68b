//! The pod's network, host side (Kata's "tcfilter" model): in the network namespace the pod's
//! spec names (CNI put a veth there), each veth gets a twin tap device joined to it with tc
//! redirects both ways; the tap's fd goes to the hypervisor as a virtio-net device with the
//! veth's MAC, and the veth's addresses and routes go to the agent, which gives them to the
//! guest's NIC. Packets then flow veth ⇄ tap ⇄ guest with no bridge and no address changes.
//!
//! Owns discovering, attaching and detaching. Must never change the veth's addresses or the
//! namespace's routes (CNI owns them), nor leave a tc rule behind: what it adds is recorded
//! in the bundle (`network.json`) so `delete` can remove it after a SIGKILL.

mod netns;
mod tap;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;
use husk_protocols::agent::{Interface, Route};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Name of the tap device made for the pod's `n`th NIC (one pod per namespace).
fn tap_name(n: usize) -> String {
    format!("husk_tap{n}")
}

/// `ETH_P_ALL`: tc filters that match every protocol. The kernel reads a filter's protocol in
/// network byte order (`htons`); in host order it would match nothing.
const ETH_P_ALL: u16 = 0x0003_u16.to_be();

/// The network namespace a spec (config.json, as JSON) asks to join: `Some(path)` for a
/// `network` namespace with a path (CNI's); None for a new one (the guest's loopback only,
/// as runc gives) or none at all.
pub fn netns_path(spec: &serde_json::Value) -> Option<PathBuf> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// One veth joined to its tap.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Joined {
    pub veth: String,
    pub veth_index: u32,
    pub tap: String,
    pub mac: String,
}

/// What `delete` needs to undo an attachment (`network.json` in the bundle).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub netns: PathBuf,
    pub joined: Vec<Joined>,
}

/// The pod's network, attached.
#[derive(Debug)]
pub struct PodNetwork {
    pub record: Record,
    /// One tap fd per NIC, in `record.joined` order.
    pub taps: Vec<Arc<OwnedFd>>,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
}

fn attr_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A link-local IPv6 address (the guest makes its own from the same MAC).
fn link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The namespace's NICs worth giving the guest: up-able Ethernet devices with a MAC, not
/// loopback and not a tap of ours.
async fn nics(handle: &Handle) -> anyhow::Result<Vec<LinkMessage>> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing the pod namespace's devices")?;
    Ok(links
        .into_iter()
        .filter(|l| {
            !l.header.flags.contains(LinkFlags::Loopback)
                && attr_name(l).is_some_and(|n| !n.starts_with("husk_tap"))
                && l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(m) if m.len() == 6))
        })
        .collect())
}

/// The addresses (as "a/p") on device `index`, link-local IPv6 ones left out.
async fn addresses(handle: &Handle, index: u32) -> anyhow::Result<Vec<String>> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .context("listing the pod's addresses")?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let prefix = m.header.prefix_len;
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) if !link_local(ip) => Some(format!("{ip}/{prefix}")),
                _ => None,
            })
        })
        .collect())
}

/// The main table's routes through the named devices, the kernel's own (made for each
/// address, made again in the guest) left out.
async fn routes(handle: &Handle, devices: &[(u32, String)]) -> anyhow::Result<Vec<Route>> {
    let mut out = Vec::new();
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let ipv6 = family.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
        let msgs: Vec<_> = handle
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .context("listing the pod's routes")?;
        for m in msgs {
            if m.header.protocol == RouteProtocol::Kernel
                || m.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            let mut oif = None;
            let mut destination = None;
            let mut gateway = None;
            let mut source = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => destination = ip_of(d),
                    RouteAttribute::Gateway(g) => gateway = ip_of(g),
                    RouteAttribute::PrefSource(s) => source = ip_of(s),
                    _ => {}
                }
            }
            let Some(device) = oif.and_then(|i| devices.iter().find(|(d, _)| *d == i)) else {
                continue;
            };
            if destination.as_ref().is_some_and(link_local)
                || destination.is_some_and(|d| d.is_multicast())
            {
                continue;
            }
            out.push(Route {
                destination: destination
                    .map(|d| format!("{d}/{}", m.header.destination_prefix_length))
                    .unwrap_or_default(),
                gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: device.1.clone(),
                source: source.map(|s| s.to_string()).unwrap_or_default(),
                ipv6,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

async fn redirect(handle: &Handle, from: u32, to: u32) -> anyhow::Result<()> {
    handle
        .qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .context("adding an ingress qdisc")?;
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(0xffff_0000)
        .protocol(ETH_P_ALL)
        .redirect(to)
        .context("building a redirect filter")?
        .execute()
        .await
        .context("adding a redirect filter (tc mirred)")?;
    Ok(())
}

async fn remove_ingress(handle: &Handle, index: u32) -> anyhow::Result<()> {
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(0xffff_0000);
    req.execute().await.context("removing an ingress qdisc")?;
    Ok(())
}

/// Joins each NIC of the namespace at `netns` to a new tap and describes the NICs for the
/// guest. None when the namespace has no NIC (the guest then has loopback only).
pub async fn attach(netns: &Path) -> anyhow::Result<Option<PodNetwork>> {
    let at = netns.to_owned();
    let attached = netns::run_in(netns, move |handle| async move {
        let mut joined = Vec::new();
        let mut taps = Vec::new();
        let mut interfaces = Vec::new();
        let found = nics(&handle).await?;
        anyhow::ensure!(
            found.len() <= husk_hypervisor::config::MAX_NICS,
            "the pod's network namespace has {} devices; husk gives a VM at most {}",
            found.len(),
            husk_hypervisor::config::MAX_NICS
        );
        let result = async {
            for (n, link) in found.iter().enumerate() {
                let name = attr_name(link).unwrap_or_default().to_owned();
                let index = link.header.index;
                let mac = link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Address(m) => Some(husk_protocols::mac::format(m)),
                        _ => None,
                    })
                    .unwrap_or_default();
                let mtu = link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(1500);
                let tap = tap_name(n);
                let fd = tap::open(&tap)?;
                taps.push(Arc::new(fd));
                let tap_index = handle
                    .link()
                    .get()
                    .match_name(tap.clone())
                    .execute()
                    .try_next()
                    .await
                    .context("finding the new tap device")?
                    .map(|l| l.header.index)
                    .context("the new tap device vanished")?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
                    .execute()
                    .await
                    .with_context(|| format!("bringing {tap} up"))?;
                joined.push(Joined {
                    veth: name.clone(),
                    veth_index: index,
                    tap,
                    mac: mac.clone(),
                });
                redirect(&handle, index, tap_index)
                    .await
                    .with_context(|| format!("redirecting {name} to its tap"))?;
                redirect(&handle, tap_index, index)
                    .await
                    .with_context(|| format!("redirecting the tap to {name}"))?;
                interfaces.push(Interface {
                    name: name.clone(),
                    mac,
                    mtu,
                    addresses: addresses(&handle, index).await?,
                    ..Default::default()
                });
            }
            let devices: Vec<(u32, String)> = joined
                .iter()
                .map(|j| (j.veth_index, j.veth.clone()))
                .collect();
            routes(&handle, &devices).await
        }
        .await;
        match result {
            Ok(routes) => Ok((joined, taps, interfaces, routes)),
            Err(e) => {
                // Undo what was added; the taps go with their fds.
                for j in &joined {
                    let _ = remove_ingress(&handle, j.veth_index).await;
                }
                Err(e)
            }
        }
    })
    .await
    .with_context(|| {
        format!(
            "attaching the pod to its network namespace {}",
            at.display()
        )
    })?;
    let (joined, taps, interfaces, routes) = attached;
    if joined.is_empty() {
        return Ok(None);
    }
    Ok(Some(PodNetwork {
        record: Record { netns: at, joined },
        taps,
        interfaces,
        routes,
    }))
}

/// Removes the tc rules an attachment added on the veths (the taps vanish with their fds).
/// A namespace already gone (CNI tore it down) leaves nothing to do.
async fn detach(record: &Record) {
    if !record.netns.exists() {
        return;
    }
    let joined = record.joined.clone();
    let done = netns::run_in(&record.netns, move |handle| async move {
        for j in &joined {
            // The veth may have been moved or deleted by CNI meanwhile: check it is the same.
            let link = handle
                .link()
                .get()
                .match_index(j.veth_index)
                .execute()
                .try_next()
                .await
                .ok()
                .flatten();
            if link.as_ref().and_then(attr_name) == Some(j.veth.as_str()) {
                remove_ingress(&handle, j.veth_index).await?;
            }
            // A tap still here (its hypervisor not yet reaped) is removed outright.
            if let Ok(Some(tap)) = handle
                .link()
                .get()
                .match_name(j.tap.clone())
                .execute()
                .try_next()
                .await
            {
                let _ = handle.link().del(tap.header.index).execute().await;
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = done {
        tracing::warn!(error = %format!("{e:#}"), "detaching the pod's network");
    }
}

/// Detaches and removes the record saved in `bundle`.
pub async fn forget(bundle: &Path, record: &Record) {
    detach(record).await;
    let _ = std::fs::remove_file(record_path(bundle));
}

/// Where an attachment is recorded in the pod's first bundle.
fn record_path(bundle: &Path) -> PathBuf {
    bundle.join("network.json")
}

/// Saves `record` for `delete`.
pub fn save(bundle: &Path, record: &Record) -> anyhow::Result<()> {
    let text = serde_json::to_string(record)?;
    std::fs::write(record_path(bundle), text).context("recording the pod's network")
}

/// Reads a saved record, if any.
pub fn load(bundle: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(bundle)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_names_the_namespace_to_join() {
        let spec = serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}
        ]}});
        assert_eq!(netns_path(&spec), Some("/var/run/netns/cni-1".into()));
        let new = serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(netns_path(&new), None);
        assert_eq!(netns_path(&serde_json::json!({})), None);
    }

    #[test]
    fn names_and_addresses() {
        assert_eq!(tap_name(0), "husk_tap0");
        assert!(link_local(&"fe80::1".parse().unwrap()));
        assert!(!link_local(&"fd00::1".parse().unwrap()));
        assert!(!link_local(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            netns: "/var/run/netns/x".into(),
            joined: vec![Joined {
                veth: "eth0".into(),
                veth_index: 3,
                tap: "husk_tap0".into(),
                mac: "02:00:00:00:00:01".into(),
            }],
        };
        save(dir.path(), &r).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.joined[0].veth_index, 3);
        assert!(load(&dir.path().join("none")).is_none());
    }
}
