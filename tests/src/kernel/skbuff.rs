//! `struct __sk_buff` from the kernel UAPI (`linux/bpf.h`), the context a TC
//! program sees. `BPF_PROG_TEST_RUN` takes one in (a few writable fields)
//! and gives one back, which is how a test reads `cb`. Defined here because
//! aya does not export it and the UAPI layout is fixed.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkBuff {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    pub flow_keys: u64,
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    pub sk: u64,
    pub gso_size: u32,
    pub tstamp_type: u8,
    pub _pad: [u8; 3],
    pub hwtstamp: u64,
}

const _: () = assert!(std::mem::size_of::<SkBuff>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuff, cb) == 48);
const _: () = assert!(std::mem::offset_of!(SkBuff, flow_keys) == 144);
const _: () = assert!(std::mem::offset_of!(SkBuff, hwtstamp) == 184);

impl SkBuff {
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), no padding (asserted layout), plain integers.
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; every bit pattern is a valid SkBuff.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) })
    }
}
