//! Map names (as pinned under the bpffs root) and sizes, shared by the
//! kernel declarations and the agent so the two cannot drift apart.

pub const PODS: &str = "PODS";
pub const ENIS: &str = "ENIS";
pub const NO_SNAT: &str = "NO_SNAT";
pub const SERVICE_CIDRS: &str = "SERVICE_CIDRS";
pub const CONFIG: &str = "CONFIG";
pub const CT: &str = "CT";
pub const SNAT_REV: &str = "SNAT_REV";
pub const STATS: &str = "STATS";
pub const FRAG_PORTS: &str = "FRAG_PORTS";
pub const FRAG_HELD: &str = "FRAG_HELD";
pub const FRAG_SCRATCH: &str = "FRAG_SCRATCH";
pub const VLANS: &str = "VLANS";

/// Every map the object declares, in the order the agent pins them.
pub const ALL: [&str; 12] = [
    PODS,
    ENIS,
    NO_SNAT,
    SERVICE_CIDRS,
    CONFIG,
    CT,
    SNAT_REV,
    STATS,
    FRAG_PORTS,
    FRAG_HELD,
    FRAG_SCRATCH,
    VLANS,
];

/// Maps earlier versions pinned that this one no longer uses: removed at
/// start, once this version's maps are loaded. `FRAGS` held a datagram's
/// ports without its progress (now `FRAG_PORTS`, a new layout under a new
/// name, since a pinned map keeps the layout it was created with).
pub const RETIRED: [&str; 1] = ["FRAGS"];

pub const PODS_MAX: usize = 1024;
pub const ENIS_MAX: usize = 64;
pub const NO_SNAT_MAX: usize = 4096;
pub const SERVICE_CIDRS_MAX: usize = 256;
pub const CT_MAX: usize = 262_144;
pub const SNAT_REV_MAX: usize = 262_144;
pub const FRAG_PORTS_MAX: usize = 8192;
/// Held frames are 16 KiB each (`fragments::HeldFragment`): 128 of them
/// take 2 MiB, preallocated.
pub const FRAG_HELD_MAX: usize = 128;
pub const VLANS_MAX: usize = 1024;

/// `NO_SNAT` values: why a destination is never SNATed.
pub const NO_SNAT_VPC_CIDR: u32 = 1;
pub const NO_SNAT_EXCLUDED: u32 = 2;

/// `SERVICE_CIDRS` values: why a destination is handed to the host stack.
pub const PASS_SERVICE_CIDR: u32 = 1;
/// An address of the node itself (every ENI's primary IP).
pub const PASS_NODE_LOCAL: u32 = 2;

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_object_name_limit() {
        // BPF_OBJ_NAME_LEN is 16 including the NUL.
        for name in super::ALL {
            assert!(name.len() < 16, "{name}");
        }
    }
}
