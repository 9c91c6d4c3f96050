//! A local EC2 API: moto's `moto_server` on a free 127.0.0.1 port, killed
//! on drop. xtask installs moto into a venv and exports its path in
//! `TRUNKLINE_MOTO_VENV`; without it the tests fail with how to get it
//! (never a silent skip).

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub const VENV_ENV: &str = "TRUNKLINE_MOTO_VENV";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `moto_server` of the venv xtask prepared.
pub fn moto_server_bin() -> Result<PathBuf> {
    let venv = std::env::var_os(VENV_ENV).with_context(|| {
        format!("{VENV_ENV} is not set: run the tests with `cargo xtask test`, which installs moto into a venv")
    })?;
    let bin = PathBuf::from(venv).join("bin").join("moto_server");
    if !bin.exists() {
        bail!("{} does not exist: run `cargo xtask test`", bin.display());
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Moto {
    /// Starts moto on a free port and waits (bounded) until it answers.
    pub fn start() -> Result<Self> {
        Self::start_on(free_port()?)
    }

    /// Starts moto on `port` (a restart keeps the endpoint the clients use).
    pub fn start_on(port: u16) -> Result<Self> {
        let bin = moto_server_bin()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("tl-moto")));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut me = Self {
            child: Some(child),
            port,
            log,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(me);
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "moto_server exited with {status}: {}",
                    std::fs::read_to_string(&me.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's pid while it runs (tests stop it with SIGSTOP).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Kills moto now (the "EC2 is down" case); idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new VPC (`vpc_cidr`) with one subnet (`subnet_cidr`) and one instance
/// of `instance_type` in moto: (instance id, subnet id).
pub async fn launch_instance(
    c: &aws_sdk_ec2::Client,
    vpc_cidr: &str,
    subnet_cidr: &str,
    instance_type: &str,
) -> Result<(String, String)> {
    let vpc = c.create_vpc().cidr_block(vpc_cidr).send().await?;
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).context("vpc id")?;
    let sub = c
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block(subnet_cidr)
        .send()
        .await?;
    let subnet = sub
        .subnet()
        .and_then(|s| s.subnet_id())
        .context("subnet id")?
        .to_string();
    let images = c.describe_images().send().await?;
    let ami = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .context("moto has no AMI")?
        .to_string();
    let r = c
        .run_instances()
        .image_id(ami)
        .min_count(1)
        .max_count(1)
        .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .subnet_id(&subnet)
        .send()
        .await?;
    let id = r
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .context("instance id")?
        .to_string();
    Ok((id, subnet))
}
