//! The verdict record a program leaves in `__sk_buff.cb` for whoever runs
//! it next: a tail call, or `BPF_PROG_TEST_RUN`, which returns `cb` in the
//! output context. Without it a golden-packet test could not see which
//! interface a `TC_ACT_REDIRECT` targeted. `cb` is the 20-byte area the
//! kernel reserves for TC BPF programs; nothing after TC reads it.

/// Index of the record's words in `__sk_buff.cb[0..5]`.
pub const CB_VERDICT: usize = 0;
pub const CB_TARGET_IFINDEX: usize = 1;
pub const CB_REASON: usize = 2;
/// Holds [`CB_MAGIC_VALUE`] when the record is ours. The IP layer zeroes
/// these words (IPCB) when a packet goes through the stack, so a record
/// seen at a later TC hook means the packet came straight from us.
pub const CB_MAGIC: usize = 3;
pub const CB_MAGIC_VALUE: u32 = 0x746c_6e6b; // "tlnk"
/// The VLAN id a program pushed (branch pods out of the trunk); the tag
/// itself lives in skb metadata, which BPF_PROG_TEST_RUN does not return.
pub const CB_VLAN_PUSHED: usize = 4;

/// `cb[CB_VERDICT]` values.
pub const VERDICT_PASS: u32 = 1;
pub const VERDICT_REDIRECT: u32 = 2;
pub const VERDICT_DROP: u32 = 3;

/// `cb[CB_REASON]` for redirects: which helper delivered the packet.
pub const REDIRECT_PLAIN: u32 = 1;
pub const REDIRECT_PEER: u32 = 2;
pub const REDIRECT_NEIGH: u32 = 3;
/// Plain redirect into a pod's host veth (the pod is the destination).
pub const REDIRECT_POD_VETH: u32 = 4;
/// Or'ed into `cb[CB_REASON]` of a redirect out of an ENI whose packet is
/// final: `from_pod` made the whole decision (and, on an established SNAT
/// flow, the translation), so that ENI's `to_eni` passes it untouched
/// instead of looking the flow up again. [`VerdictRecord`] leaves it out
/// of `how`; [`decided`] reads it.
pub const REDIRECT_DECIDED: u32 = 1 << 8;

/// Whether `cb` holds a redirect that [`REDIRECT_DECIDED`] marks final.
pub fn decided(cb: &[u32; 5]) -> bool {
    cb[CB_MAGIC] == CB_MAGIC_VALUE
        && cb[CB_VERDICT] == VERDICT_REDIRECT
        && cb[CB_REASON] & REDIRECT_DECIDED != 0
}

/// The decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictRecord {
    Pass,
    Redirect {
        ifindex: u32,
        how: u32,
    },
    /// `reason` is a [`crate::DropReason`] as u32.
    Drop {
        reason: u32,
    },
}

impl VerdictRecord {
    /// Decodes `cb[0..3]`; `None` when the program left no record.
    pub fn from_cb(cb: &[u32; 5]) -> Option<Self> {
        match cb[CB_VERDICT] {
            VERDICT_PASS => Some(Self::Pass),
            VERDICT_REDIRECT => Some(Self::Redirect {
                ifindex: cb[CB_TARGET_IFINDEX],
                how: cb[CB_REASON] & !REDIRECT_DECIDED,
            }),
            VERDICT_DROP => Some(Self::Drop {
                reason: cb[CB_REASON],
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_verdict() {
        assert_eq!(VerdictRecord::from_cb(&[0; 5]), None);
        assert_eq!(
            VerdictRecord::from_cb(&[VERDICT_PASS, 0, 0, 0, 0]),
            Some(VerdictRecord::Pass)
        );
        assert_eq!(
            VerdictRecord::from_cb(&[VERDICT_REDIRECT, 7, REDIRECT_PEER, 0, 0]),
            Some(VerdictRecord::Redirect {
                ifindex: 7,
                how: REDIRECT_PEER
            })
        );
        assert_eq!(
            VerdictRecord::from_cb(&[VERDICT_DROP, 0, 2, 0, 0]),
            Some(VerdictRecord::Drop { reason: 2 })
        );
    }

    #[test]
    fn the_decided_flag_is_not_part_of_how() {
        let cb = [
            VERDICT_REDIRECT,
            7,
            REDIRECT_NEIGH | REDIRECT_DECIDED,
            CB_MAGIC_VALUE,
            0,
        ];
        assert!(decided(&cb));
        assert_eq!(
            VerdictRecord::from_cb(&cb),
            Some(VerdictRecord::Redirect {
                ifindex: 7,
                how: REDIRECT_NEIGH
            })
        );
        // Not ours (no magic), not a redirect, or not marked: not decided.
        assert!(!decided(&[cb[0], cb[1], cb[2], 0, 0]));
        assert!(!decided(&[VERDICT_PASS, 7, cb[2], CB_MAGIC_VALUE, 0]));
        assert!(!decided(&[
            VERDICT_REDIRECT,
            7,
            REDIRECT_NEIGH,
            CB_MAGIC_VALUE,
            0
        ]));
    }
}
