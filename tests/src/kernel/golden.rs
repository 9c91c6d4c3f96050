//! Golden-packet harness: one program, one packet, through the real
//! verifier-checked program with `BPF_PROG_TEST_RUN`.
//!
//! Programs run in a namespace of the harness's own. `BPF_PROG_TEST_RUN`
//! runs a packet as received on the device whose ifindex the context names
//! (loopback when none), looked up in the caller's namespace, and
//! `bpf_check_mtu` looks devices up there too: a test makes the devices its
//! programs must see in [`Golden::netns`], and a pod's packet is run as
//! received on that pod's host veth (a veth made at its ifindex).

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Mutex};

use aya::programs::{TestRun, TestRunOptions};
use dataplane_common::{CtEntry, CtKey, Hook, Stats, VerdictRecord};
use trunkline_agent::dataplane::{CtMaps, Dataplane, FragMaps, MapOwner, NodeMaps, PodMaps};

use crate::{kernel::skbuff::SkBuff, topology::netns::Netns};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// What a program did with a packet.
#[derive(Debug)]
pub struct Outcome {
    /// The TC action the program returned.
    pub action: i32,
    /// The verdict record the program left in `cb` (incl. redirect target).
    pub verdict: Option<VerdictRecord>,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// The VLAN id the program pushed (0: none); see `CB_VLAN_PUSHED`.
    pub vlan_pushed: u32,
    /// `cb` as the program left it, for the next program on the packet's
    /// way ([`Golden::run_after`]).
    pub cb: [u32; 5],
    /// Time per run as measured by the kernel.
    pub duration_ns: u64,
}

/// The program handed the packet to the stack (verdict record `Pass`)
/// without changing a byte of it.
pub fn assert_passed_unchanged(out: &Outcome, packet: &[u8]) {
    assert_eq!(
        (out.action, out.verdict),
        (TC_ACT_OK, Some(VerdictRecord::Pass)),
        "{out:?}"
    );
    assert_eq!(out.data, packet, "a passed packet must leave unchanged");
}

/// The program redirected the packet to `ifindex`, the way `how` says
/// (`dataplane_common::verdict::REDIRECT_*`).
pub fn assert_redirected(out: &Outcome, ifindex: u32, how: u32) {
    assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Redirect { ifindex, how }),
        "{out:?}"
    );
}

/// A loaded object with private (unpinned) maps, written and read through
/// the agent's own map owners, taken out of `dataplane` at load.
pub struct Golden {
    pub dataplane: Dataplane,
    pub pod_maps: PodMaps,
    pub node_maps: NodeMaps,
    pub ct_maps: CtMaps,
    pub frag_maps: FragMaps,
    /// Where the programs run; deleted (with its devices) on drop.
    net: Netns,
    /// Ifindexes of the stand-in host veths made in `net` so far.
    veths: Mutex<BTreeSet<u32>>,
}

impl Golden {
    pub fn load() -> Self {
        Self::load_sized(&[])
    }

    /// With some maps resized (benchmarks of full tables).
    pub fn load_sized(sizes: &[(&str, u32)]) -> Self {
        let bytes = crate::kernel::object::bytes();
        let mut dataplane =
            Dataplane::load_unpinned_sized(&bytes, sizes).expect("loading the eBPF object");
        Self {
            pod_maps: PodMaps::take_from(&mut dataplane).expect("PODS, VLANS"),
            node_maps: NodeMaps::take_from(&mut dataplane).expect("the node maps"),
            ct_maps: CtMaps::take_from(&mut dataplane).expect("CT, SNAT_REV"),
            frag_maps: FragMaps::take_from(&mut dataplane).expect("FRAG_PORTS, FRAG_HELD"),
            dataplane,
            net: Netns::new("golden").expect("the golden namespace"),
            veths: Mutex::new(BTreeSet::new()),
        }
    }

    /// The namespace the programs run in: devices a program must find
    /// (an ENI for `bpf_check_mtu`) are made here.
    pub fn netns(&self) -> &Netns {
        &self.net
    }

    /// `CT[key]`.
    pub fn ct(&self, key: &CtKey) -> Option<CtEntry> {
        ct_entry(&self.ct_maps, key)
    }

    /// `SNAT_REV[reply]`.
    pub fn snat_rev(&self, reply: &CtKey) -> Option<CtKey> {
        snat_rev(&self.ct_maps, reply)
    }

    /// Number of entries in `CT`.
    pub fn ct_len(&self) -> usize {
        self.ct_maps.ct_entries().expect("reading CT").len()
    }

    /// Runs `hook`'s program once on `packet`. For `from_pod` the packet is
    /// received on the host veth of the pod that owns its source address
    /// (on loopback when no pod does); [`Self::run_on`] names the device.
    pub fn run(&self, hook: Hook, packet: &[u8]) -> Outcome {
        self.run_repeat(hook, packet, 1)
    }

    /// Runs `hook`'s program `repeat` times on `packet` (for cost
    /// measurement); the outcome is the last run's.
    pub fn run_repeat(&self, hook: Hook, packet: &[u8], repeat: u32) -> Outcome {
        let mut ctx = SkBuff::default();
        if hook == Hook::FromPod {
            ctx.ifindex = self.sender_veth(packet).unwrap_or(0);
        }
        self.run_ctx(hook, packet, repeat, ctx)
    }

    /// Runs `hook`'s program once on `packet` as received on a host veth
    /// at `ifindex` (a pod sending with an address that may not be its own).
    pub fn run_on(&self, hook: Hook, packet: &[u8], ifindex: u32) -> Outcome {
        let ctx = SkBuff {
            ifindex,
            ..SkBuff::default()
        };
        self.run_ctx(hook, packet, 1, ctx)
    }

    /// The host veth of the pod whose address is `packet`'s IPv4 source.
    fn sender_veth(&self, packet: &[u8]) -> Option<u32> {
        let ip = etherparse::SlicedPacket::from_ethernet(packet).ok()?;
        let Some(etherparse::NetSlice::Ipv4(v4)) = ip.net else {
            return None;
        };
        let src = Ipv4Addr::from(v4.header().source());
        let pod = self.pod_maps.pod(src).expect("reading PODS")?;
        Some(pod.host_ifindex)
    }

    /// Makes a veth at `ifindex` in the namespace (once), standing for a
    /// pod's host veth, so that `BPF_PROG_TEST_RUN` receives on it. A
    /// device the test made there at that index already serves.
    fn ensure_veth(&self, ifindex: u32) {
        let mut made = self.veths.lock().expect("veths lock");
        if made.contains(&ifindex) {
            return;
        }
        // A veth (the kernels here have no dummy module); its peer takes
        // an index far from any the tests give their pods.
        let (name, index) = (format!("gv{ifindex}"), ifindex.to_string());
        let (peer, peer_index) = (format!("gv{ifindex}p"), (ifindex + 100_000).to_string());
        let added = self.net.ip(&[
            "link",
            "add",
            &name,
            "index",
            &index,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "index",
            &peer_index,
        ]);
        if let Err(e) = added {
            let links = self
                .net
                .exec_ok("ip", &["-o", "link", "show"])
                .expect("ip link");
            assert!(
                links
                    .lines()
                    .any(|l| l.starts_with(&format!("{ifindex}: "))),
                "no device at ifindex {ifindex} and none could be made: {e:#}"
            );
        }
        made.insert(ifindex);
    }

    /// Runs `hook`'s program on `packet` as one of our own programs
    /// redirected it there (the verdict record `verdict::apply` leaves in
    /// `cb`, here a redirect out of ENI `ifindex` towards its gateway),
    /// rather than as the host stack routed it (`cb` zeroed).
    pub fn run_redirected(&self, hook: Hook, packet: &[u8], ifindex: u32) -> Outcome {
        use dataplane_common::verdict::{
            CB_MAGIC, CB_MAGIC_VALUE, CB_REASON, CB_TARGET_IFINDEX, CB_VERDICT, REDIRECT_NEIGH,
            VERDICT_REDIRECT,
        };
        let mut ctx = SkBuff::default();
        ctx.cb[CB_VERDICT] = VERDICT_REDIRECT;
        ctx.cb[CB_TARGET_IFINDEX] = ifindex;
        ctx.cb[CB_REASON] = REDIRECT_NEIGH;
        ctx.cb[CB_MAGIC] = CB_MAGIC_VALUE;
        self.run_ctx(hook, packet, 1, ctx)
    }

    /// Runs `hook`'s program on what `earlier` left (its packet and `cb`)
    /// as the kernel hands a redirected packet to the next hook, on
    /// `ifindex` (the redirect's target).
    pub fn run_after(&self, hook: Hook, earlier: &Outcome, ifindex: u32) -> Outcome {
        self.run_after_repeat(hook, earlier, ifindex, 1)
    }

    /// [`Self::run_after`] `repeat` times (for cost measurement).
    pub fn run_after_repeat(
        &self,
        hook: Hook,
        earlier: &Outcome,
        ifindex: u32,
        repeat: u32,
    ) -> Outcome {
        let ctx = SkBuff {
            cb: earlier.cb,
            ifindex,
            ..SkBuff::default()
        };
        self.run_ctx(hook, &earlier.data, repeat, ctx)
    }

    fn run_ctx(&self, hook: Hook, packet: &[u8], repeat: u32, ctx_in: SkBuff) -> Outcome {
        if ctx_in.ifindex > 1 {
            self.ensure_veth(ctx_in.ifindex);
        }
        let prog = self.dataplane.program(hook).expect("program");
        let mut ctx_out = [0u8; std::mem::size_of::<SkBuff>()];
        // Room for growth (a VLAN push adds 4 bytes).
        let mut data_out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(ctx_in.as_bytes()),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..Default::default()
        };
        let res = self
            .net
            .run_in(|| prog.test_run(opts))
            .expect("BPF_PROG_TEST_RUN");
        data_out.truncate(res.data_size_out as usize);
        let ctx = SkBuff::from_bytes(&ctx_out).expect("ctx_out");
        Outcome {
            action: res.return_value as i32,
            verdict: VerdictRecord::from_cb(&ctx.cb),
            data: data_out,
            vlan_pushed: ctx.cb[dataplane_common::verdict::CB_VLAN_PUSHED],
            cb: ctx.cb,
            duration_ns: res.duration.as_nanos() as u64,
        }
    }

    /// Counters of `hook`, summed over CPUs.
    pub fn stats(&self, hook: Hook) -> Stats {
        *self.dataplane.stats().expect("reading STATS").hook(hook)
    }

    pub fn reset_stats(&mut self) {
        self.dataplane.reset_stats().expect("resetting STATS");
    }
}

/// `CT[key]`.
pub fn ct_entry(maps: &CtMaps, key: &CtKey) -> Option<CtEntry> {
    maps.flow(key).expect("reading CT")
}

/// `SNAT_REV[reply]`.
pub fn snat_rev(maps: &CtMaps, reply: &CtKey) -> Option<CtKey> {
    maps.reverse(reply).expect("reading SNAT_REV")
}

/// A node's maps for SNAT golden tests and cost measurement: node IP
/// 192.168.31.166, VPC 192.168.0.0/16, an excluded /24, three pods (plain,
/// branch, SNAT-exempt).
pub mod snat {
    use dataplane_common::{
        maps::{NO_SNAT_EXCLUDED, NO_SNAT_VPC_CIDR, PASS_SERVICE_CIDR},
        node::POD_F_SNAT_EXEMPT,
        Config, EniEntry, EniRole, PodEntry, SnatMode,
    };

    use ipnet::Ipv4Net;
    use trunkline_agent::dataplane::PodMaps;

    use super::Golden;
    use crate::kernel::packets::{HOST_VETH_MAC, POD_MAC};

    pub const NODE: [u8; 4] = [192, 168, 31, 166];
    pub const POD: [u8; 4] = [192, 168, 31, 170];
    pub const BRANCH_POD: [u8; 4] = [192, 168, 26, 162];
    pub const EXEMPT_POD: [u8; 4] = [192, 168, 31, 171];
    pub const INET: [u8; 4] = [203, 0, 113, 10];
    pub const PEER: [u8; 4] = [192, 168, 64, 10];
    pub const EXCLUDED: [u8; 4] = [198, 51, 100, 7];
    pub const ROUTER: [u8; 4] = [198, 18, 0, 1];
    pub const HOST_IFINDEX: u32 = 42;
    pub const SECONDARY_HOST_IFINDEX: u32 = 43;
    pub const BRANCH_HOST_IFINDEX: u32 = 44;
    pub const TRUNK: u32 = 88;
    pub const BRANCH_VLAN: u16 = 1;
    pub const BRANCH_MAC: [u8; 6] = [2, 0xb0, 1, 0x6c, 0xb5, 0x79];
    pub const BRANCH_POD_MAC: [u8; 6] = [0x0a, 0x58, 0xc0, 0xa8, 0x1a, 0xa2];
    pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xfe, 0xfe, 0x01];
    pub const SECONDARY_POD: [u8; 4] = [192, 168, 40, 20];
    pub const SECONDARY_POD_MAC: [u8; 6] = [0x0a, 0x58, 0xc0, 0xa8, 0x28, 0x14];
    pub const SERVICE_NET: [u8; 4] = [10, 100, 0, 0];
    /// BPF_PROG_TEST_RUN runs the program on the loopback device.
    pub const LO: u32 = 1;
    pub const SECONDARY_ENI: u32 = 77;

    pub fn node(mode: SnatMode, ports: (u16, u16)) -> Golden {
        node_on(mode, ports, LO)
    }

    /// A node whose primary ENI is `primary` (the packet runs on `LO`).
    pub fn node_on(mode: SnatMode, ports: (u16, u16), primary: u32) -> Golden {
        configure(Golden::load(), mode, ports, primary)
    }

    /// The same node maps written into an already loaded `g`, the way the
    /// agent writes them (its `NodeMaps` and `PodMaps`).
    pub fn configure(
        mut g: Golden,
        mode: SnatMode,
        (port_min, port_max): (u16, u16),
        primary: u32,
    ) -> Golden {
        let cidr = |ip: [u8; 4], len: u8| Ipv4Net::new(ip.into(), len).expect("a CIDR");
        let (node, pods) = (&mut g.node_maps, &mut g.pod_maps);
        node.put_config(&Config {
            node_ip: NODE,
            primary_eni_ifindex: primary,
            port_min,
            port_max,
            snat_mode: mode as u8,
            ..Config::default()
        })
        .expect("CONFIG");
        node.put_eni(
            primary,
            &EniEntry {
                role: EniRole::Primary as u32,
                primary_ip: NODE,
                gateway_ip: [192, 168, 0, 1],
                ..Default::default()
            },
        )
        .expect("ENIS");
        let pod = PodEntry {
            host_ifindex: HOST_IFINDEX,
            eni_ifindex: primary,
            mac: POD_MAC,
            host_mac: HOST_VETH_MAC,
            ..Default::default()
        };
        let put_pod = |pods: &mut PodMaps, ip: [u8; 4], entry: PodEntry| {
            pods.put_pod(ip.into(), &entry).expect("PODS");
        };
        put_pod(pods, POD, pod);
        put_pod(
            pods,
            BRANCH_POD,
            PodEntry {
                host_ifindex: BRANCH_HOST_IFINDEX,
                eni_ifindex: TRUNK,
                mac: BRANCH_POD_MAC,
                vlan_id: BRANCH_VLAN,
                branch_mac: BRANCH_MAC,
                ..pod
            },
        );
        node.put_eni(
            TRUNK,
            &EniEntry {
                role: EniRole::Trunk as u32,
                gateway_ip: [192, 168, 0, 1],
                gateway_mac: GATEWAY_MAC,
                ..Default::default()
            },
        )
        .expect("ENIS");
        // Tagged frames arrive on the trunk; BPF_PROG_TEST_RUN runs on LO.
        for trunk in [TRUNK, LO] {
            pods.put_vlan(trunk, BRANCH_VLAN, BRANCH_POD.into())
                .expect("VLANS");
        }
        if primary != SECONDARY_ENI {
            node.put_eni(
                SECONDARY_ENI,
                &EniEntry {
                    role: EniRole::Secondary as u32,
                    gateway_ip: [192, 168, 32, 1],
                    ..Default::default()
                },
            )
            .expect("ENIS");
        }
        put_pod(
            pods,
            SECONDARY_POD,
            PodEntry {
                host_ifindex: SECONDARY_HOST_IFINDEX,
                eni_ifindex: SECONDARY_ENI,
                mac: SECONDARY_POD_MAC,
                ..pod
            },
        );
        node.sync_service_cidrs(&[(cidr(SERVICE_NET, 16), PASS_SERVICE_CIDR)])
            .expect("SERVICE_CIDRS");
        put_pod(
            pods,
            EXEMPT_POD,
            PodEntry {
                flags: POD_F_SNAT_EXEMPT,
                ..pod
            },
        );
        node.sync_no_snat(&[
            (cidr([192, 168, 0, 0], 16), NO_SNAT_VPC_CIDR),
            (cidr([198, 51, 100, 0], 24), NO_SNAT_EXCLUDED),
        ])
        .expect("NO_SNAT");
        g
    }
}
