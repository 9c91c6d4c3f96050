//! A MAC address: parsed from and printed as `02:a5:ee:3d:4a:c9`, the one
//! form the node file, the pod-eni annotation, sysfs and the tables use.

use core::{fmt, str::FromStr};

/// Six octets, printed lower-case hex with colons.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacParseError {
    /// Not six `:`-separated octets.
    Octets,
    /// An octet that is not two hex digits.
    Hex,
}

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Octets => "want 6 hex octets like 02:a5:ee:3d:4a:c9",
            Self::Hex => "an octet is not two hex digits",
        })
    }
}

impl MacAddr {
    pub const ZERO: Self = Self([0; 6]);

    /// Neither all-zero nor a group (multicast/broadcast) address: what an
    /// ENI or a veth can have.
    pub const fn is_unicast(&self) -> bool {
        !self.is_zero() && self.0[0] & 1 == 0
    }

    pub const fn is_zero(&self) -> bool {
        let m = self.0;
        (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, MacParseError> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut mac {
            let p = parts.next().ok_or(MacParseError::Octets)?.as_bytes();
            let [hi, lo] = p else {
                return Err(if p.is_empty() || p.len() > 2 {
                    MacParseError::Octets
                } else {
                    MacParseError::Hex
                });
            };
            *octet =
                (hex(*hi).ok_or(MacParseError::Hex)? << 4) | hex(*lo).ok_or(MacParseError::Hex)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError::Octets);
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(m: [u8; 6]) -> Self {
        Self(m)
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::MacAddr;
    use core::fmt;

    impl serde::Serialize for MacAddr {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }

    impl<'de> serde::Deserialize<'de> for MacAddr {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = MacAddr;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a MAC address like 02:a5:ee:3d:4a:c9")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                    v.parse()
                        .map_err(|e| E::custom(format_args!("{v:?} is not a MAC address ({e})")))
                }
            }
            d.deserialize_str(Visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_colon_form() {
        let m: MacAddr = "02:A5:ee:3d:4a:c9".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xa5, 0xee, 0x3d, 0x4a, 0xc9]);
        let mut buf = [0u8; 17];
        let mut w = Buf(&mut buf, 0);
        core::fmt::write(&mut w, format_args!("{m}")).unwrap();
        assert_eq!(&buf, b"02:a5:ee:3d:4a:c9");
        assert!(m.is_unicast());
    }

    #[test]
    fn rejects_what_is_not_six_hex_octets() {
        for bad in [
            "",
            "02:a5:ee:3d:4a",
            "02:a5:ee:3d:4a:c9:00",
            "02:a5:zz:3d:4a:c9",
            "+2:a5:ee:3d:4a:c9",
            "2:a5:ee:3d:4a:c9",
            "002:a5:ee:3d:4a:c9",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(!MacAddr::ZERO.is_unicast());
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
    }

    struct Buf<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for Buf<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(core::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
}
