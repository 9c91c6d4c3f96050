//! trunkline on AWS: node discovery from IMDS and the EC2 warm pool of pod
//! IPs. Kept apart from the agent so that the heavy SDK builds once and
//! agent edits don't rebuild it.

pub mod ec2;
pub mod env;
pub mod fake;
pub mod imds;
pub mod reconciler;
pub mod warm_pool;

pub use ec2::{Ec2, Ec2Error, Eni, SdkEc2};
pub use env::PoolEnv;
pub use imds::{Imds, NodeInfo};
pub use reconciler::{
    trunk_of, Kick, NodeConfig, PassReport, PoolEni, PoolSink, Reconciler, TrunkEni,
};
pub use warm_pool::{Limits, Plan};
