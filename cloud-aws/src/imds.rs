//! Node discovery from the instance metadata service (IMDSv2).
//!
//! We use aws-config's IMDS client rather than our own HTTP client: it does
//! the IMDSv2 token flow (PUT `/latest/api/token` with the TTL header, the
//! token on every GET, a new token on 401), bounded retries with backoff on
//! 5xx and connection errors, and honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//! like every other AWS tool, and aws-config is a dependency anyway (EC2
//! credentials). What remains here is which paths to read and parsing them.

use std::{net::Ipv4Addr, time::Duration};

use aws_config::imds::client::error::ImdsError;
use ipnet::Ipv4Net;

/// Attempts per metadata read (the client backs off between them).
pub const IMDS_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("IMDS {path}: {message}")]
    Fetch { path: String, message: String },
    #[error("IMDS {path}: cannot parse {value:?}: {reason}")]
    Parse {
        path: String,
        value: String,
        reason: &'static str,
    },
    #[error("IMDS endpoint {0:?} is not a valid URL")]
    Endpoint(String),
}

/// One ENI as IMDS describes it (keyed by MAC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsEni {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub device_number: u32,
    pub interface_id: String,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    /// The ENI's primary IPv4 address first, then its secondary ones.
    pub local_ipv4s: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes (empty when none).
    pub prefixes: Vec<Ipv4Net>,
    pub security_groups: Vec<String>,
}

/// What the agent needs to know about its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    pub primary_mac: String,
    /// Sorted by device number; the primary ENI (device 0) first.
    pub enis: Vec<ImdsEni>,
    /// The VPC's IPv4 CIDR blocks (primary and secondary).
    pub vpc_cidrs: Vec<Ipv4Net>,
}

impl NodeInfo {
    pub fn primary_eni(&self) -> Option<&ImdsEni> {
        self.enis.iter().find(|e| e.mac == self.primary_mac)
    }
}

/// An IMDSv2 reader.
#[derive(Debug)]
pub struct Imds {
    /// Replaced on a 401: the SDK client keeps its token for the whole TTL,
    /// but IMDS forgets tokens when the instance is stopped and started.
    client: std::sync::Mutex<aws_config::imds::Client>,
    endpoint: Option<String>,
}

const BASE: &str = "/latest/meta-data";

fn status(e: &ImdsError) -> Option<u16> {
    match e {
        ImdsError::ErrorResponse(r) => Some(r.response().status().as_u16()),
        _ => None,
    }
}

impl Imds {
    fn builder() -> aws_config::imds::client::Builder {
        aws_config::imds::Client::builder()
            .max_attempts(IMDS_ATTEMPTS)
            .token_ttl(Duration::from_secs(6 * 3600))
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            // An attempt includes fetching the token, which has its own
            // retries with the SDK's backoff (1 s, 2 s, ... with jitter).
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
    }

    /// The endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the
    /// link-local default.
    pub fn from_env() -> Self {
        Self {
            client: std::sync::Mutex::new(Self::builder().build()),
            endpoint: None,
        }
    }

    /// An explicit endpoint (tests: the fixture server).
    pub fn with_endpoint(url: &str) -> Result<Self, DiscoveryError> {
        let c = Self::new_client(Some(url))?;
        Ok(Self {
            client: std::sync::Mutex::new(c),
            endpoint: Some(url.to_string()),
        })
    }

    fn new_client(endpoint: Option<&str>) -> Result<aws_config::imds::Client, DiscoveryError> {
        Ok(match endpoint {
            None => Self::builder().build(),
            Some(url) => Self::builder()
                .endpoint(url)
                .map_err(|_| DiscoveryError::Endpoint(url.to_string()))?
                .build(),
        })
    }

    fn client(&self) -> aws_config::imds::Client {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// GET `path` (under `/latest/meta-data`), trimmed.
    pub async fn get(&self, path: &str) -> Result<String, DiscoveryError> {
        self.get_opt(path)
            .await?
            .ok_or_else(|| DiscoveryError::Fetch {
                path: path.to_string(),
                message: "not found (404)".into(),
            })
    }

    /// GET that maps 404 to `None` (optional keys such as `ipv4-prefix`).
    pub async fn get_opt(&self, path: &str) -> Result<Option<String>, DiscoveryError> {
        let full = format!("{BASE}/{path}");
        let mut result = self.client().get(full.clone()).await;
        if result.as_ref().err().and_then(status) == Some(401) {
            // Our token was forgotten: a fresh client fetches a new one.
            tracing::info!(path = %full, "IMDS refused the session token; fetching a new one");
            let fresh = Self::new_client(self.endpoint.as_deref())?;
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
            result = fresh.get(full.clone()).await;
        }
        match result {
            Ok(v) => Ok(Some(v.as_ref().trim().to_string())),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(DiscoveryError::Fetch {
                path: full,
                message: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
            }),
        }
    }

    fn lines(v: &str) -> impl Iterator<Item = &str> {
        v.lines().map(str::trim).filter(|l| !l.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        path: &str,
        value: &str,
        reason: &'static str,
    ) -> Result<T, DiscoveryError> {
        value.trim().parse().map_err(|_| DiscoveryError::Parse {
            path: path.to_string(),
            value: value.to_string(),
            reason,
        })
    }

    /// MACs of the ENIs IMDS lists (IMDS lags attachment by a few seconds).
    pub async fn macs(&self) -> Result<Vec<String>, DiscoveryError> {
        let v = self.get("network/interfaces/macs/").await?;
        Ok(Self::lines(&v)
            .map(|l| l.trim_end_matches('/').to_ascii_lowercase())
            .collect())
    }

    pub async fn eni(&self, mac: &str) -> Result<ImdsEni, DiscoveryError> {
        let p = |k: &str| format!("network/interfaces/macs/{mac}/{k}");
        let device_number = {
            let path = p("device-number");
            Self::parse(&path, &self.get(&path).await?, "expected a device number")?
        };
        let subnet_cidr = {
            let path = p("subnet-ipv4-cidr-block");
            Self::parse(&path, &self.get(&path).await?, "expected an IPv4 CIDR")?
        };
        let local_ipv4s = {
            let path = p("local-ipv4s");
            let v = self.get_opt(&path).await?.unwrap_or_default();
            Self::lines(&v)
                .map(|l| Self::parse(&path, l, "expected an IPv4 address"))
                .collect::<Result<Vec<_>, _>>()?
        };
        let prefixes = {
            let path = p("ipv4-prefix");
            let v = self.get_opt(&path).await?.unwrap_or_default();
            Self::lines(&v)
                .map(|l| Self::parse(&path, l, "expected an IPv4 prefix"))
                .collect::<Result<Vec<_>, _>>()?
        };
        let security_groups = Self::lines(
            &self
                .get_opt(&p("security-group-ids"))
                .await?
                .unwrap_or_default(),
        )
        .map(str::to_string)
        .collect();
        Ok(ImdsEni {
            mac: mac.to_string(),
            device_number,
            interface_id: self.get(&p("interface-id")).await?,
            subnet_id: self.get(&p("subnet-id")).await?,
            subnet_cidr,
            local_ipv4s,
            prefixes,
            security_groups,
        })
    }

    /// The VPC CIDR blocks, as seen through the ENI `mac`.
    pub async fn vpc_cidrs(&self, mac: &str) -> Result<Vec<Ipv4Net>, DiscoveryError> {
        let path = format!("network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks");
        let v = match self.get_opt(&path).await? {
            Some(v) => v,
            // Older IMDS versions only have the singular key.
            None => {
                let path = format!("network/interfaces/macs/{mac}/vpc-ipv4-cidr-block");
                self.get(&path).await?
            }
        };
        Self::lines(&v)
            .map(|l| Self::parse::<Ipv4Net>(&path, l, "expected an IPv4 CIDR").map(|n| n.trunc()))
            .collect()
    }

    /// Everything the agent needs at start.
    pub async fn discover(&self) -> Result<NodeInfo, DiscoveryError> {
        let instance_id = self.get("instance-id").await?;
        let instance_type = self.get("instance-type").await?;
        let availability_zone = self.get("placement/availability-zone").await?;
        let region = match self.get_opt("placement/region").await? {
            Some(r) => r,
            // The AZ is the region plus one letter (us-east-1a).
            None => availability_zone
                .strip_suffix(|c: char| c.is_ascii_alphabetic())
                .unwrap_or(&availability_zone)
                .to_string(),
        };
        let primary_mac = self.get("mac").await?.to_ascii_lowercase();
        let mut enis = Vec::new();
        for mac in self.macs().await? {
            enis.push(self.eni(&mac).await?);
        }
        enis.sort_by_key(|e| e.device_number);
        let vpc_cidrs = self.vpc_cidrs(&primary_mac).await?;
        Ok(NodeInfo {
            instance_id,
            instance_type,
            region,
            availability_zone,
            primary_mac,
            enis,
            vpc_cidrs,
        })
    }
}
