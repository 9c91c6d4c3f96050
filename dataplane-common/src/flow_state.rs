//! The state of a tracked flow (`CtEntry::state`) and how a packet moves
//! it: netfilter's TCP, UDP and ICMP state machines
//! (`nf_conntrack_proto_{tcp,udp,icmp}.c`), reduced to what a NAT needs to
//! time flows out as netfilter would. The kernel applies these functions to
//! every tracked packet; the agent's GC maps each state to its timeout
//! (the table is in `docs/conntrack.md`). Pure functions, so the host tests
//! them directly and the golden tests only check that the kernel calls them.
//!
//! "orig" is the direction of the flow's opener, "reply" the answerer's.
//!
//! Not modelled: TCP sequence-window checks (netfilter ignores an RST or FIN
//! outside the window; here any RST closes, with netfilter's short 10 s
//! CLOSE timeout, so a forged RST costs at most a reopened port) and the
//! retransmission/unacknowledged timeouts (300 s), which need sequence
//! numbers per direction.

use crate::conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Opened, not answered: TCP SYN_SENT, UDP and ICMP unreplied.
pub const CT_STATE_NEW: u8 = 0;
/// TCP ESTABLISHED; UDP and ICMP replied (UDP not yet a stream).
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// TCP: the answerer's SYN-ACK seen, the opener's ACK not yet.
pub const CT_STATE_SYN_RECV: u8 = 2;
/// TCP: one side sent FIN.
pub const CT_STATE_FIN_WAIT: u8 = 3;
/// TCP: one side's FIN acknowledged by the other, which has not closed.
pub const CT_STATE_CLOSE_WAIT: u8 = 4;
/// TCP: both sides sent FIN, the last ACK not seen.
pub const CT_STATE_LAST_ACK: u8 = 5;
/// TCP: closed by both sides. A new SYN on the tuple reopens the flow.
pub const CT_STATE_TIME_WAIT: u8 = 6;
/// TCP: reset. A new SYN on the tuple reopens the flow.
pub const CT_STATE_CLOSE: u8 = 7;
/// UDP: replied and still active 2 s after it started (netfilter's
/// "assured" stream, which gets the long timeout).
pub const CT_STATE_UDP_STREAM: u8 = 8;

/// `CtEntry::flags`: the opener sent FIN.
pub const CT_F_FIN_ORIG: u8 = 1 << 3;
/// `CtEntry::flags`: the answerer sent FIN.
pub const CT_F_FIN_REPLY: u8 = 1 << 4;
const FINS: u8 = CT_F_FIN_ORIG | CT_F_FIN_REPLY;

/// A replied UDP flow becomes a stream when it still has packets this long
/// after it started (netfilter's `stream_ts`).
pub const UDP_STREAM_AFTER_NS: u64 = 2_000_000_000;

/// The state and flags a TCP packet with `tcp_flags` leaves its flow in.
#[inline(always)]
pub const fn tcp_next(state: u8, flags: u8, tcp_flags: u8, reply: bool) -> (u8, u8) {
    let syn = tcp_flags & TCP_SYN != 0;
    let ack = tcp_flags & TCP_ACK != 0;
    let closed = state == CT_STATE_TIME_WAIT || state == CT_STATE_CLOSE;
    if tcp_flags & TCP_RST != 0 {
        return (CT_STATE_CLOSE, flags);
    }
    if syn {
        return if !reply && !ack && closed {
            // A new connection on a tuple whose last one is over (a pool
            // reusing its source port after TIME_WAIT).
            (CT_STATE_NEW, flags & !FINS)
        } else if reply && ack && state == CT_STATE_NEW {
            (CT_STATE_SYN_RECV, flags)
        } else {
            (state, flags)
        };
    }
    if tcp_flags & TCP_FIN != 0 {
        if closed {
            return (state, flags);
        }
        let f = flags | if reply { CT_F_FIN_REPLY } else { CT_F_FIN_ORIG };
        return if f & FINS == FINS {
            (CT_STATE_LAST_ACK, f)
        } else {
            (CT_STATE_FIN_WAIT, f)
        };
    }
    // An ACK or data.
    let this_side_closed = flags & if reply { CT_F_FIN_REPLY } else { CT_F_FIN_ORIG } != 0;
    let next = match state {
        // An answer without SYN: a flow picked up mid-stream (after an
        // agent restart or an LRU eviction), as netfilter's loose pick-up.
        CT_STATE_NEW if reply => CT_STATE_ESTABLISHED,
        CT_STATE_SYN_RECV if !reply => CT_STATE_ESTABLISHED,
        CT_STATE_FIN_WAIT if !this_side_closed => CT_STATE_CLOSE_WAIT,
        CT_STATE_LAST_ACK => CT_STATE_TIME_WAIT,
        s => s,
    };
    (next, flags)
}

/// The state a UDP packet leaves its flow in; `age_ns` is the time since
/// the flow started.
#[inline(always)]
pub const fn udp_next(state: u8, reply: bool, age_ns: u64) -> u8 {
    match state {
        CT_STATE_NEW if reply => CT_STATE_ESTABLISHED,
        CT_STATE_ESTABLISHED if age_ns > UDP_STREAM_AFTER_NS => CT_STATE_UDP_STREAM,
        s => s,
    }
}

/// The state any other tracked packet (ICMP echo) leaves its flow in.
#[inline(always)]
pub const fn other_next(state: u8, reply: bool) -> u8 {
    if reply && state == CT_STATE_NEW {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// The state's name as `conntrack -L` prints it for `proto`.
pub const fn name(proto: u8, state: u8) -> &'static str {
    match (proto, state) {
        (6, CT_STATE_NEW) => "SYN_SENT",
        (6, CT_STATE_ESTABLISHED) => "ESTABLISHED",
        (6, CT_STATE_SYN_RECV) => "SYN_RECV",
        (6, CT_STATE_FIN_WAIT) => "FIN_WAIT",
        (6, CT_STATE_CLOSE_WAIT) => "CLOSE_WAIT",
        (6, CT_STATE_LAST_ACK) => "LAST_ACK",
        (6, CT_STATE_TIME_WAIT) => "TIME_WAIT",
        (6, CT_STATE_CLOSE) => "CLOSE",
        (6, _) => "NONE",
        (_, CT_STATE_NEW) => "UNREPLIED",
        (17, CT_STATE_UDP_STREAM) => "ASSURED",
        _ => "REPLIED",
    }
}

/// The TCP state `conntrack -L` calls `name` (migration from netfilter).
pub fn tcp_from_name(name: &str) -> Option<u8> {
    Some(match name {
        "SYN_SENT" | "SYN_SENT2" | "NONE" => CT_STATE_NEW,
        "SYN_RECV" => CT_STATE_SYN_RECV,
        "ESTABLISHED" => CT_STATE_ESTABLISHED,
        "FIN_WAIT" => CT_STATE_FIN_WAIT,
        "CLOSE_WAIT" => CT_STATE_CLOSE_WAIT,
        "LAST_ACK" => CT_STATE_LAST_ACK,
        "TIME_WAIT" => CT_STATE_TIME_WAIT,
        "CLOSE" => CT_STATE_CLOSE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FINACK: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;
    const O: bool = false;
    const R: bool = true;

    /// Runs a sequence of (direction, flags) from a new flow.
    fn run(seq: &[(bool, u8)]) -> (u8, u8) {
        seq.iter().fold((CT_STATE_NEW, 0), |(s, f), &(dir, fl)| {
            tcp_next(s, f, fl, dir)
        })
    }

    #[test]
    fn a_handshake_establishes() {
        assert_eq!(run(&[(R, SYNACK)]).0, CT_STATE_SYN_RECV);
        assert_eq!(run(&[(R, SYNACK), (O, ACK)]).0, CT_STATE_ESTABLISHED);
        assert_eq!(
            run(&[(R, SYNACK), (O, ACK), (R, ACK), (O, SYN)]).0,
            CT_STATE_ESTABLISHED,
            "a stray SYN does not reopen a live flow"
        );
    }

    #[test]
    fn an_orderly_close_goes_through_fin_wait_to_time_wait() {
        let est = [(R, SYNACK), (O, ACK)];
        let mut seq = est.to_vec();
        seq.push((O, FINACK));
        assert_eq!(run(&seq), (CT_STATE_FIN_WAIT, CT_F_FIN_ORIG));
        seq.push((R, ACK));
        assert_eq!(run(&seq).0, CT_STATE_CLOSE_WAIT);
        seq.push((R, FINACK));
        assert_eq!(
            run(&seq),
            (CT_STATE_LAST_ACK, CT_F_FIN_ORIG | CT_F_FIN_REPLY)
        );
        seq.push((O, ACK));
        assert_eq!(run(&seq).0, CT_STATE_TIME_WAIT);
        // The closer's own ACKs do not make it CLOSE_WAIT.
        assert_eq!(
            run(&[(R, SYNACK), (O, ACK), (R, FINACK), (R, ACK)]).0,
            CT_STATE_FIN_WAIT
        );
    }

    #[test]
    fn a_syn_after_time_wait_or_reset_reopens_the_tuple() {
        let closed = [(R, SYNACK), (O, ACK), (O, FINACK), (R, FINACK), (O, ACK)];
        let (s, f) = run(&closed);
        assert_eq!(s, CT_STATE_TIME_WAIT);
        assert_eq!(tcp_next(s, f, SYN, O), (CT_STATE_NEW, 0));
        assert_eq!(
            tcp_next(s, f | 1, SYN, O).1,
            1,
            "only the FIN bits are cleared"
        );
        assert_eq!(
            tcp_next(s, f, SYN, R).0,
            CT_STATE_TIME_WAIT,
            "the answerer cannot reopen"
        );
        let (s, f) = run(&[(R, SYNACK), (O, ACK), (R, RST)]);
        assert_eq!(s, CT_STATE_CLOSE);
        assert_eq!(tcp_next(s, f, SYN, O).0, CT_STATE_NEW);
        assert_eq!(tcp_next(s, f, FINACK, O).0, CT_STATE_CLOSE, "a late FIN");
    }

    #[test]
    fn a_reset_closes_from_any_state() {
        for s in 0..=CT_STATE_CLOSE {
            assert_eq!(tcp_next(s, 0, RST | ACK, O).0, CT_STATE_CLOSE);
            assert_eq!(tcp_next(s, 0, RST, R).0, CT_STATE_CLOSE);
        }
    }

    #[test]
    fn an_answer_without_syn_picks_the_flow_up() {
        assert_eq!(run(&[(R, ACK)]).0, CT_STATE_ESTABLISHED);
        assert_eq!(run(&[(O, ACK), (O, ACK)]).0, CT_STATE_NEW);
    }

    #[test]
    fn udp_becomes_a_stream_only_when_active_after_two_seconds() {
        let s = udp_next(CT_STATE_NEW, O, 0);
        assert_eq!(s, CT_STATE_NEW);
        let s = udp_next(s, R, 10_000_000);
        assert_eq!(s, CT_STATE_ESTABLISHED, "one query, one answer");
        assert_eq!(udp_next(s, O, UDP_STREAM_AFTER_NS), CT_STATE_ESTABLISHED);
        assert_eq!(udp_next(s, O, UDP_STREAM_AFTER_NS + 1), CT_STATE_UDP_STREAM);
        assert_eq!(
            udp_next(CT_STATE_NEW, O, 10 * UDP_STREAM_AFTER_NS),
            CT_STATE_NEW,
            "never answered"
        );
    }

    #[test]
    fn names_round_trip_for_tcp() {
        for s in 0..=CT_STATE_CLOSE {
            assert_eq!(tcp_from_name(name(6, s)), Some(s));
        }
        assert_eq!(name(17, CT_STATE_UDP_STREAM), "ASSURED");
        assert_eq!(name(1, CT_STATE_NEW), "UNREPLIED");
        assert_eq!(tcp_from_name("BOGUS"), None);
    }
}
