//! What the agent tells the data path about pods and ENIs (`PODS`, `ENIS`).

use crate::{assert_no_padding, user_pod, Ipv4, Mac};

/// `PODS` value, keyed by the pod's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    /// ifindex of the pod's host veth (in the node namespace).
    pub host_ifindex: u32,
    /// ifindex of the ENI that owns the pod's IP (the trunk for branch pods).
    pub eni_ifindex: u32,
    /// MAC of the pod's `eth0` (the peer of the host veth).
    pub mac: Mac,
    /// MAC of the host veth: the source MAC of frames delivered into the pod.
    pub host_mac: Mac,
    /// Branch ENI MAC (security-group pods); zero otherwise.
    pub branch_mac: Mac,
    /// 802.1Q VLAN id of the branch ENI; 0 = not a branch pod.
    pub vlan_id: u16,
    /// `POD_F_*` bits.
    pub flags: u16,
    pub _pad: [u8; 2],
}
assert_no_padding!(PodEntry {
    host_ifindex: u32,
    eni_ifindex: u32,
    mac: Mac,
    host_mac: Mac,
    branch_mac: Mac,
    vlan_id: u16,
    flags: u16,
    _pad: [u8; 2],
});

/// Branch pod in strict security-group mode: all its traffic goes through the trunk.
pub const POD_F_STRICT: u16 = 1 << 0;
/// Never SNAT this pod's traffic.
pub const POD_F_SNAT_EXEMPT: u16 = 1 << 1;

/// The role an ENI plays on the node.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EniRole {
    Primary = 1,
    Secondary = 2,
    Trunk = 3,
}

impl EniRole {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Primary),
            2 => Some(Self::Secondary),
            3 => Some(Self::Trunk),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
            Self::Trunk => "trunk",
        }
    }
}

/// `ENIS` value, keyed by the ENI's ifindex in the node namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EniEntry {
    /// [`EniRole`] as u32.
    pub role: u32,
    /// The ENI's own primary private IPv4.
    pub primary_ip: Ipv4,
    /// The subnet gateway (subnet base + 1): next hop for `bpf_redirect_neigh`.
    pub gateway_ip: Ipv4,
    /// The ENI's MAC.
    pub mac: Mac,
    /// The gateway's MAC where known (tagged traffic on the trunk needs it); zero otherwise.
    pub gateway_mac: Mac,
}
assert_no_padding!(EniEntry {
    role: u32,
    primary_ip: Ipv4,
    gateway_ip: Ipv4,
    mac: Mac,
    gateway_mac: Mac,
});

impl EniEntry {
    pub const fn role(&self) -> Option<EniRole> {
        EniRole::from_u32(self.role)
    }
}

/// `VLANS` key: a tagged frame arriving on a trunk ENI belongs to the
/// branch ENI with this VLAN id; the value is that branch pod's IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VlanKey {
    pub trunk_ifindex: u32,
    pub vlan_id: u16,
    pub _pad: u16,
}
assert_no_padding!(VlanKey {
    trunk_ifindex: u32,
    vlan_id: u16,
    _pad: u16,
});

impl VlanKey {
    pub const fn new(trunk_ifindex: u32, vlan_id: u16) -> Self {
        Self {
            trunk_ifindex,
            vlan_id,
            _pad: 0,
        }
    }
}

user_pod!(PodEntry, EniEntry, VlanKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_stable() {
        // The pinned maps outlive the agent: a size change is a format change.
        assert_eq!(core::mem::size_of::<PodEntry>(), 32);
        assert_eq!(core::mem::size_of::<EniEntry>(), 24);
    }

    #[test]
    fn eni_role_round_trips() {
        for role in [EniRole::Primary, EniRole::Secondary, EniRole::Trunk] {
            assert_eq!(EniRole::from_u32(role as u32), Some(role));
        }
        assert_eq!(EniRole::from_u32(0), None);
        assert_eq!(EniRole::from_u32(4), None);
        let e = EniEntry {
            role: EniRole::Trunk as u32,
            ..Default::default()
        };
        assert_eq!(e.role().map(EniRole::name), Some("trunk"));
    }
}
