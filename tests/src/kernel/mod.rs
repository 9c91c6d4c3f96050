//! The kernel object and what runs it without a node: loading, private
//! bpffs mounts, golden packets through `BPF_PROG_TEST_RUN`, kernel facts.

pub mod bpffs;
pub mod facts;
pub mod golden;
pub mod object;
pub mod packets;
pub mod port_search;
pub mod skbuff;
