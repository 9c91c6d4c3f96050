//! Golden-packet harness: one program, one packet, through the real
//! verifier-checked program with `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun, TestRunOptions};
use dataplane_common::{Hook, Stats, VerdictRecord};
use trunkline_agent::dataplane::Dataplane;

use crate::skbuff::SkBuff;

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// What a program did with a packet.
#[derive(Debug)]
pub struct Outcome {
    /// The TC action the program returned.
    pub action: i32,
    /// The verdict record the program left in `cb` (incl. redirect target).
    pub verdict: Option<VerdictRecord>,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Time per run as measured by the kernel.
    pub duration_ns: u64,
}

/// A loaded object with private (unpinned) maps.
pub struct Golden {
    pub dataplane: Dataplane,
}

impl Golden {
    pub fn load() -> Self {
        let bytes = crate::object::bytes();
        let dataplane = Dataplane::load_unpinned(&bytes).expect("loading the eBPF object");
        Self { dataplane }
    }

    /// Runs `hook`'s program once on `packet`.
    pub fn run(&self, hook: Hook, packet: &[u8]) -> Outcome {
        self.run_repeat(hook, packet, 1)
    }

    /// Runs `hook`'s program `repeat` times on `packet` (for cost
    /// measurement); the outcome is the last run's.
    pub fn run_repeat(&self, hook: Hook, packet: &[u8], repeat: u32) -> Outcome {
        let prog = self.dataplane.program(hook).expect("program");
        let ctx_in = SkBuff::default();
        let mut ctx_out = [0u8; std::mem::size_of::<SkBuff>()];
        // Room for growth (a VLAN push adds 4 bytes).
        let mut data_out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(ctx_in.as_bytes()),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..Default::default()
        };
        let res = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        data_out.truncate(res.data_size_out as usize);
        let ctx = SkBuff::from_bytes(&ctx_out).expect("ctx_out");
        Outcome {
            action: res.return_value as i32,
            verdict: VerdictRecord::from_cb(&ctx.cb),
            data: data_out,
            duration_ns: res.duration.as_nanos() as u64,
        }
    }

    /// Counters of `hook`, summed over CPUs.
    pub fn stats(&self, hook: Hook) -> Stats {
        *self.dataplane.stats().expect("reading STATS").hook(hook)
    }

    pub fn reset_stats(&mut self) {
        self.dataplane.reset_stats().expect("resetting STATS");
    }
}
