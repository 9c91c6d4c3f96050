//! `to_pod` (TC egress of each pod's host veth): what the host stack
//! delivers to a pod (NodePort through kube-proxy, kubelet probes, the
//! node's own connections). A new such flow is entered in conntrack as
//! "via stack" so that `from_pod` sends its replies back through the stack
//! (this replaces the CONNMARK 0x80 chain and the fwmark rule). Strict
//! security-group pods accept only what came through their branch ENI.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    conntrack::{CT_F_OPENED_BY_PEER, CT_F_VIA_STACK},
    DropReason, Stats,
};

use crate::{
    conntrack::{self, opens_flow},
    maps,
    parse::Parsed,
    policy::strict_branch,
    verdict::{delivered_by_us, Verdict},
};

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    if delivered_by_us(ctx) {
        return Verdict::Pass;
    }
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    let Some(pod) = maps::pod(&pkt.dst) else {
        return Verdict::Pass;
    };
    if strict_branch(cfg, &pod) {
        return Verdict::Drop(DropReason::StrictNotTrunk);
    }
    // Everything here came through the stack, also from a pod on this node
    // (a ClusterIP DNATed to this pod): its replies must go back through
    // the stack to be un-DNATed. Direct pod-to-pod deliveries never get
    // here (peer redirect), or carry our record (plain redirect).
    let Ok(key) = conntrack::flow_key(pkt) else {
        return Verdict::Pass;
    };
    // Keyed from the pod's side, as `from_pod` will look its replies up.
    // Looked up first: most packets here belong to a tracked flow, and a
    // lookup is cheaper than a refused insert.
    let pod_side = key.reversed();
    if let Some(ct) = conntrack::lookup(&pod_side) {
        // Flows the pod opened were counted where they entered the node.
        if ct.flags & (CT_F_VIA_STACK | CT_F_OPENED_BY_PEER) == CT_F_VIA_STACK | CT_F_OPENED_BY_PEER
        {
            conntrack::seen_to_pod(ct, pkt);
        }
    } else if opens_flow(pkt) {
        match conntrack::start(&pod_side, CT_F_VIA_STACK | CT_F_OPENED_BY_PEER, pkt) {
            Ok(true) => stats.via_stack_new += 1,
            Ok(false) => {}
            // Untracked, the pod's answer would bypass the stack's un-DNAT.
            Err(reason) => return Verdict::Drop(reason),
        }
    }
    Verdict::Pass
}
