//! CNI errors: the spec's codes and a message a person can act on, printed
//! as the spec's error JSON on stdout.

use serde_json::json;

/// Error codes of the CNI spec (1.0.0 / 1.1.0) this plugin uses.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const NO_IPS: u32 = 51;
    /// Plugin-specific (the spec reserves 100+ for plugins): the agent refused.
    pub const AGENT_REFUSED: u32 = 100;
}

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl std::fmt::Display) -> Self {
        self.details = d.to_string();
        self
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
