//! aws-sdk-ec2's answers and errors as this crate's types; a field EC2
//! should always fill but did not is an error naming the call, not a panic.

use std::net::Ipv4Addr;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use ipnet::Ipv4Net;

use super::{Attachment, Ec2Error, Eni, EniStatus};

pub(super) fn sdk_err<E>(
    op: &'static str,
    eni: Option<&str>,
    e: aws_sdk_ec2::error::SdkError<E>,
) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    Ec2Error {
        op,
        eni: eni.map(str::to_string),
        code: e.code().map(str::to_string),
        message: DisplayErrorContext(&e).to_string(),
    }
}

pub(super) fn parse_ip(op: &'static str, eni: Option<&str>, s: &str) -> Result<Ipv4Addr, Ec2Error> {
    s.parse().map_err(|_| {
        Ec2Error::new(
            op,
            eni,
            format!("EC2 returned an invalid IPv4 address {s:?}"),
        )
    })
}

pub(super) fn parse_prefix(
    op: &'static str,
    eni: Option<&str>,
    s: &str,
) -> Result<Ipv4Net, Ec2Error> {
    s.parse().map_err(|_| {
        Ec2Error::new(
            op,
            eni,
            format!("EC2 returned an invalid IPv4 prefix {s:?}"),
        )
    })
}

pub(super) fn convert(
    op: &'static str,
    ni: &aws_sdk_ec2::types::NetworkInterface,
) -> Result<Eni, Ec2Error> {
    let id = ni
        .network_interface_id()
        .ok_or_else(|| Ec2Error::new(op, None, "network interface without an id"))?
        .to_string();
    let mut primary_ip = None;
    let mut secondary_ips = Vec::new();
    for a in ni.private_ip_addresses() {
        let Some(s) = a.private_ip_address() else {
            continue;
        };
        let ip = parse_ip(op, Some(&id), s)?;
        if a.primary() == Some(true) {
            primary_ip = Some(ip);
        } else {
            secondary_ips.push(ip);
        }
    }
    if primary_ip.is_none() {
        primary_ip = ni
            .private_ip_address()
            .map(|s| parse_ip(op, Some(&id), s))
            .transpose()?;
        secondary_ips.retain(|ip| Some(*ip) != primary_ip);
    }
    let prefixes = ni
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix())
        .map(|s| parse_prefix(op, Some(&id), s))
        .collect::<Result<Vec<_>, _>>()?;
    let status = match ni.status().map(|s| s.as_str()) {
        Some("available") => EniStatus::Available,
        Some("in-use") => EniStatus::InUse,
        _ => EniStatus::Other,
    };
    let attachment = ni.attachment().and_then(|a| {
        Some(Attachment {
            id: a.attachment_id()?.to_string(),
            instance_id: a.instance_id().map(str::to_string),
            device_index: u32::try_from(a.device_index().unwrap_or(0)).unwrap_or(0),
        })
    });
    Ok(Eni {
        mac: ni.mac_address().unwrap_or_default().to_ascii_lowercase(),
        status,
        attachment,
        subnet_id: ni.subnet_id().unwrap_or_default().to_string(),
        description: ni.description().unwrap_or_default().to_string(),
        interface_type: ni
            .interface_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        primary_ip,
        secondary_ips,
        prefixes,
        tags: ni
            .tag_set()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        id,
    })
}
