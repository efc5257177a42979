//! A model's lifecycle, `not_loaded → loading(progress) → ready | failed(reason)`, with retry
//! from `failed`, and the guard that turns "not ready yet" into a typed error carrying
//! `retry_after` (the original studio's HTTP 503 contract, which the app and server both map).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::progress::LoadProgress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ModelStatus {
    NotLoaded,
    Loading { progress: LoadProgress },
    Ready,
    Failed { reason: String },
}

impl ModelStatus {
    pub fn name(&self) -> &'static str {
        match self {
            ModelStatus::NotLoaded => "not_loaded",
            ModelStatus::Loading { .. } => "loading",
            ModelStatus::Ready => "ready",
            ModelStatus::Failed { .. } => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReadyKind {
    /// Loading is under way: try again after `retry_after_s`.
    Loading,
    /// Not loading and not ready (never started, or failed): a retry of the load is needed.
    NotReady,
}

/// A request for a model that cannot be served yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
#[error("model {model} is {}: {message}", match kind { NotReadyKind::Loading => "still loading", NotReadyKind::NotReady => "not ready" })]
pub struct NotReady {
    pub model: String,
    pub kind: NotReadyKind,
    /// Seconds after which asking again makes sense.
    pub retry_after_s: u32,
    pub message: String,
}

/// Bounds for `retry_after`: never busy-loop, never make a user wait long past readiness.
pub const RETRY_AFTER_MIN_S: u32 = 1;
pub const RETRY_AFTER_MAX_S: u32 = 30;
/// Used when no estimate exists yet (the original studio's value).
pub const RETRY_AFTER_DEFAULT_S: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("model {model}: cannot {action} while {status}")]
pub struct InvalidTransition {
    pub model: String,
    pub action: &'static str,
    pub status: &'static str,
}

/// One model's slot: its status and, when ready, the model itself.
#[derive(Debug)]
pub struct ModelState<M> {
    id: String,
    status: ModelStatus,
    model: Option<M>,
}

impl<M: Clone> ModelState<M> {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            status: ModelStatus::NotLoaded,
            model: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn status(&self) -> &ModelStatus {
        &self.status
    }

    /// Begin a load, from `not_loaded` or (as a retry) from `failed`.
    pub fn start_loading(&mut self, progress: LoadProgress) -> Result<(), InvalidTransition> {
        match self.status {
            ModelStatus::NotLoaded | ModelStatus::Failed { .. } => {
                self.status = ModelStatus::Loading { progress };
                Ok(())
            }
            _ => Err(self.invalid("start loading")),
        }
    }

    pub fn update_progress(&mut self, update: &LoadProgress) -> Result<(), InvalidTransition> {
        match &mut self.status {
            ModelStatus::Loading { progress } => {
                *progress = update.clone();
                Ok(())
            }
            _ => Err(self.invalid("report progress")),
        }
    }

    pub fn set_ready(&mut self, model: M) -> Result<(), InvalidTransition> {
        match self.status {
            ModelStatus::Loading { .. } => {
                self.status = ModelStatus::Ready;
                self.model = Some(model);
                Ok(())
            }
            _ => Err(self.invalid("become ready")),
        }
    }

    pub fn set_failed(&mut self, reason: impl Into<String>) -> Result<(), InvalidTransition> {
        match self.status {
            ModelStatus::Loading { .. } => {
                self.status = ModelStatus::Failed {
                    reason: reason.into(),
                };
                self.model = None;
                Ok(())
            }
            _ => Err(self.invalid("fail")),
        }
    }

    /// The guard: the model when ready, otherwise why not and when to ask again.
    pub fn get(&self) -> Result<M, NotReady> {
        match (&self.status, &self.model) {
            (ModelStatus::Ready, Some(model)) => Ok(model.clone()),
            (ModelStatus::Loading { progress }, _) => Err(NotReady {
                model: self.id.clone(),
                kind: NotReadyKind::Loading,
                retry_after_s: retry_after(progress),
                message: format!("{:.0}% loaded", progress.fraction() * 100.0),
            }),
            (ModelStatus::Failed { reason }, _) => Err(NotReady {
                model: self.id.clone(),
                kind: NotReadyKind::NotReady,
                retry_after_s: RETRY_AFTER_DEFAULT_S,
                message: format!("loading failed: {reason}"),
            }),
            _ => Err(NotReady {
                model: self.id.clone(),
                kind: NotReadyKind::NotReady,
                retry_after_s: RETRY_AFTER_DEFAULT_S,
                message: "loading has not started".into(),
            }),
        }
    }

    fn invalid(&self, action: &'static str) -> InvalidTransition {
        InvalidTransition {
            model: self.id.clone(),
            action,
            status: self.status.name(),
        }
    }
}

/// When to ask again: the ETA when there is one, clamped to a sane range.
pub fn retry_after(progress: &LoadProgress) -> u32 {
    match progress.eta_s {
        Some(eta) if eta.is_finite() => {
            (eta.ceil() as u32).clamp(RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S)
        }
        _ => RETRY_AFTER_DEFAULT_S,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::progress::Phase;

    fn progress(done: u64, eta: Option<f64>) -> LoadProgress {
        let mut p = LoadProgress::new("shape", 1000, 4, 40);
        p.bytes_done = done;
        p.eta_s = eta;
        p
    }

    #[test]
    fn lifecycle_with_retry_from_failed() {
        let mut state = ModelState::<u32>::new("shape");
        assert_eq!(state.status(), &ModelStatus::NotLoaded);
        state.start_loading(progress(0, None)).unwrap();
        state.update_progress(&progress(500, Some(12.2))).unwrap();
        assert!(
            matches!(state.status(), ModelStatus::Loading { progress } if progress.bytes_done == 500)
        );
        state.set_failed("shard 2: truncated").unwrap();
        assert_eq!(state.status().name(), "failed");
        // Retry is allowed from failed, and only from there or not_loaded.
        state.start_loading(progress(0, None)).unwrap();
        assert!(state.start_loading(progress(0, None)).is_err());
        state.set_ready(7).unwrap();
        assert_eq!(state.get(), Ok(7));
        let err = state.start_loading(progress(0, None)).unwrap_err();
        assert_eq!(err.status, "ready");
        assert!(
            state.set_failed("late").is_err(),
            "a ready model cannot fail a load"
        );
    }

    #[test]
    fn guard_rejects_until_ready_with_retry_after() {
        let mut state = ModelState::<u32>::new("shape");
        let not_started = state.get().unwrap_err();
        assert_eq!(not_started.kind, NotReadyKind::NotReady);

        state.start_loading(progress(100, None)).unwrap();
        let early = state.get().unwrap_err();
        assert_eq!(early.kind, NotReadyKind::Loading);
        assert_eq!(
            early.retry_after_s, RETRY_AFTER_DEFAULT_S,
            "no estimate yet"
        );
        assert!(early.to_string().contains("still loading"), "{early}");

        state.update_progress(&progress(500, Some(12.2))).unwrap();
        assert_eq!(state.get().unwrap_err().retry_after_s, 13, "rounded-up ETA");
        state.update_progress(&progress(990, Some(0.01))).unwrap();
        assert_eq!(state.get().unwrap_err().retry_after_s, RETRY_AFTER_MIN_S);
        state.update_progress(&progress(1, Some(5000.0))).unwrap();
        assert_eq!(state.get().unwrap_err().retry_after_s, RETRY_AFTER_MAX_S);

        state.set_failed("sha256 mismatch").unwrap();
        let failed = state.get().unwrap_err();
        assert_eq!(failed.kind, NotReadyKind::NotReady);
        assert!(failed.message.contains("sha256 mismatch"));
    }

    #[test]
    fn status_serialises_for_the_app_and_server() {
        let json = serde_json::to_value(ModelStatus::Failed { reason: "x".into() }).unwrap();
        assert_eq!(json, serde_json::json!({"status": "failed", "reason": "x"}));
        let mut p = progress(250, Some(3.0));
        p.phase = Phase::Fetch;
        let json = serde_json::to_value(ModelStatus::Loading { progress: p }).unwrap();
        assert_eq!(json["status"], "loading");
        assert_eq!(json["progress"]["phase"], "fetch");
        assert_eq!(json["progress"]["bytes_done"], 250);
    }
}
