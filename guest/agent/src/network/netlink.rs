//! Applies a checked [`NetworkPlan`] to the guest's kernel over rtnetlink: the loopback device
//! up, each NIC (found by MAC address) renamed, sized, addressed and up, then the routes.
//!
//! Owns the netlink conversation. Must never be handed an unchecked plan, nor change a device
//! whose MAC the plan does not name.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{NetworkError, NetworkPlan};

fn netlink(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Netlink { context, source }
}

/// An rtnetlink handle whose connection runs on the current tokio runtime.
fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Maps a route builder's refusal (the plan was checked, so this is a bug) to an error.
fn bad_route<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> NetworkError + '_ {
    move |e| NetworkError::Invalid(format!("route {what}: {e}"))
}

fn mac_of(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the guest's network devices"))
}

/// Brings the loopback device up (every sandbox has one, as runc gives every container).
pub async fn loopback_up() -> Result<(), NetworkError> {
    let handle = connect()?;
    let lo = links(&handle)
        .await?
        .into_iter()
        .find(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"))
        })
        .map(|l| l.header.index);
    if let Some(index) = lo {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink("bringing lo up"))?;
    }
    Ok(())
}

/// Configures the NICs and routes of `plan`.
pub async fn apply(plan: &NetworkPlan) -> Result<(), NetworkError> {
    if plan.nics.is_empty() {
        return Ok(());
    }
    let handle = connect()?;
    let present = links(&handle).await?;
    let mut indexes = Vec::with_capacity(plan.nics.len());
    for nic in &plan.nics {
        let index = present
            .iter()
            .find(|l| mac_of(l) == Some(&nic.mac[..]))
            .map(|l| l.header.index)
            .ok_or_else(|| NetworkError::NoDevice {
                name: nic.name.clone(),
                mac: husk_protocols::mac::format(&nic.mac),
            })?;
        // A device is renamed only while down.
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .down()
                    .name(nic.name.clone())
                    .mtu(nic.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("naming the NIC {:?}", nic.name)))?;
        for (addr, prefix) in &nic.addresses {
            handle
                .address()
                .add(index, *addr, *prefix)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("adding {addr}/{prefix} to {}", nic.name)))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink(format!("bringing {} up", nic.name)))?;
        indexes.push(index);
    }
    for r in &plan.routes {
        let mut b = RouteMessageBuilder::<IpAddr>::new();
        let what = match r.destination {
            Some((addr, prefix)) => format!("{addr}/{prefix}"),
            None => "default".to_owned(),
        };
        let bad = bad_route(&what);
        b = match r.destination {
            Some((addr, prefix)) => b.destination_prefix(addr, prefix).map_err(&bad)?,
            None if r.ipv6 => b
                .destination_prefix(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
                .map_err(&bad)?,
            None => b
                .destination_prefix(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
                .map_err(&bad)?,
        };
        if let Some(gw) = r.gateway {
            b = b.gateway(gw).map_err(&bad)?;
        } else {
            b = b.scope(rtnetlink::packet_route::route::RouteScope::Link);
        }
        if let Some(src) = r.source {
            b = b.pref_source(src).map_err(&bad)?;
        }
        b = b.output_interface(indexes[r.nic]);
        handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("adding the route {what}")))?;
    }
    Ok(())
}
