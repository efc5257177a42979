//! The runner: one per GPU. It takes the next job only when the GPU is idle (and, in a fleet,
//! when its models are ready), runs it under the job's deadline, and hands the outcome back
//! to the queue. Nothing a job does can take the runner down: a job that panics is failed
//! with the panic's message and the runner goes on.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::{Cause, Claim, JobError, JobQueue, Outcome, Pipeline, StopReason};

/// How a runner works.
#[derive(Debug, Clone, Default)]
pub struct RunnerOptions {
    /// A job still running after this is stopped at its next step (a failure).
    pub timeout: Option<Duration>,
    /// Ask for work only while the pipeline is ready (a fleet's worker: the queue is shared,
    /// another worker may run the job). The in-process queue admits jobs only when the models
    /// are ready, so its runner takes them as they come.
    pub wait_until_ready: bool,
    /// While this file exists, a job taken waits before it runs (tests and demos of a worker
    /// that dies mid-job).
    pub hold_while: Option<PathBuf>,
}

/// Take jobs from `queue` and run them on `pipeline`, one at a time, until the queue closes.
pub async fn work(queue: Arc<dyn JobQueue>, pipeline: Arc<dyn Pipeline>, options: RunnerOptions) {
    loop {
        if options.wait_until_ready {
            while !pipeline.ready() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let Some(claim) = queue.next().await else {
            return;
        };
        let outcome = run(&claim, pipeline.as_ref(), &options).await;
        if let Outcome::Failed { error, cause } = &outcome {
            tracing::warn!("{} failed ({cause:?}): {error}", claim.id);
        }
        queue.finish(claim, outcome).await;
    }
}

async fn run(claim: &Claim, pipeline: &dyn Pipeline, options: &RunnerOptions) -> Outcome {
    let control = &claim.control;
    if let Some(hold) = &options.hold_while {
        while hold.exists() && !control.should_stop() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The deadline: a timer on another task asks the job to stop at its next step.
    let deadline = options.timeout.map(|timeout| {
        let control = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            control.stop(StopReason::TimedOut { after: timeout });
        })
    });
    let outcome = if control.should_stop() {
        Ok(Err(JobError::Stopped))
    } else {
        AssertUnwindSafe(pipeline.run(claim.input.clone(), control))
            .catch_unwind()
            .await
    };
    if let Some(deadline) = deadline {
        deadline.abort();
    }
    let failed = |cause, error| Outcome::Failed { error, cause };
    match (outcome, control.stop_reason()) {
        (Ok(Ok(file)), _) => Outcome::Done(file),
        // A job that stopped when asked, or failed after the ask: the ask is why.
        (Ok(Err(_)), Some(reason @ StopReason::TimedOut { .. })) => {
            failed(Cause::Server, format!("the job {reason}"))
        }
        (Ok(Err(_)), Some(reason)) => Outcome::Stopped(reason),
        (Ok(Err(JobError::Input(error))), None) => failed(Cause::Input, error),
        (Ok(Err(JobError::Internal(error))), None) => failed(Cause::Server, error),
        (Ok(Err(JobError::Stopped)), None) => failed(
            Cause::Server,
            "the job stopped without being asked to".into(),
        ),
        (Err(panic), _) => failed(
            Cause::Server,
            format!("the job crashed: {}", panic_message(panic.as_ref())),
        ),
    }
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
