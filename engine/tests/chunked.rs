//! The models under a tiny buffer budget: every attention-score and MLP-hidden tensor stays
//! within it and the outputs equal the unsliced ones, on the CPU backend and wgpu. (A binary of
//! its own: the budget is process-wide.)

use burn::tensor::{Tensor, TensorData};
use orfeas_engine::models::{
    DEFAULT_BUFFER_BUDGET, largest_intermediate_bytes, reset_largest_intermediate,
    set_buffer_budget,
};

mod fixtures;
use fixtures::*;

#[test]
fn the_models_stay_within_a_small_buffer_budget() {
    let io = Io::read("sampler.io.safetensors");
    let (image, shape) = io.tensor("image_in");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let dims: [usize; 3] = noise_shape.try_into().unwrap();
    let points: Vec<[f32; 3]> = (0..300)
        .map(|i| {
            let t = i as f32 / 300.0;
            [t * 2.0 - 1.0, (t * 17.0).sin(), (t * 5.0).cos()]
        })
        .collect();
    for (name, device) in devices() {
        for denoiser in ["dit21", "dit20"] {
            let model = shape_model(denoiser, &device);
            let run = || {
                futures::executor::block_on(async {
                    let cond = model.condition(&image, shape[2], shape[3]);
                    let noise =
                        Tensor::<3>::from_data(TensorData::new(noise.clone(), dims), &device);
                    let latents = model
                        .sample(cond, noise, 3, 5.0, |_, _| {}, || false)
                        .await
                        .unwrap();
                    let kv = model.key_values(latents);
                    model
                        .field_at(&points, &kv)
                        .await
                        .expect("the field reads back")
                })
            };
            set_buffer_budget(DEFAULT_BUFFER_BUDGET);
            reset_largest_intermediate();
            let whole = run();
            let largest_whole = largest_intermediate_bytes();
            let budget = 4096;
            assert!(
                largest_whole > budget,
                "the fixture run needs more than {budget} B"
            );
            set_buffer_budget(budget);
            reset_largest_intermediate();
            let sliced = run();
            let largest = largest_intermediate_bytes();
            set_buffer_budget(DEFAULT_BUFFER_BUDGET);
            let diff = max_abs_diff(&whole, &sliced);
            eprintln!(
                "{name}/{denoiser}: largest intermediate {largest_whole} B → {largest} B \
                 under a {budget} B budget; field differs by {diff:.1e}"
            );
            assert!(
                largest <= budget,
                "{name}/{denoiser}: {largest} B > {budget} B"
            );
            assert!(
                diff <= 1e-5,
                "{name}/{denoiser}: sliced field differs by {diff}"
            );
        }
    }
}
