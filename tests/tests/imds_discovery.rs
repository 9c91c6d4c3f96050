//! Node discovery (`trunkline_aws::imds`) against the IMDSv2 fixture: the
//! token flow, every path the agent reads, an ENI appearing at run time,
//! and retries when the service fails.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Result;
use testbed::fakes::imds_fixture::{FixtureEni, ImdsFixture};
use trunkline_aws::imds::Imds;

const MAC0: &str = "02:11:22:33:44:50";
const MAC1: &str = "02:11:22:33:44:51";

fn eni(mac: &str, dev: u32, ips: &[&str]) -> FixtureEni {
    FixtureEni {
        mac: mac.into(),
        device_number: dev,
        interface_id: format!("eni-{dev:04}"),
        subnet_id: "subnet-0a".into(),
        subnet_cidr: "10.0.0.0/20".into(),
        local_ipv4s: ips.iter().map(|i| i.parse().unwrap()).collect(),
        prefixes: vec![],
        security_groups: vec!["sg-1".into(), "sg-2".into()],
        vpc_cidrs: vec!["10.0.0.0/16".into(), "100.64.0.0/16".into()],
    }
}

fn fixture() -> Result<ImdsFixture> {
    let f = ImdsFixture::start()?;
    f.set_instance("i-0123456789abcdef0", "m5.xlarge", "us-east-1a", MAC0);
    f.set_eni(&eni(MAC0, 0, &["10.0.0.10", "10.0.0.11", "10.0.0.12"]));
    Ok(f)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A raw HTTP/1.1 GET; returns the status code.
fn raw_get(f: &ImdsFixture, path: &str, token: Option<&str>) -> Result<u16> {
    let mut s = TcpStream::connect(f.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let t = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: imds\r\n{t}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(code)
}

#[test]
fn fixture_requires_a_token() -> Result<()> {
    let f = fixture()?;
    assert_eq!(raw_get(&f, "/latest/meta-data/instance-id", None)?, 401);
    assert_eq!(
        raw_get(&f, "/latest/meta-data/instance-id", Some("forged"))?,
        401
    );
    let (_, unauthorized, _) = f.counters();
    assert_eq!(unauthorized, 2);
    Ok(())
}

#[test]
fn discovers_the_node_and_a_new_eni() -> Result<()> {
    let f = fixture()?;
    let imds = Imds::with_endpoint(&f.endpoint())?;
    runtime().block_on(async {
        let n = imds.discover().await?;
        assert_eq!(n.instance_id, "i-0123456789abcdef0");
        assert_eq!(n.instance_type, "m5.xlarge");
        assert_eq!(n.region, "us-east-1");
        assert_eq!(n.availability_zone, "us-east-1a");
        assert_eq!(n.primary_mac, MAC0);
        assert_eq!(n.enis.len(), 1);
        let p = n.primary_eni().expect("primary ENI");
        assert_eq!(p.device_number, 0);
        assert_eq!(p.interface_id, "eni-0000");
        assert_eq!(p.subnet_id, "subnet-0a");
        assert_eq!(p.subnet_cidr, "10.0.0.0/20".parse()?);
        assert_eq!(
            p.local_ipv4s,
            vec![
                Ipv4Addr::new(10, 0, 0, 10),
                Ipv4Addr::new(10, 0, 0, 11),
                Ipv4Addr::new(10, 0, 0, 12)
            ]
        );
        assert_eq!(p.security_groups, vec!["sg-1", "sg-2"]);
        assert!(p.prefixes.is_empty());
        assert_eq!(
            n.vpc_cidrs,
            vec!["10.0.0.0/16".parse()?, "100.64.0.0/16".parse()?]
        );
        let (_, unauthorized, puts) = f.counters();
        assert_eq!(unauthorized, 0, "every GET carried the token");
        assert_eq!(puts, 1, "one token for the whole discovery");

        // An ENI attached at run time (with a delegated prefix), listed
        // before the primary by IMDS: discovery orders by device number.
        let mut e1 = eni(MAC1, 1, &["10.0.1.20"]);
        e1.prefixes = vec!["10.0.2.0/28".into()];
        f.set_eni(&e1);
        let n = imds.discover().await?;
        assert_eq!(n.enis.len(), 2);
        assert_eq!(n.enis[1].mac, MAC1);
        assert_eq!(n.enis[1].device_number, 1);
        assert_eq!(n.enis[1].prefixes, vec!["10.0.2.0/28".parse()?]);
        // And a VPC CIDR added later shows up on the next read.
        let mut e0 = eni(MAC0, 0, &["10.0.0.10"]);
        e0.vpc_cidrs.push("10.1.0.0/16".into());
        f.set_eni(&e0);
        assert_eq!(imds.vpc_cidrs(MAC0).await?.len(), 3);
        anyhow::Ok(())
    })
}

#[test]
fn retries_through_failures_and_expired_tokens() -> Result<()> {
    let f = fixture()?;
    let imds = Imds::with_endpoint(&f.endpoint())?;
    runtime().block_on(async {
        // The first 2 requests (token PUTs) answer 500.
        f.fail_next(2);
        let n = match imds.discover().await {
            Ok(n) => n,
            Err(e) => anyhow::bail!("{e}; fixture counters {:?}", f.counters()),
        };
        assert_eq!(n.instance_id, "i-0123456789abcdef0");
        let (requests, _, _) = f.counters();
        assert!(requests >= 2 + 15, "{requests} requests");

        // Tokens forgotten (TTL passed): a 401, a new token, success.
        f.expire_tokens();
        let (_, _, puts_before) = f.counters();
        assert_eq!(imds.get("instance-type").await?, "m5.xlarge");
        let (_, unauthorized, puts) = f.counters();
        assert!(unauthorized >= 1);
        assert!(puts > puts_before, "a fresh token was fetched");

        // Down for good: an error naming the path, within bounded time.
        f.fail_next(u32::MAX);
        let t0 = Instant::now();
        let err = imds.get("instance-id").await.expect_err("IMDS is down");
        assert!(err.to_string().contains("instance-id"), "{err}");
        // Bounded by the client's 30 s operation timeout.
        assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
        anyhow::Ok(())
    })
}
