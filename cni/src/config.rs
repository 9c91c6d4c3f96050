//! The network configuration on stdin: our plugin entry plus what the
//! runtime injects (`cniVersion`, `name`, `prevResult`, GC's
//! `cni.dev/valid-attachments`).

use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError, Result};

pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
pub const DEFAULT_MTU: u32 = 9001;
pub const DEFAULT_VETH_PREFIX: &str = "eni";

#[derive(Clone, Debug, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub mtu: Option<u32>,
    pub agent_socket: Option<String>,
    pub veth_prefix: Option<String>,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                code::DECODE,
                "no network configuration on stdin",
            ));
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("network configuration on stdin is not valid: {e}"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported; use one of {SUPPORTED_VERSIONS:?}",
                    conf.cni_version
                ),
            ));
        }
        if let Some(mtu) = conf.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("mtu {mtu} is out of range (576-65535)"),
                ));
            }
        }
        let prefix = conf.veth_prefix();
        if prefix.is_empty()
            || prefix.len() > 4
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("vethPrefix {prefix:?} must be 1-4 ASCII letters or digits (the name adds 11 hex digits; links allow 15)"),
            ));
        }
        if conf.agent_socket.as_deref() == Some("") {
            return Err(CniError::new(code::INVALID_CONFIG, "agentSocket is empty"));
        }
        Ok(conf)
    }

    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    pub fn veth_prefix(&self) -> &str {
        self.veth_prefix.as_deref().unwrap_or(DEFAULT_VETH_PREFIX)
    }

    pub fn agent_socket(&self) -> &str {
        self.agent_socket
            .as_deref()
            .unwrap_or(trunkline_rpc::DEFAULT_AGENT_SOCKET)
    }
}

/// The host-side veth name: prefix + the first 11 hex digits of
/// sha1("<namespace>.<pod>") (the container id when the runtime passed no
/// pod name).
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str, container_id: &str) -> String {
    use sha1::{Digest, Sha1};
    let input = if pod.is_empty() {
        container_id.to_string()
    } else {
        format!("{namespace}.{pod}")
    };
    let digest = Sha1::digest(input.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_is_prefix_and_11_hex_of_sha1() {
        // python3 -c "import hashlib;print(hashlib.sha1(b'default.web').hexdigest()[:11])"
        let n = host_veth_name("eni", "default", "web", "c1");
        assert_eq!(n, "eni68caf03a5f4");
        assert_eq!(
            n,
            host_veth_name("eni", "default", "web", "other-container")
        );
        assert_ne!(n, host_veth_name("eni", "default", "web2", "c1"));
    }

    #[test]
    fn config_errors_have_codes() {
        assert_eq!(NetConf::parse(b"").expect_err("empty").code, code::DECODE);
        assert_eq!(
            NetConf::parse(b"{not json").expect_err("bad").code,
            code::DECODE
        );
        let v = br#"{"cniVersion":"0.3.1","type":"trunkline-cni"}"#;
        assert_eq!(
            NetConf::parse(v).expect_err("old").code,
            code::INCOMPATIBLE_VERSION
        );
        let p = br#"{"cniVersion":"1.0.0","type":"trunkline-cni","vethPrefix":"toolong"}"#;
        assert_eq!(
            NetConf::parse(p).expect_err("prefix").code,
            code::INVALID_CONFIG
        );
        let ok = br#"{"cniVersion":"1.1.0","type":"trunkline-cni","mtu":1500,"agentSocket":"/x.sock","vethPrefix":"eni"}"#;
        let c = NetConf::parse(ok).expect("ok");
        assert_eq!((c.mtu(), c.agent_socket()), (1500, "/x.sock"));
    }
}
