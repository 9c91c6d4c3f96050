//! Maps of the test-only "VPC side of the trunk" program
//! (`trunkline-testvpc`), which plays EC2's branch ENIs in the simulated
//! node. Not used by the data path; shared here so that the fixture
//! program and the test bed agree on the layout.

use crate::{assert_no_padding, user_pod, Ipv4, Mac};

/// A branch ENI as EC2 knows it: frames on the trunk with its VLAN id must
/// come from its MAC and IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BranchEni {
    pub mac: Mac,
    pub vlan_id: u16,
    pub ip: Ipv4,
}
assert_no_padding!(BranchEni {
    mac: Mac,
    vlan_id: u16,
    ip: Ipv4,
});

/// `TRUNK_STATS` value (one per CPU, slot 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrunkStats {
    /// Tagged frames that matched a branch ENI and were untagged.
    pub accepted: u64,
    /// Tagged frames whose VLAN, source MAC or source IP did not match.
    pub rejected: u64,
    /// Frames to a branch IP tagged on their way to the node.
    pub tagged: u64,
}

/// Map names in the fixture object.
pub const BRANCH_BY_VLAN: &str = "BRANCH_BY_VLAN";
pub const BRANCH_BY_IP: &str = "BRANCH_BY_IP";
pub const TRUNK_STATS: &str = "TRUNK_STATS";

user_pod!(BranchEni, TrunkStats);
