//! trunkline-cni: the CNI plugin (spec 1.0.0 and 1.1.0). It creates the
//! pod's veth (host end in the host namespace, peer in the pod namespace),
//! addresses the pod side, and makes one RPC to trunkline-agent. It writes
//! no route, rule, iptables or VLAN device in the host.

mod agent;
mod commands;
mod config;
mod env;
mod error;
mod link;
mod netns;
mod result;

use std::io::{Read as _, Write as _};

use config::NetConf;
use env::{Command, Env};
use error::{code, CniError};

fn run(stdin: &[u8]) -> (Option<String>, Result<Option<serde_json::Value>, CniError>) {
    let env = match Env::from(&|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => return (None, Err(e)),
    };
    if env.command == Command::Version {
        let conf = NetConf::parse(stdin).ok();
        return (None, Ok(Some(commands::version(conf.as_ref()))));
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (None, Err(e)),
    };
    let version = Some(conf.cni_version.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return (
                version,
                Err(CniError::new(
                    code::IO,
                    format!("starting the runtime: {e}"),
                )),
            )
        }
    };
    let out = rt.block_on(async {
        match env.command {
            Command::Add => commands::add(&env, &conf).await.map(Some),
            Command::Del => commands::del(&env, &conf).await.map(|()| None),
            Command::Check => commands::check(&env, &conf).await.map(|()| None),
            Command::Status => commands::status(&conf).await.map(|()| None),
            Command::Gc => commands::gc(&conf).await.map(|()| None),
            Command::Version => Ok(None),
        }
    });
    (version, out)
}

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (version, out) = match read {
        Ok(_) => run(&stdin),
        Err(e) => (
            None,
            Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
        ),
    };
    let mut stdout = std::io::stdout();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
        }
        Ok(None) => {}
        Err(e) => {
            let v = e.to_json(version.as_deref().unwrap_or("1.1.0"));
            let _ = writeln!(stdout, "{v}");
            eprintln!("trunkline-cni: {} (code {})", e.msg, e.code);
            let _ = stdout.flush();
            std::process::exit(1);
        }
    }
}
