//! A local EC2 API: moto's server on a free 127.0.0.1 port, killed on
//! drop. xtask installs moto into a venv and exports its path in
//! `TRUNKLINE_MOTO_VENV`; without it the tests fail with how to get it
//! (never a silent skip). The server runs through `moto_server.py`, which
//! adds the one thing moto lacks for the trunk ENI: CreateNetworkInterface
//! keeping its `InterfaceType`.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub const VENV_ENV: &str = "TRUNKLINE_MOTO_VENV";
/// moto's server with `InterfaceType` kept (see the module doc).
const LAUNCHER: &str = include_str!("moto_server.py");
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
    /// The launcher written for this server (removed on drop).
    script: PathBuf,
}

impl Moto {
    /// Starts moto on a free port and waits (bounded) until it answers.
    pub fn start() -> Result<Self> {
        Self::start_on(free_port()?)
    }

    /// Starts moto on `port` (a restart keeps the endpoint the clients use).
    pub fn start_on(port: u16) -> Result<Self> {
        let bin = moto_server_bin()?;
        let python = bin.with_file_name("python3");
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("tl-moto")));
        let script = log.with_extension("py");
        std::fs::write(&script, LAUNCHER)
            .with_context(|| format!("writing {}", script.display()))?;
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&python)
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {} {}", python.display(), script.display()))?;
        let mut me = Self {
            child: Some(child),
            port,
            log,
            script,
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
        let _ = std::fs::remove_file(&self.script);
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

/// An EC2 client of moto at `endpoint` (region us-east-1, test credentials).
pub fn client(endpoint: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// An ENI attached to the instance, as the tests read it back from moto.
#[derive(Clone, Debug)]
pub struct InstanceEni {
    pub id: String,
    pub mac: String,
    pub primary_ip: std::net::Ipv4Addr,
    pub device: i32,
    pub secondary: Vec<std::net::Ipv4Addr>,
    /// EC2's `InterfaceType` (`interface`, `trunk`...).
    pub interface_type: String,
}

/// The ENIs attached to `instance`, by device index.
pub async fn instance_enis(c: &aws_sdk_ec2::Client, instance: &str) -> Result<Vec<InstanceEni>> {
    let r = c
        .describe_network_interfaces()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(instance)
                .build(),
        )
        .send()
        .await?;
    let mut out = Vec::new();
    for ni in r.network_interfaces() {
        let mut primary_ip = None;
        let mut secondary = Vec::new();
        for a in ni.private_ip_addresses() {
            let ip: std::net::Ipv4Addr = a.private_ip_address().context("ip")?.parse()?;
            if a.primary() == Some(true) {
                primary_ip = Some(ip);
            } else {
                secondary.push(ip);
            }
        }
        out.push(InstanceEni {
            id: ni.network_interface_id().context("id")?.into(),
            mac: ni.mac_address().context("mac")?.to_ascii_lowercase(),
            primary_ip: primary_ip.context("primary ip")?,
            device: ni.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
            secondary,
            interface_type: ni
                .interface_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
        });
    }
    out.sort_by_key(|n| n.device);
    Ok(out)
}

/// What the VPC resource controller does for security groups for pods:
/// a trunk ENI (`InterfaceType` trunk) in `subnet`, attached to `instance`
/// at `device_index`.
pub async fn attach_trunk(
    c: &aws_sdk_ec2::Client,
    instance: &str,
    subnet: &str,
    device_index: i32,
) -> Result<InstanceEni> {
    let ni = c
        .create_network_interface()
        .subnet_id(subnet)
        .interface_type(aws_sdk_ec2::types::NetworkInterfaceCreationType::Trunk)
        .description("trunk ENI (VPC resource controller)")
        .send()
        .await?;
    let id = ni
        .network_interface()
        .and_then(|n| n.network_interface_id())
        .context("trunk ENI id")?
        .to_string();
    c.attach_network_interface()
        .network_interface_id(&id)
        .instance_id(instance)
        .device_index(device_index)
        .send()
        .await?;
    instance_enis(c, instance)
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .context("the trunk ENI is not attached")
}
