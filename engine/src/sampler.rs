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

/// Run the sampler from `noise`. `velocity(x, t)` returns the model's `(v_cond, v_uncond)`
/// for latents `x` at time `t` (the caller batches the two halves, conditional first, as the
/// reference does); `on_step(i, x)` sees the latents after each step.
pub async fn sample(
    noise: Tensor<3>,
    schedule: &FlowMatchSchedule,
    guidance_scale: f32,
    mut velocity: impl AsyncFnMut(Tensor<3>, f32) -> (Tensor<3>, Tensor<3>),
    mut on_step: impl FnMut(usize, &Tensor<3>),
) -> Tensor<3> {
    let mut x = noise;
    for i in 0..schedule.steps() {
        let dt = schedule.dt(i);
        if dt != 0.0 {
            let (v_cond, v_uncond) = velocity(x.clone(), schedule.model_t(i)).await;
            let v = v_uncond.clone() + (v_cond - v_uncond) * guidance_scale;
            x = x + v * dt;
        }
        on_step(i, &x);
    }
    x
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
}
