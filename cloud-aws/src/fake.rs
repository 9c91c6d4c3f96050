//! An in-memory EC2 behind the [`Ec2`] trait, for tests of what moto does
//! not model (prefix delegation, per-ENI slot limits, attach limits,
//! injected failures). It enforces the instance type's limits the way EC2
//! does, so a plan that over-allocates fails here as it would on AWS.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::{
    ec2::{
        Attachment, CreateEniRequest, Ec2, Ec2Error, Eni, EniStatus, TAG_CREATED_AT,
        TAG_INSTANCE_ID,
    },
    warm_pool::Limits,
};

#[derive(Debug)]
pub struct FakeState {
    pub enis: BTreeMap<String, Eni>,
    pub limits: Limits,
    /// Next host number in the subnet for single IPs; prefixes come from
    /// the upper half of the subnet.
    next_ip: u32,
    next_prefix: u32,
    next_id: u32,
    pub subnet: Ipv4Net,
    /// Fail every call while true (EC2 unreachable).
    pub down: bool,
    /// Fail this many next calls (throttled).
    pub fail_next: u32,
    /// Every call made, by operation name.
    pub calls: Vec<&'static str>,
}

#[derive(Clone, Debug)]
pub struct FakeEc2 {
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeEc2 {
    /// An instance `instance_id` with its primary ENI (device 0) in `subnet`.
    pub fn new(instance_id: &str, limits: Limits, subnet: Ipv4Net) -> Self {
        let me = Self {
            state: Arc::new(Mutex::new(FakeState {
                enis: BTreeMap::new(),
                limits,
                next_ip: 10,
                next_prefix: 0,
                next_id: 0,
                subnet,
                down: false,
                fail_next: 0,
                calls: Vec::new(),
            })),
        };
        let mut s = me.lock();
        let mut primary = s.new_eni(BTreeMap::new());
        primary.status = EniStatus::InUse;
        primary.attachment = Some(Attachment {
            id: "attach-primary".into(),
            instance_id: Some(instance_id.into()),
            device_index: 0,
        });
        s.enis.insert(primary.id.clone(), primary);
        drop(s);
        me
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an ENI as someone else would (for no_manage/leak tests).
    pub fn insert(&self, eni: Eni) {
        self.lock().enis.insert(eni.id.clone(), eni);
    }

    fn call(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, FakeState>, Ec2Error> {
        let mut s = self.lock();
        s.calls.push(op);
        if s.down {
            return Err(Ec2Error::new(
                op,
                None,
                "connection refused (fake EC2 down)",
            ));
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            let mut e = Ec2Error::new(op, None, "Request limit exceeded.");
            e.code = Some("RequestLimitExceeded".into());
            return Err(e);
        }
        Ok(s)
    }
}

impl FakeState {
    fn ip(&mut self) -> Ipv4Addr {
        let a = Ipv4Addr::from(u32::from(self.subnet.network()) + self.next_ip);
        self.next_ip += 1;
        a
    }

    fn prefix(&mut self) -> Ipv4Net {
        let half = 1u32 << (31 - u32::from(self.subnet.prefix_len()));
        let base = u32::from(self.subnet.network()) + half + self.next_prefix * 16;
        self.next_prefix += 1;
        Ipv4Net::new(Ipv4Addr::from(base), 28).unwrap_or(self.subnet)
    }

    pub fn new_eni(&mut self, tags: BTreeMap<String, String>) -> Eni {
        self.next_id += 1;
        let n = self.next_id;
        let primary_ip = self.ip();
        Eni {
            id: format!("eni-fake{n:04}"),
            mac: format!("02:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff),
            status: EniStatus::Available,
            attachment: None,
            subnet_id: "subnet-fake".into(),
            description: String::new(),
            interface_type: "interface".into(),
            primary_ip: Some(primary_ip),
            secondary_ips: vec![],
            prefixes: vec![],
            tags,
        }
    }

    fn eni(&mut self, op: &'static str, id: &str) -> Result<&mut Eni, Ec2Error> {
        self.enis
            .get_mut(id)
            .ok_or_else(|| Ec2Error::new(op, Some(id), "InvalidNetworkInterfaceID.NotFound"))
    }

    fn room(&self, op: &'static str, eni: &Eni, more: usize) -> Result<(), Ec2Error> {
        let used = eni.secondary_ips.len() + eni.prefixes.len() + more;
        if used > self.limits.slots_per_eni() as usize {
            let mut e = Ec2Error::new(op, Some(&eni.id), "PrivateIpAddressLimitExceeded");
            e.code = Some("PrivateIpAddressLimitExceeded".into());
            return Err(e);
        }
        Ok(())
    }
}

#[async_trait]
impl Ec2 for FakeEc2 {
    async fn instance_limits(&self, _instance_type: &str) -> Result<Limits, Ec2Error> {
        Ok(self.call("DescribeInstanceTypes")?.limits)
    }

    async fn instance_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let s = self.call("DescribeNetworkInterfaces")?;
        Ok(s.enis
            .values()
            .filter(|e| {
                e.attachment.as_ref().and_then(|a| a.instance_id.as_deref()) == Some(instance_id)
            })
            .cloned()
            .collect())
    }

    async fn leaked_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let s = self.call("DescribeNetworkInterfaces")?;
        Ok(s.enis
            .values()
            .filter(|e| e.status == EniStatus::Available && e.ours(instance_id))
            .cloned()
            .collect())
    }

    async fn create_eni(&self, req: &CreateEniRequest) -> Result<Eni, Ec2Error> {
        const OP: &str = "CreateNetworkInterface";
        let mut s = self.call(OP)?;
        let tags = [
            (TAG_INSTANCE_ID.to_string(), req.instance_id.clone()),
            (TAG_CREATED_AT.to_string(), req.created_at.clone()),
        ]
        .into();
        let mut e = s.new_eni(tags);
        e.description = crate::ec2::eni_description(&req.instance_id);
        s.room(OP, &e, (req.secondary_ips + req.prefixes) as usize)?;
        for _ in 0..req.secondary_ips {
            let ip = s.ip();
            e.secondary_ips.push(ip);
        }
        for _ in 0..req.prefixes {
            let p = s.prefix();
            e.prefixes.push(p);
        }
        s.enis.insert(e.id.clone(), e.clone());
        Ok(e)
    }

    async fn attach_eni(
        &self,
        eni: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const OP: &str = "AttachNetworkInterface";
        let mut s = self.call(OP)?;
        let attached: Vec<u32> = s
            .enis
            .values()
            .filter_map(|e| e.attachment.as_ref())
            .filter(|a| a.instance_id.as_deref() == Some(instance_id))
            .map(|a| a.device_index)
            .collect();
        if attached.len() as u32 >= s.limits.max_enis {
            return Err(Ec2Error::new(OP, Some(eni), "AttachmentLimitExceeded"));
        }
        if attached.contains(&device_index) {
            return Err(Ec2Error::new(OP, Some(eni), "device index in use"));
        }
        let id = format!("attach-{eni}");
        let e = s.eni(OP, eni)?;
        if e.attachment.is_some() {
            return Err(Ec2Error::new(OP, Some(eni), "already attached"));
        }
        e.attachment = Some(Attachment {
            id: id.clone(),
            instance_id: Some(instance_id.into()),
            device_index,
        });
        e.status = EniStatus::InUse;
        Ok(id)
    }

    async fn set_delete_on_termination(
        &self,
        eni: &str,
        _attachment: &str,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "ModifyNetworkInterfaceAttribute";
        let mut s = self.call(OP)?;
        s.eni(OP, eni)?;
        Ok(())
    }

    async fn assign_ips(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let mut s = self.call(OP)?;
        let e = s.eni(OP, eni)?.clone();
        s.room(OP, &e, count as usize)?;
        let ips: Vec<Ipv4Addr> = (0..count).map(|_| s.ip()).collect();
        s.eni(OP, eni)?.secondary_ips.extend(&ips);
        Ok(ips)
    }

    async fn assign_prefixes(&self, eni: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses(prefixes)";
        let mut s = self.call(OP)?;
        let e = s.eni(OP, eni)?.clone();
        s.room(OP, &e, count as usize)?;
        let p: Vec<Ipv4Net> = (0..count).map(|_| s.prefix()).collect();
        s.eni(OP, eni)?.prefixes.extend(&p);
        Ok(p)
    }

    async fn unassign_ips(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses";
        let mut s = self.call(OP)?;
        let e = s.eni(OP, eni)?;
        if let Some(missing) = ips.iter().find(|i| !e.secondary_ips.contains(i)) {
            return Err(Ec2Error::new(
                OP,
                Some(eni),
                format!("{missing} not assigned"),
            ));
        }
        e.secondary_ips.retain(|i| !ips.contains(i));
        Ok(())
    }

    async fn unassign_prefixes(&self, eni: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses(prefixes)";
        let mut s = self.call(OP)?;
        let e = s.eni(OP, eni)?;
        e.prefixes.retain(|p| !prefixes.contains(p));
        Ok(())
    }

    async fn detach_eni(&self, attachment: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DetachNetworkInterface";
        let mut s = self.call(OP)?;
        let e = s
            .enis
            .values_mut()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment))
            .ok_or_else(|| Ec2Error::new(OP, Some(attachment), "no such attachment"))?;
        if e.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(Ec2Error::new(
                OP,
                Some(attachment),
                "cannot detach the primary ENI",
            ));
        }
        e.attachment = None;
        e.status = EniStatus::Available;
        Ok(())
    }

    async fn delete_eni(&self, eni: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DeleteNetworkInterface";
        let mut s = self.call(OP)?;
        if s.eni(OP, eni)?.attachment.is_some() {
            return Err(Ec2Error::new(
                OP,
                Some(eni),
                "InvalidNetworkInterface.InUse",
            ));
        }
        s.enis.remove(eni);
        Ok(())
    }
}
