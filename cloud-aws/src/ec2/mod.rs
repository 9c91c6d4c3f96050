//! The EC2 calls the warm pool makes, behind a trait so tests can put a fake
//! at this boundary (prefix delegation and trunk ENIs are not modelled by
//! moto), and [`SdkEc2`], the implementation on aws-sdk-ec2.
//!
//! Retries: the SDK's standard retry strategy (exponential backoff with
//! jitter, throttling codes such as `RequestLimitExceeded` included) bounded
//! to [`MAX_ATTEMPTS`] attempts and [`OPERATION_TIMEOUT`] per call; what
//! still fails is returned with the call and the ENI named, and the
//! reconciler tries again on its next pass.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::warm_pool::Limits;

mod convert;
mod sdk;

pub use sdk::SdkEc2;

pub const MAX_ATTEMPTS: u32 = 4;
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Tags aws-node puts on the ENIs it creates; we set the same ones so that
/// existing tooling (and aws-node after a rollback) recognises them.
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
/// ENIs carrying this tag with value `true` are never touched.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";

/// The description aws-node gives its ENIs.
pub fn eni_description(instance_id: &str) -> String {
    format!("aws-K8S-{instance_id}")
}

#[derive(Debug, thiserror::Error)]
#[error("EC2 {op}{}: {message}", eni.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
pub struct Ec2Error {
    pub op: &'static str,
    pub eni: Option<String>,
    /// The EC2 error code when the service answered (`InvalidParameterValue`...).
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    pub fn new(op: &'static str, eni: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            op,
            eni: eni.map(str::to_string),
            code: None,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EniStatus {
    Available,
    InUse,
    /// attaching, detaching, associated...
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub instance_id: Option<String>,
    pub device_index: u32,
}

/// An ENI as DescribeNetworkInterfaces reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub mac: String,
    pub status: EniStatus,
    pub attachment: Option<Attachment>,
    pub subnet_id: String,
    pub description: String,
    pub interface_type: String,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub tags: BTreeMap<String, String>,
}

impl Eni {
    pub fn no_manage(&self) -> bool {
        self.tags
            .get(TAG_NO_MANAGE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Created by us (or aws-node) for `instance_id`.
    pub fn ours(&self, instance_id: &str) -> bool {
        self.tags.get(TAG_INSTANCE_ID).map(String::as_str) == Some(instance_id)
    }
}

/// What CreateNetworkInterface is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateEniRequest {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub instance_id: String,
    /// Secondary IPs (or /28 prefixes) to give it on creation.
    pub secondary_ips: u32,
    pub prefixes: u32,
    /// RFC 3339 time for the `createdAt` tag.
    pub created_at: String,
}

/// The EC2 calls the warm pool uses.
#[async_trait]
pub trait Ec2: Send + Sync {
    async fn instance_limits(&self, instance_type: &str) -> Result<Limits, Ec2Error>;
    /// ENIs attached to the instance.
    async fn instance_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error>;
    /// Detached (`available`) ENIs tagged for the instance: leaked by an
    /// earlier run that died between create and attach, or after detach.
    async fn leaked_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error>;
    async fn create_eni(&self, req: &CreateEniRequest) -> Result<Eni, Ec2Error>;
    /// Returns the attachment id.
    async fn attach_eni(
        &self,
        eni: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error>;
    async fn set_delete_on_termination(&self, eni: &str, attachment: &str) -> Result<(), Ec2Error>;
    async fn assign_ips(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error>;
    async fn assign_prefixes(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error>;
    async fn unassign_ips(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error>;
    async fn unassign_prefixes(&self, eni: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error>;
    async fn detach_eni(&self, attachment: &str) -> Result<(), Ec2Error>;
    async fn delete_eni(&self, eni: &str) -> Result<(), Ec2Error>;
}
