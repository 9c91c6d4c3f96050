//! Golden packets for fragments out of order: a reply's later fragment
//! that reaches `from_eni` before its first is held; the first then
//! re-injects itself and the held one into the ENI's ingress, where they
//! pass again as fragments in order. The re-injected frames are captured
//! on the device (what the kernel really received), then run through
//! `from_eni` as that second pass. Also: each hook's datagram entry goes
//! once the datagram has passed whole, and the GC expires what a lost
//! fragment leaves behind.

use std::time::{Duration, Instant};

use dataplane_common::{
    fragments::{FRAG_TIMEOUT_NS, HELD_SLOTS},
    Hook, SnatMode,
};
use etherparse::IpNumber;
use socket2::{Domain, Protocol, Socket, Type};
use testbed::kernel::{
    golden::{
        snat::{node, INET, NODE, POD},
        Golden, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    packets::{self, checksum_ok, Flow, L3_OFF},
};
use trunkline_agent::conntrack_gc::now_coarse_ns;

/// The ENI the replies arrive on: a veth the harness makes in its namespace.
const ENI: u32 = 61;
const L4: usize = L3_OFF + 20;
/// Payload bytes per fragment, as a 1500-byte MTU cuts a datagram.
const FRAG_PAYLOAD: usize = 1480;

fn dst_ip(p: &[u8]) -> [u8; 4] {
    p[L3_OFF + 16..L3_OFF + 20].try_into().unwrap()
}

/// A pod's UDP flow to the internet, SNATed: its NAT port.
fn snat_udp(g: &Golden, sport: u16) -> u16 {
    let out = g.run(
        Hook::ToEni,
        &packets::udp(Flow::new(POD, INET, sport, 53), b"query"),
    );
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    u16::from_be_bytes([out.data[L4], out.data[L4 + 1]])
}

/// The answer to that flow, `len` payload bytes in one UDP datagram with
/// IP id `id`, cut into fragments of [`FRAG_PAYLOAD`] bytes (in order).
fn fragmented_answer(nat_port: u16, id: u16, len: usize) -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let whole = packets::udp(Flow::new(INET, NODE, 53, nat_port), &payload);
    let l4 = &whole[L4..];
    l4.chunks(FRAG_PAYLOAD)
        .enumerate()
        .map(|(i, chunk)| {
            let offset_units = (i * FRAG_PAYLOAD / 8) as u16;
            let more = (i + 1) * FRAG_PAYLOAD < l4.len();
            packets::ipv4_fragment(INET, NODE, IpNumber::UDP, id, offset_units, more, chunk)
        })
        .collect()
}

/// Brings the stand-in ENI (made by the first `run_on`) and its peer up:
/// a device that is down refuses re-injected frames.
fn eni_up(g: &Golden) {
    for dev in [format!("gv{ENI}"), format!("gv{ENI}p")] {
        g.netns()
            .ip(&["link", "set", &dev, "up"])
            .expect("setting the stand-in ENI up");
    }
}

/// An AF_PACKET socket for every frame in the harness's namespace.
fn capture(g: &Golden) -> Socket {
    const ETH_P_ALL: u16 = 0x0003;
    let s = g
        .netns()
        .run_in(|| {
            Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
            )
        })
        .expect("AF_PACKET socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// The frames from `INET` to `NODE` the socket saw within a second,
/// at most `want` of them.
fn captured(s: &Socket, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16_384];
    while got.len() < want && Instant::now() < deadline {
        let Ok(n) = s.recv(&mut buf) else {
            continue;
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let frame: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if frame.len() > L4 && frame[L3_OFF + 12..L3_OFF + 16] == INET && dst_ip(&frame) == NODE {
            got.push(frame);
        }
    }
    got
}

#[test]
fn a_later_fragment_before_its_first_waits_and_both_pass_again_in_order() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let port = snat_udp(&g, 5353);
    let frags = fragmented_answer(port, 0x4242, 2000);
    assert_eq!(frags.len(), 2);
    g.reset_stats();

    // The last fragment overtook the first on the wire.
    let out = g.run_on(Hook::FromEni, &frags[1], ENI);
    assert_eq!(
        (out.action, out.verdict),
        (TC_ACT_SHOT, None),
        "held, no drop: {out:?}"
    );
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.consumed, s.frag_held, s.drop), (1, 1, 0), "{s:?}");
    assert_eq!(g.frag_maps.held_keys().expect("FRAG_HELD").len(), 1);

    eni_up(&g);
    let sock = capture(&g);
    let out = g.run_on(Hook::FromEni, &frags[0], ENI);
    assert_eq!(
        out.action, TC_ACT_SHOT,
        "the first's copy is consumed: {out:?}"
    );
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.consumed, s.frag_reinjected, s.drop), (2, 1, 0), "{s:?}");
    assert!(g.frag_maps.held_keys().expect("FRAG_HELD").is_empty());

    // What the ENI received again: the first, then the held one, as sent.
    let again = captured(&sock, 2);
    assert_eq!(again.len(), 2, "two frames re-injected");
    assert_eq!(again[0], frags[0], "the first fragment, untouched");
    assert_eq!(again[1], frags[1], "the held fragment, byte for byte");

    // Their second pass: both translated back and into the pod.
    g.reset_stats();
    for frame in &again {
        let out = g.run_on(Hook::FromEni, frame, ENI);
        assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
        assert_eq!(dst_ip(&out.data), POD);
        assert!(checksum_ok(&out.data[L3_OFF..L4]));
    }
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.rev_snat, s.frag_done, s.consumed), (2, 1, 0), "{s:?}");
    assert!(
        g.frag_maps.datagrams().expect("FRAG_PORTS").is_empty(),
        "the datagram passed whole: its entry is gone"
    );
}

#[test]
fn a_datagram_with_more_early_fragments_than_slots_keeps_the_rest_unknown() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let port = snat_udp(&g, 5354);
    let n = HELD_SLOTS as usize + 2;
    let frags = fragmented_answer(port, 0x4343, FRAG_PAYLOAD * n - 100);
    assert_eq!(frags.len(), n);
    g.reset_stats();
    // Every later fragment comes first, in reverse.
    for f in frags[1..].iter().rev() {
        g.run_on(Hook::FromEni, f, ENI);
    }
    let s = g.stats(Hook::FromEni);
    assert_eq!(
        (s.frag_held, s.frag_unheld),
        (u64::from(HELD_SLOTS), 1),
        "{s:?}"
    );
    // The one that could not be held went to the stack, as before.
    assert_eq!((s.pass, s.drop), (1, 0), "{s:?}");
    assert_eq!(
        g.frag_maps.held_keys().expect("FRAG_HELD").len(),
        HELD_SLOTS as usize
    );
}

#[test]
fn each_hook_keeps_its_own_entry_until_the_datagram_has_passed() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let port = snat_udp(&g, 5355);
    let frags = fragmented_answer(port, 0x4444, 4000);
    assert_eq!(frags.len(), 3);
    g.reset_stats();
    g.run_on(Hook::FromEni, &frags[0], ENI);
    let entries = g.frag_maps.datagrams().expect("FRAG_PORTS");
    assert_eq!(entries.len(), 1);
    let (key, entry) = entries[0];
    assert_eq!(
        (key.hook, key.id, entry.dst_port, entry.seen, entry.total),
        (Hook::FromEni as u8, 0x4444, port, 1480, 0)
    );
    // The last before the middle: the datagram's length is known, not done.
    g.run_on(Hook::FromEni, &frags[2], ENI);
    let (_, entry) = g.frag_maps.datagrams().expect("FRAG_PORTS")[0];
    assert_eq!((entry.seen, entry.total), (1480 + 1048, 4008));
    g.run_on(Hook::FromEni, &frags[1], ENI);
    assert!(g.frag_maps.datagrams().expect("FRAG_PORTS").is_empty());
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.rev_snat, s.frag_done, s.frag_held), (3, 1, 0), "{s:?}");
}

#[test]
fn gc_expires_what_a_lost_fragment_left_after_the_reassembly_timeout() {
    let g = node(SnatMode::Random, (32768, 65535));
    let port = snat_udp(&g, 5356);
    let lost_last = fragmented_answer(port, 0x4545, 2000);
    let lost_first = fragmented_answer(port, 0x4646, 2000);
    g.run_on(Hook::FromEni, &lost_last[0], ENI); // its last never comes
    g.run_on(Hook::FromEni, &lost_first[1], ENI); // its first never comes
    let now = now_coarse_ns();
    let kept = g
        .frag_maps
        .expire(now + 1_000_000_000, Duration::from_nanos(FRAG_TIMEOUT_NS))
        .expect("expire");
    assert_eq!(
        (
            kept.datagrams,
            kept.datagrams_expired,
            kept.held,
            kept.held_expired
        ),
        (1, 0, 1, 0),
        "a second later both still wait"
    );
    let gone = g
        .frag_maps
        .expire(
            now + FRAG_TIMEOUT_NS + 1_000_000_000,
            Duration::from_nanos(FRAG_TIMEOUT_NS),
        )
        .expect("expire");
    assert_eq!(
        (gone.datagrams_expired, gone.held_expired),
        (1, 1),
        "past the timeout both go"
    );
    assert!(g.frag_maps.datagrams().expect("FRAG_PORTS").is_empty());
    assert!(g.frag_maps.held_keys().expect("FRAG_HELD").is_empty());
}
