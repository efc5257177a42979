//! The flow-matching Euler sampler with classifier-free guidance, as the official Hunyuan3D
//! pipeline runs it. Its convention: t = 0 is pure noise, t = 1 is data, and the model predicts
//! the velocity v = data − noise. `sigmas = linspace(0, 1, N)` (shift 1) plus a final 1, the
//! model sees `t = (1000 σ) / 1000` in f32, and each step is `x += (σ[i+1] − σ[i]) · v` with
//! `v = v_uncond + g · (v_cond − v_uncond)`. The official loop also calls the model for the
//! last step, whose dt is 0; we skip that call, which leaves the result bit-identical.

use burn::tensor::Tensor;

/// The step schedule for `steps` inference steps.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchSchedule {
    /// `steps + 1` values in f32: numpy's `linspace(0, 1, steps)` then a final 1.
    pub sigmas: Vec<f32>,
    /// `1000 σ` in f32, one per step (the scheduler's timesteps).
    pub timesteps: Vec<f32>,
}

impl FlowMatchSchedule {
    pub fn new(steps: usize) -> Self {
        let steps = steps.max(1);
        let mut sigmas: Vec<f32> = if steps == 1 {
            vec![0.0]
        } else {
            // numpy: arange(n) * (1 / (n − 1)) in f64, the last point exactly 1, cast to f32.
            let step = 1.0 / (steps - 1) as f64;
            (0..steps)
                .map(|i| {
                    if i == steps - 1 {
                        1.0
                    } else {
                        (i as f64 * step) as f32
                    }
                })
                .collect()
        };
        let timesteps = sigmas.iter().map(|s| s * 1000.0).collect();
        sigmas.push(1.0);
        Self { sigmas, timesteps }
    }

    /// The turbo checkpoints' `ConsistencyFlowMatchEulerDiscreteScheduler` ladder: of
    /// `linspace(0, 1, 1000)`, the points `[0, 9, 19, …]` (`pcm_timesteps` of them), `steps` of
    /// those evenly spaced, then a final 1. Every step moves, so no model call is skipped.
    pub fn consistency(steps: usize, pcm_timesteps: usize) -> Self {
        let steps = steps.max(1);
        let pcm = pcm_timesteps.max(1);
        let train = 1000usize;
        let ratio = train / pcm;
        let base = |i: usize| i as f64 / (train - 1) as f64;
        let pcm_sigmas: Vec<f64> = std::iter::once(0)
            .chain((1..pcm).map(|i| i * ratio - 1))
            .map(base)
            .collect();
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|i| pcm_sigmas[(i as f64 * pcm as f64 / steps as f64).floor() as usize] as f32)
            .collect();
        let timesteps = sigmas.iter().map(|s| s * 1000.0).collect();
        sigmas.push(1.0);
        Self { sigmas, timesteps }
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The time the model is given at step `i`, as the reference computes it.
    pub fn model_t(&self, i: usize) -> f32 {
        self.timesteps[i] / 1000.0
    }

    /// The step's Euler increment, `σ[i+1] − σ[i]` in f32.
    pub fn dt(&self, i: usize) -> f32 {
        self.sigmas[i + 1] - self.sigmas[i]
    }
}

/// Seeded initial latents, `len` draws from N(0, 1): a ChaCha8 stream and rand_distr's
/// standard normal, so a seed gives the same noise on every platform and backend. (PyTorch's
/// generator cannot be reproduced; parity tests inject the reference noise instead.)
pub fn initial_noise(seed: u64, len: usize) -> Vec<f32> {
    use chacha20::rand_core::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = chacha20::ChaCha8Rng::seed_from_u64(seed);
    rand_distr::StandardNormal
        .sample_iter(&mut rng)
        .take(len)
        .collect()
}

/// Run the sampler from `noise`. `velocity(x, t)` returns the model's `(v_cond, v_uncond)`
/// for latents `x` at time `t` (the caller batches the two halves, conditional first, as the
/// reference does), or the model's error (e.g. a lost device); `on_step(i, x)` sees the latents
/// after each step. `should_stop` is checked before every model call: `None` when it said stop
/// (a cancelled job, a deadline; `|| false` runs to the end).
pub async fn sample<E>(
    noise: Tensor<3>,
    schedule: &FlowMatchSchedule,
    guidance_scale: f32,
    mut velocity: impl AsyncFnMut(Tensor<3>, f32) -> Result<(Tensor<3>, Tensor<3>), E>,
    mut on_step: impl FnMut(usize, &Tensor<3>),
    should_stop: impl Fn() -> bool,
) -> Result<Option<Tensor<3>>, E> {
    let mut x = noise;
    for i in 0..schedule.steps() {
        if should_stop() {
            return Ok(None);
        }
        let dt = schedule.dt(i);
        if dt != 0.0 {
            let (v_cond, v_uncond) = velocity(x.clone(), schedule.model_t(i)).await?;
            let v = v_uncond.clone() + (v_cond - v_uncond) * guidance_scale;
            x = x + v * dt;
        }
        on_step(i, &x);
    }
    Ok(Some(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_official_one() {
        let s = FlowMatchSchedule::new(4);
        assert_eq!(s.sigmas, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        assert_eq!(s.timesteps, vec![0.0, 333.33334, 666.6667, 1000.0]);
        assert_eq!(s.dt(3), 0.0, "the last step does not move");
        let fifty = FlowMatchSchedule::new(50);
        assert_eq!(fifty.sigmas.len(), 51);
        assert_eq!(fifty.sigmas[49], 1.0);
        assert_eq!(fifty.sigmas[1], (1.0f64 / 49.0) as f32);
    }

    #[test]
    fn the_consistency_ladder_is_the_turbo_one() {
        // pcm 100, 5 steps: points 0, 199, 399, 599, 799 of linspace(0, 1, 1000), then 1.
        let s = FlowMatchSchedule::consistency(5, 100);
        let expected: Vec<f32> = [0.0, 199.0, 399.0, 599.0, 799.0]
            .iter()
            .map(|i| (i / 999.0f64) as f32)
            .chain([1.0])
            .collect();
        assert_eq!(s.sigmas, expected);
        assert!((s.sigmas[1] - 0.1992).abs() < 1e-4);
        assert!((0..5).all(|i| s.dt(i) > 0.0), "every step moves");
    }

    #[test]
    fn noise_is_standard_normal_and_follows_the_seed() {
        let a = initial_noise(1234, 50_000);
        assert_eq!(a, initial_noise(1234, 50_000), "same seed, same noise");
        assert_ne!(
            a[..16],
            initial_noise(1235, 16)[..],
            "another seed, other noise"
        );
        assert_eq!(
            a[..100],
            initial_noise(1234, 100)[..],
            "a prefix of a longer draw"
        );
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }
}
