//! The `vpc.amazonaws.com/pod-eni` annotation the VPC resource controller
//! puts on a security-group pod once its branch ENI exists:
//!
//! ```text
//! [{"eniId":"eni-09a7a909e06fc4be6","ifAddress":"02:b0:01:6c:b5:79",
//!   "privateIp":"192.168.26.162","vlanId":1,"subnetCidr":"192.168.0.0/19"}]
//! ```
//!
//! A JSON array of which the first element is used. Keys match
//! case-insensitively because the controller is written in Go, whose JSON
//! decoder does that (it spells the VLAN key `vlanID`). The annotation is
//! written by another program and read from the apiserver: every value is
//! checked, every failure is a message naming the key, and no input
//! panics (the parser is fuzzed: `fuzz/`).

use std::net::{Ipv4Addr, Ipv6Addr};

pub use dataplane_common::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// The annotation key, and also the extended resource name a pod requests.
pub const POD_ENI: &str = "vpc.amazonaws.com/pod-eni";

/// Annotations are at most 256 KiB in total in Kubernetes; anything longer
/// did not come from an apiserver and is refused before parsing.
pub const MAX_LEN: usize = 256 * 1024;

/// An ENI's MAC address: parsed as every MAC in trunkline is
/// ([`MacAddr`]), and then unicast, since a group address would make the
/// data path send the pod's frames to every port of the trunk's segment.
fn eni_mac(s: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = s
        .parse()
        .map_err(|e| format!("{s:?} is not a MAC address ({e})"))?;
    if mac.is_zero() {
        return Err(format!("{s:?} is the all-zero MAC address"));
    }
    if !mac.is_unicast() {
        return Err(format!("{s:?} is a multicast MAC address, not an ENI's"));
    }
    Ok(mac)
}

/// One branch ENI, as the annotation gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchEni {
    pub eni_id: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// 1..=4094.
    pub vlan: u16,
    /// The branch ENI's subnet, when given (the IP is inside it).
    pub subnet: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Addr>,
    pub subnet_v6: Option<Ipv6Net>,
}

/// Why an annotation was refused. The messages go into the CNI error and
/// into the Event on the pod, so they say what to look at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation is {0} bytes, more than any apiserver stores")]
    TooLong(usize),
    #[error("annotation is not JSON: {0}")]
    NotJson(String),
    #[error("annotation must be a JSON array of branch ENIs, found {0}")]
    NotArray(&'static str),
    #[error("annotation is an empty array: no branch ENI")]
    Empty,
    #[error("the first branch ENI must be a JSON object, found {0}")]
    NotObject(&'static str),
    #[error("key {0:?} appears twice (keys are case-insensitive)")]
    DuplicateKey(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{key} must be a {want}, found {found}")]
    WrongType {
        key: &'static str,
        want: &'static str,
        found: &'static str,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields we know, under their canonical (Go) spelling.
const KEYS: [&str; 7] = [
    "eniId",
    "ifAddress",
    "privateIp",
    "vlanId",
    "subnetCidr",
    "ipv6Addr",
    "subnetV6Cidr",
];

/// The first element's known fields, found case-insensitively; unknown keys
/// are ignored (the controller may add fields).
struct Fields<'a> {
    values: [Option<&'a Value>; KEYS.len()],
}

impl<'a> Fields<'a> {
    fn of(obj: &'a Map<String, Value>) -> Result<Self, AnnotationError> {
        let mut values = [None; KEYS.len()];
        for (k, v) in obj {
            if let Some(i) = KEYS.iter().position(|c| c.eq_ignore_ascii_case(k)) {
                if values[i].is_some() {
                    return Err(AnnotationError::DuplicateKey(KEYS[i].to_string()));
                }
                values[i] = Some(v);
            }
        }
        Ok(Self { values })
    }

    fn get(&self, key: &'static str) -> Option<&'a Value> {
        let i = KEYS.iter().position(|c| *c == key)?;
        // null is what Go writes for an unset pointer: treat as absent.
        self.values[i].filter(|v| !v.is_null())
    }

    /// A string field; empty strings count as missing, as Go's zero value.
    fn string(&self, key: &'static str) -> Result<Option<&'a str>, AnnotationError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(AnnotationError::WrongType {
                key,
                want: "string",
                found: kind(v),
            }),
        }
    }

    fn required(&self, key: &'static str) -> Result<&'a str, AnnotationError> {
        self.string(key)?.ok_or(AnnotationError::Missing(key))
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Parses the annotation's value.
pub fn parse(text: &str) -> Result<BranchEni, AnnotationError> {
    if text.len() > MAX_LEN {
        return Err(AnnotationError::TooLong(text.len()));
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| AnnotationError::NotJson(e.to_string()))?;
    let arr = match &v {
        Value::Array(a) => a,
        other => return Err(AnnotationError::NotArray(kind(other))),
    };
    let first = arr.first().ok_or(AnnotationError::Empty)?;
    let obj = match first {
        Value::Object(o) => o,
        other => return Err(AnnotationError::NotObject(kind(other))),
    };
    let f = Fields::of(obj)?;

    let ip_text = f.required("privateIp")?;
    let ip: Ipv4Addr = ip_text
        .parse()
        .map_err(|_| invalid("privateIp", format!("{ip_text:?} is not an IPv4 address")))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(invalid(
            "privateIp",
            format!("{ip} cannot be a pod's address"),
        ));
    }
    let mac = eni_mac(f.required("ifAddress")?).map_err(|e| invalid("ifAddress", e))?;
    let vlan = match f.get("vlanId") {
        None => return Err(AnnotationError::Missing("vlanId")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => return Err(invalid("vlanId", "0 is not a VLAN id (1..4094)")),
            Some(id @ 1..=4094) => id as u16,
            _ => {
                return Err(invalid(
                    "vlanId",
                    format!("{n} is not a VLAN id (an integer 1..4094)"),
                ))
            }
        },
        Some(v) => {
            return Err(AnnotationError::WrongType {
                key: "vlanId",
                want: "number",
                found: kind(v),
            })
        }
    };
    let eni_id = f.required("eniId")?;
    if !eni_id.starts_with("eni-")
        || eni_id.len() > 64
        || !eni_id[4..].bytes().all(|b| b.is_ascii_hexdigit())
        || eni_id.len() == 4
    {
        return Err(invalid(
            "eniId",
            format!("{eni_id:?} is not an ENI id (eni-<hex>)"),
        ));
    }
    let subnet = match f.string("subnetCidr")? {
        None => None,
        Some(s) => {
            let net: Ipv4Net = s
                .parse()
                .map_err(|_| invalid("subnetCidr", format!("{s:?} is not an IPv4 CIDR")))?;
            if !net.contains(&ip) {
                return Err(invalid(
                    "subnetCidr",
                    format!("privateIp {ip} is outside {net}"),
                ));
            }
            Some(net)
        }
    };
    let ipv6 = match f.string("ipv6Addr")? {
        None => None,
        Some(s) => Some(
            s.parse::<Ipv6Addr>()
                .map_err(|_| invalid("ipv6Addr", format!("{s:?} is not an IPv6 address")))?,
        ),
    };
    let subnet_v6 = match f.string("subnetV6Cidr")? {
        None => None,
        Some(s) => Some(
            s.parse::<Ipv6Net>()
                .map_err(|_| invalid("subnetV6Cidr", format!("{s:?} is not an IPv6 CIDR")))?,
        ),
    };
    Ok(BranchEni {
        eni_id: eni_id.to_string(),
        mac,
        ip,
        vlan,
        subnet,
        ipv6,
        subnet_v6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"[{"eniId":"eni-09a7a909e06fc4be6","ifAddress":"02:b0:01:6c:b5:79","privateIp":"192.168.26.162","vlanId":1,"subnetCidr":"192.168.0.0/19"}]"#;

    fn err(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let b = parse(DOC).expect("parses");
        assert_eq!(b.eni_id, "eni-09a7a909e06fc4be6");
        assert_eq!(b.mac.to_string(), "02:b0:01:6c:b5:79");
        assert_eq!(b.ip, Ipv4Addr::new(192, 168, 26, 162));
        assert_eq!(b.vlan, 1);
        assert_eq!(
            b.subnet.map(|n| n.to_string()).as_deref(),
            Some("192.168.0.0/19")
        );
        assert_eq!(b.ipv6, None);
    }

    #[test]
    fn keys_match_case_insensitively_and_only_the_first_element_counts() {
        let text = r#"[{"ENIID":"eni-0a","IfAddress":"02:00:00:00:00:02","PRIVATEIP":"10.0.0.5","vlanID":4094,"ipv6addr":"2001:db8::5","SubnetV6Cidr":"2001:db8::/64","extra":true},
                       {"nonsense":1}]"#;
        let b = parse(text).expect("parses");
        assert_eq!(b.vlan, 4094);
        assert_eq!(b.ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(b.ipv6, Some("2001:db8::5".parse().unwrap()));
        assert_eq!(b.subnet, None);
    }

    #[test]
    fn refusals_name_the_culprit() {
        let cases = [
            ("", "not JSON"),
            ("{}", "must be a JSON array"),
            ("[]", "empty array"),
            ("[1]", "must be a JSON object"),
            (
                r#"[{"ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1"}]"#,
                "privateIp is missing",
            ),
            (
                r#"[{"privateIp":"","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1"}]"#,
                "privateIp is missing",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","vlanId":1,"eniId":"eni-1"}]"#,
                "ifAddress is missing",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","eniId":"eni-1"}]"#,
                "vlanId is missing",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":0,"eniId":"eni-1"}]"#,
                "vlanId: 0 is not a VLAN id",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":4095,"eniId":"eni-1"}]"#,
                "vlanId: 4095 is not a VLAN id",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":-1,"eniId":"eni-1"}]"#,
                "vlanId: -1 is not",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1.5,"eniId":"eni-1"}]"#,
                "vlanId: 1.5 is not",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":"1","eniId":"eni-1"}]"#,
                "vlanId must be a number, found a string",
            ),
            (
                r#"[{"privateIp":"10.0.0.500","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1"}]"#,
                "not an IPv4 address",
            ),
            (
                r#"[{"privateIp":"0.0.0.0","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1"}]"#,
                "cannot be a pod's address",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00","vlanId":1,"eniId":"eni-1"}]"#,
                "ifAddress: \"02:00:00:00:00\" is not a MAC",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:0g","vlanId":1,"eniId":"eni-1"}]"#,
                "is not a MAC",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"+2:00:00:00:00:01","vlanId":1,"eniId":"eni-1"}]"#,
                "is not a MAC",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"01:00:5e:00:00:01","vlanId":1,"eniId":"eni-1"}]"#,
                "multicast MAC",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"00:00:00:00:00:00","vlanId":1,"eniId":"eni-1"}]"#,
                "all-zero",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1}]"#,
                "eniId is missing",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"vol-1"}]"#,
                "not an ENI id",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1","subnetCidr":"10.0.0.0/33"}]"#,
                "subnetCidr: \"10.0.0.0/33\" is not an IPv4 CIDR",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1","subnetCidr":"10.1.0.0/16"}]"#,
                "outside 10.1.0.0/16",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1","ipv6Addr":"fe80::zz"}]"#,
                "not an IPv6 address",
            ),
            (
                r#"[{"privateIp":"10.0.0.5","ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1","privateIP":"10.0.0.6"}]"#,
                "appears twice",
            ),
            (
                r#"[{"privateIp":7,"ifAddress":"02:00:00:00:00:02","vlanId":1,"eniId":"eni-1"}]"#,
                "privateIp must be a string, found a number",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.contains(want),
                "{text}: got {got:?}, want it to contain {want:?}"
            );
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let text = format!("[{}]", " ".repeat(MAX_LEN));
        assert!(matches!(parse(&text), Err(AnnotationError::TooLong(_))));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&text).is_err());
    }
}
