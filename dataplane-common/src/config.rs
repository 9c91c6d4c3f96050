//! Node-wide settings (`CONFIG`, a one-element array).

use crate::{assert_no_padding, user_pod, Ipv4};

/// How pod traffic leaving the VPC is source-NATed
/// (`AWS_VPC_K8S_CNI_EXTERNALSNAT`, `AWS_VPC_K8S_CNI_RANDOMIZESNAT`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatMode {
    /// External SNAT: pod source IPs leave the node unchanged.
    Off = 0,
    /// `prng` (default): random port, like `--random-fully`.
    Random = 1,
    /// `hashrandom`: port derived from a hash of the flow, like `--random`.
    Hash = 2,
    /// `none`: keep the pod's source port when it is free.
    Sequential = 3,
}

impl SnatMode {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Off),
            1 => Some(Self::Random),
            2 => Some(Self::Hash),
            3 => Some(Self::Sequential),
            _ => None,
        }
    }
}

/// `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The primary ENI's primary IPv4: the SNAT source.
    pub node_ip: Ipv4,
    /// ifindex of the primary ENI; 0 = not configured yet (data path passes everything).
    pub primary_eni_ifindex: u32,
    /// SNAT port range, inclusive, host order.
    pub port_min: u16,
    pub port_max: u16,
    /// [`SnatMode`] as u8.
    pub snat_mode: u8,
    /// `CFG_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}
assert_no_padding!(Config {
    node_ip: Ipv4,
    primary_eni_ifindex: u32,
    port_min: u16,
    port_max: u16,
    snat_mode: u8,
    flags: u8,
    _pad: [u8; 2],
});

/// Deliver into pods with plain `bpf_redirect` to the host veth instead of
/// `bpf_redirect_peer` (for nodes where another agent runs TC programs there).
pub const CFG_F_REDIRECT_VIA_HOST_VETH: u8 = 1 << 0;
/// `POD_SECURITY_GROUP_ENFORCING_MODE=standard`.
pub const CFG_F_SG_STANDARD: u8 = 1 << 1;
/// A migration from aws-node is adopting pods: a packet from a pod veth
/// whose source is in no `PODS` entry may be from a pod being adopted
/// (its programs attached, its entry not yet written), which the legacy
/// plumbing still carries, so it goes to the stack instead of being
/// dropped as spoofed.
pub const CFG_F_ADOPTING: u8 = 1 << 2;

/// Default SNAT port range (Linux's ephemeral range is 32768–60999; the
/// agent carves out what host sockets use).
pub const DEFAULT_PORT_MIN: u16 = 32768;
pub const DEFAULT_PORT_MAX: u16 = 65535;

impl Default for Config {
    fn default() -> Self {
        Self {
            node_ip: [0; 4],
            primary_eni_ifindex: 0,
            port_min: DEFAULT_PORT_MIN,
            port_max: DEFAULT_PORT_MAX,
            snat_mode: SnatMode::Random as u8,
            flags: 0,
            _pad: [0; 2],
        }
    }
}

impl Config {
    pub const fn snat_mode(&self) -> Option<SnatMode> {
        SnatMode::from_u8(self.snat_mode)
    }
}

user_pod!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_random_snat_over_the_upper_port_half() {
        let c = Config::default();
        assert_eq!(c.snat_mode(), Some(SnatMode::Random));
        assert_eq!((c.port_min, c.port_max), (32768, 65535));
        assert_eq!(core::mem::size_of::<Config>(), 16);
    }

    #[test]
    fn snat_mode_rejects_unknown_values() {
        for m in [
            SnatMode::Off,
            SnatMode::Random,
            SnatMode::Hash,
            SnatMode::Sequential,
        ] {
            assert_eq!(SnatMode::from_u8(m as u8), Some(m));
        }
        assert_eq!(SnatMode::from_u8(9), None);
    }
}
