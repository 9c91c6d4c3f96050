//! [`Ec2`] on aws-sdk-ec2: one method per EC2 call, bounded retries and
//! timeouts (see the module above).

use std::{net::Ipv4Addr, time::Duration};

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use ipnet::Ipv4Net;

use super::{
    convert::{convert, parse_ip, parse_prefix, sdk_err},
    eni_description, CreateEniRequest, Ec2, Ec2Error, Eni, EniStatus, MAX_ATTEMPTS,
    OPERATION_TIMEOUT, TAG_CREATED_AT, TAG_INSTANCE_ID,
};
use crate::warm_pool::Limits;

/// [`Ec2`] on aws-sdk-ec2.
#[derive(Clone, Debug)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
}

impl SdkEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        Self { client }
    }

    /// A client from the standard AWS configuration chain (credentials from
    /// the environment, web identity or IMDS; `AWS_ENDPOINT_URL_EC2`
    /// honoured), in `region`, with our bounded retries and timeouts.
    pub async fn from_env(region: &str) -> Self {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .retry_config(Self::retry_config())
            .timeout_config(Self::timeout_config())
            .load()
            .await;
        Self::new(aws_sdk_ec2::Client::new(&conf))
    }

    pub fn retry_config() -> aws_config::retry::RetryConfig {
        aws_config::retry::RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5))
    }

    pub fn timeout_config() -> aws_config::timeout::TimeoutConfig {
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(OPERATION_TIMEOUT)
            .build()
    }

    async fn describe(&self, op: &'static str, filters: Vec<Filter>) -> Result<Vec<Eni>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: a node has a handful of ENIs; 100 pages is far beyond it.
        for _ in 0..100 {
            let r = self
                .client
                .describe_network_interfaces()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_err(op, None, e))?;
            for ni in r.network_interfaces() {
                out.push(convert(op, ni)?);
            }
            match r.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(Ec2Error::new(
            op,
            None,
            "more than 100 pages of network interfaces",
        ))
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

#[async_trait]
impl Ec2 for SdkEc2 {
    async fn instance_limits(&self, instance_type: &str) -> Result<Limits, Ec2Error> {
        const OP: &str = "DescribeInstanceTypes";
        let t = aws_sdk_ec2::types::InstanceType::from(instance_type);
        let r = self
            .client
            .describe_instance_types()
            .instance_types(t)
            .send()
            .await
            .map_err(|e| sdk_err(OP, None, e))?;
        let info = r
            .instance_types()
            .first()
            .and_then(|i| i.network_info())
            .ok_or_else(|| {
                Ec2Error::new(OP, None, format!("no network info for {instance_type}"))
            })?;
        let max_enis = info.maximum_network_interfaces().unwrap_or(0);
        let per_eni = info.ipv4_addresses_per_interface().unwrap_or(0);
        if max_enis < 1 || per_eni < 1 {
            return Err(Ec2Error::new(
                OP,
                None,
                format!("{instance_type}: implausible limits {max_enis} ENIs x {per_eni} IPv4"),
            ));
        }
        Ok(Limits {
            max_enis: max_enis as u32,
            ipv4_per_eni: per_eni as u32,
        })
    }

    async fn instance_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        self.describe(
            "DescribeNetworkInterfaces",
            vec![filter("attachment.instance-id", instance_id)],
        )
        .await
    }

    async fn leaked_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let enis = self
            .describe(
                "DescribeNetworkInterfaces",
                vec![
                    filter(&format!("tag:{TAG_INSTANCE_ID}"), instance_id),
                    filter("status", "available"),
                ],
            )
            .await?;
        // Filter again: a fake or an older moto may ignore some filters.
        Ok(enis
            .into_iter()
            .filter(|e| e.status == EniStatus::Available && e.ours(instance_id) && !e.no_manage())
            .collect())
    }

    async fn create_eni(&self, req: &CreateEniRequest) -> Result<Eni, Ec2Error> {
        const OP: &str = "CreateNetworkInterface";
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::NetworkInterface)
            .tags(
                Tag::builder()
                    .key(TAG_INSTANCE_ID)
                    .value(&req.instance_id)
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(TAG_CREATED_AT)
                    .value(&req.created_at)
                    .build(),
            )
            .build();
        let mut call = self
            .client
            .create_network_interface()
            .subnet_id(&req.subnet_id)
            .description(eni_description(&req.instance_id))
            .set_groups(Some(req.security_groups.clone()).filter(|g| !g.is_empty()))
            .tag_specifications(tags);
        if req.secondary_ips > 0 {
            call = call.secondary_private_ip_address_count(req.secondary_ips as i32);
        }
        if req.prefixes > 0 {
            call = call.ipv4_prefix_count(req.prefixes as i32);
        }
        let r = call.send().await.map_err(|e| sdk_err(OP, None, e))?;
        let ni = r
            .network_interface()
            .ok_or_else(|| Ec2Error::new(OP, None, "no network interface in the answer"))?;
        convert(OP, ni)
    }

    async fn attach_eni(
        &self,
        eni: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const OP: &str = "AttachNetworkInterface";
        let r = self
            .client
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance_id)
            .device_index(device_index as i32)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        r.attachment_id()
            .map(str::to_string)
            .ok_or_else(|| Ec2Error::new(OP, Some(eni), "no attachment id in the answer"))
    }

    async fn set_delete_on_termination(&self, eni: &str, attachment: &str) -> Result<(), Ec2Error> {
        const OP: &str = "ModifyNetworkInterfaceAttribute";
        let change = aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment)
            .delete_on_termination(true)
            .build();
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni)
            .attachment(change)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        Ok(())
    }

    async fn assign_ips(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let r = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .secondary_private_ip_address_count(count as i32)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        r.assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address())
            .map(|s| parse_ip(OP, Some(eni), s))
            .collect()
    }

    async fn assign_prefixes(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses(prefixes)";
        let r = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .ipv4_prefix_count(count as i32)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        r.assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix())
            .map(|s| parse_prefix(OP, Some(eni), s))
            .collect()
    }

    async fn unassign_ips(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses";
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(ips.iter().map(|i| i.to_string()).collect()))
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        Ok(())
    }

    async fn unassign_prefixes(&self, eni: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses(prefixes)";
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni)
            .set_ipv4_prefixes(Some(prefixes.iter().map(|p| p.to_string()).collect()))
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        Ok(())
    }

    async fn detach_eni(&self, attachment: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DetachNetworkInterface";
        self.client
            .detach_network_interface()
            .attachment_id(attachment)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(attachment), e))?;
        Ok(())
    }

    async fn delete_eni(&self, eni: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DeleteNetworkInterface";
        self.client
            .delete_network_interface()
            .network_interface_id(eni)
            .send()
            .await
            .map_err(|e| sdk_err(OP, Some(eni), e))?;
        Ok(())
    }
}
