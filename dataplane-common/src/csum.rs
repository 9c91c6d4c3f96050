//! Incremental Internet checksum update (RFC 1624, eqn. 3) for the IPv4
//! header, which no NIC or veth leaves half-computed: the kernel program
//! updates it inline instead of calling a helper per changed field.
//!
//! Words are taken in memory order from the raw bytes on both sides, so the
//! arithmetic is the same whatever the host's byte order.

/// Folds a 32-bit ones-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field (raw memory word) after 4 bytes covered by it change
/// from `from` to `to`.
#[inline(always)]
pub const fn replace4(check: u16, from: [u8; 4], to: [u8; 4]) -> u16 {
    let f0 = u16::from_ne_bytes([from[0], from[1]]);
    let f1 = u16::from_ne_bytes([from[2], from[3]]);
    let t0 = u16::from_ne_bytes([to[0], to[1]]);
    let t1 = u16::from_ne_bytes([to[2], to[3]]);
    let sum = (!check) as u32 + (!f0) as u32 + (!f1) as u32 + t0 as u32 + t1 as u32;
    !fold(sum)
}

/// The checksum field (raw memory word) after one 16-bit word covered by
/// it changes from `from` to `to` (both as raw memory bytes).
#[inline(always)]
pub const fn replace2(check: u16, from: [u8; 2], to: [u8; 2]) -> u16 {
    let f = u16::from_ne_bytes(from);
    let t = u16::from_ne_bytes(to);
    let sum = (!check) as u32 + (!f) as u32 + t as u32;
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full computation over a header whose checksum field is zero, as a
    /// raw memory word.
    fn full(header: &[u8]) -> u16 {
        let mut sum = 0u32;
        for w in header.chunks_exact(2) {
            sum += u16::from_ne_bytes([w[0], w[1]]) as u32;
        }
        !fold(sum)
    }

    fn header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = full(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    #[test]
    fn incremental_equals_full_recomputation() {
        let cases = [
            ([192, 168, 31, 170], [192, 168, 16, 10]),
            ([10, 0, 0, 1], [255, 255, 255, 255]),
            ([0, 0, 0, 0], [0, 0, 0, 1]),
            ([255, 255, 0, 0], [0, 0, 255, 255]),
            ([1, 2, 3, 4], [1, 2, 3, 4]),
        ];
        for (from, to) in cases {
            let before = header(from, [203, 0, 113, 10]);
            let after = header(to, [203, 0, 113, 10]);
            let check = u16::from_ne_bytes([before[10], before[11]]);
            let want = u16::from_ne_bytes([after[10], after[11]]);
            let got = replace4(check, from, to);
            // 0x0000 and 0xffff are the same number in ones' complement.
            assert!(
                got == want || (got ^ want) == 0xffff,
                "{from:?}->{to:?}: {got:#x} vs {want:#x}"
            );
        }
    }

    #[test]
    fn ttl_decrement_matches_full_recomputation() {
        for ttl in [64u8, 2, 255, 1] {
            let mut h = header([10, 0, 0, 1], [10, 0, 0, 2]);
            h[8] = ttl;
            h[10..12].copy_from_slice(&[0, 0]);
            let c = full(&h);
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            let check = u16::from_ne_bytes([h[10], h[11]]);
            let got = replace2(check, [ttl, 6], [ttl - 1, 6]);
            h[8] = ttl - 1;
            h[10..12].copy_from_slice(&[0, 0]);
            let want = full(&h);
            assert!(
                got == want || (got ^ want) == 0xffff,
                "ttl {ttl}: {got:#x} vs {want:#x}"
            );
        }
    }

    #[test]
    fn result_verifies_over_the_whole_header() {
        let mut h = header([192, 168, 31, 170], [203, 0, 113, 10]);
        let check = u16::from_ne_bytes([h[10], h[11]]);
        let c = replace4(check, [192, 168, 31, 170], [192, 168, 16, 10]);
        h[12..16].copy_from_slice(&[192, 168, 16, 10]);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut sum = 0u32;
        for w in h.chunks_exact(2) {
            sum += u16::from_ne_bytes([w[0], w[1]]) as u32;
        }
        assert_eq!(fold(sum), 0xffff);
    }
}
