//! The device's differential-privacy checks (issue 11), on top of
//! [`cohort_task::device_privacy`]: before taking part in a task, its `[privacy]` section is
//! re-planned here and refused when it is above the owner's limit (`cohort-edge run
//! --max-epsilon`, [`crate::run::RunConfig::max_epsilon`]), has no DP while a limit is set, or
//! its round log records more ε than allowed; each round is refused when its parameters give
//! less noise than the task declares. The update is then encoded by the task's codec (clipped,
//! and in distributed mode noised, on this device).

use cohort_protocol::{RoundConfig, RoundLogEntry, TaskPlan};
pub use cohort_task::device_privacy::{DevicePrivacy, PrivacyRefusal};
use cohort_task::privacy::PrivacyCodec;

/// Checks a task the coordinator accepted this device for; `None`: no DP and no limit.
pub fn check_task(
    plan: &TaskPlan,
    log: &[RoundLogEntry],
    max_epsilon: Option<f64>,
) -> Result<Option<DevicePrivacy>, PrivacyRefusal> {
    let checked = cohort_task::device_privacy::check_task(plan, log, max_epsilon);
    match &checked {
        Ok(Some(dp)) => {
            tracing::info!(task = %plan.task.0, "differential privacy checked: {}", dp.plan())
        }
        Err(e) => tracing::warn!(task = %plan.task.0, reason = %e, "refusing the task"),
        Ok(None) => {}
    }
    checked
}

/// Checks one round of a DP task and returns the codec to encode the update with.
pub fn check_round(
    dp: &DevicePrivacy,
    plan: &TaskPlan,
    config: &RoundConfig,
) -> Result<PrivacyCodec, PrivacyRefusal> {
    dp.check_round(&plan.task.0, config)
}
