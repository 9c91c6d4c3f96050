//! The CNI_* environment a runtime passes.

use crate::error::{code, CniError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

#[derive(Clone, Debug, Default)]
pub struct CniArgs {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
}

fn var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> String {
    get(name).unwrap_or_default()
}

pub fn parse_command(s: &str) -> Result<Command> {
    Ok(match s {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "STATUS" => Command::Status,
        "GC" => Command::Gc,
        "" => return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set (want ADD, DEL, CHECK, VERSION, STATUS or GC)")),
        other => return Err(CniError::new(code::INVALID_ENV, format!("CNI_COMMAND={other:?} is not a CNI command (want ADD, DEL, CHECK, VERSION, STATUS or GC)"))),
    })
}

/// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;...` (unknown keys ignored).
pub fn parse_args(s: &str) -> Result<CniArgs> {
    let mut out = CniArgs::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        match k {
            "K8S_POD_NAMESPACE" => out.pod_namespace = v.to_string(),
            "K8S_POD_NAME" => out.pod_name = v.to_string(),
            "K8S_POD_UID" => out.pod_uid = v.to_string(),
            _ => {}
        }
    }
    Ok(out)
}

impl Env {
    /// Reads the environment through `get` (the process env in production).
    pub fn from(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let command = parse_command(&var(get, "CNI_COMMAND"))?;
        let env = Self {
            command,
            container_id: var(get, "CNI_CONTAINERID"),
            netns: var(get, "CNI_NETNS"),
            ifname: var(get, "CNI_IFNAME"),
            args: parse_args(&var(get, "CNI_ARGS"))?,
        };
        let required: &[(&str, &str)] = match command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "{command:?} needs {} set by the container runtime",
                    missing.join(", ")
                ),
            ));
        }
        if env.ifname.len() > 15 {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME={:?} is longer than 15 bytes", env.ifname),
            ));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from(&|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]).expect_err("missing");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"),
            "{}",
            e.msg
        );
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
            ),
        ])
        .expect("ok");
        assert_eq!(
            (ok.args.pod_namespace.as_str(), ok.args.pod_name.as_str()),
            ("default", "web")
        );
    }

    #[test]
    fn unknown_or_missing_command_is_code_4() {
        assert_eq!(env(&[]).expect_err("none").code, code::INVALID_ENV);
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).expect_err("bad").code,
            code::INVALID_ENV
        );
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0")
        ])
        .is_ok());
    }
}
