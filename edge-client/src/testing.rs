//! Test hooks (feature `testing`, for the loopback harness and the fault tests): inject a
//! [`Fault`] into a client, or record the exact input it gives each round ([`ProvidedInput`]).
//! Not part of the library's production surface.

use cohort_net::ClientTransport;
use tokio::sync::mpsc;

use crate::run::{Context, Contribution, RunConfig, RunError, drive};
pub use crate::testing_hooks::{Fault, Hooks, ProvidedInput};
use crate::trainer::Trainer;

/// [`crate::run::run`] with test hooks.
pub async fn run_with_hooks(
    transport: &ClientTransport,
    config: &RunConfig,
    trainer: Box<dyn Trainer>,
    contributions: Option<mpsc::UnboundedSender<Contribution>>,
    hooks: Hooks,
) -> Result<u32, RunError> {
    let mut trainer = Some(trainer);
    let mut ctx = Context::desktop(config);
    ctx.hooks = hooks;
    drive(
        transport,
        config,
        &ctx,
        &mut trainer,
        &mut None,
        contributions.as_ref(),
    )
    .await
}
