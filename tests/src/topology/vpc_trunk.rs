//! EC2's side of the trunk ENI in the simulated VPC: the test-only
//! `trunkline-testvpc` program on the VPC end of the node's trunk link.
//! Branch ENIs are registered as the VPC resource controller would create
//! them; tagged frames that do not match one are dropped and counted.

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
    Ebpf,
};
use dataplane_common::{
    testvpc::{BranchEni, TrunkStats, BRANCH_BY_IP, BRANCH_BY_VLAN, TRUNK_STATS},
    Ipv4,
};

use crate::topology::netns::Netns;

pub struct VpcTrunk {
    ebpf: Ebpf,
}

impl VpcTrunk {
    /// Loads the fixture and attaches it to `iface` (the VPC end of the
    /// trunk link) in `vpc`. Detached when dropped.
    pub fn attach(vpc: &Netns, iface: &str) -> Result<Self> {
        let mut ebpf = Ebpf::load(&crate::kernel::object::testvpc_bytes())
            .context("loading trunkline-testvpc")?;
        vpc.run_in(|| -> Result<()> {
            // Below Linux 6.6 (no TCX) aya attaches through a clsact qdisc,
            // which must exist first; one that is already there is fine.
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            for (name, dir) in [
                ("vpc_trunk_in", TcAttachType::Ingress),
                ("vpc_trunk_out", TcAttachType::Egress),
            ] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .context(name)?
                    .try_into()
                    .context(name)?;
                prog.load().with_context(|| format!("loading {name}"))?;
                prog.attach(iface, dir)
                    .with_context(|| format!("attaching {name} to {iface}"))?;
            }
            Ok(())
        })?;
        Ok(Self { ebpf })
    }

    /// Registers a branch ENI (what the VPC resource controller creates).
    pub fn register(&mut self, branch: BranchEni) -> Result<()> {
        let mut by_vlan: HashMap<&mut MapData, u16, BranchEni> =
            HashMap::try_from(self.ebpf.map_mut(BRANCH_BY_VLAN).context(BRANCH_BY_VLAN)?)?;
        by_vlan.insert(branch.vlan_id, branch, 0)?;
        let mut by_ip: HashMap<&mut MapData, Ipv4, u16> =
            HashMap::try_from(self.ebpf.map_mut(BRANCH_BY_IP).context(BRANCH_BY_IP)?)?;
        by_ip.insert(branch.ip, branch.vlan_id, 0)?;
        Ok(())
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<TrunkStats> {
        let map: PerCpuArray<&MapData, TrunkStats> =
            PerCpuArray::try_from(self.ebpf.map(TRUNK_STATS).context(TRUNK_STATS)?)?;
        let mut total = TrunkStats::default();
        for s in map.get(&0, 0)?.iter() {
            total.accepted += s.accepted;
            total.rejected += s.rejected;
            total.tagged += s.tagged;
        }
        Ok(total)
    }
}
