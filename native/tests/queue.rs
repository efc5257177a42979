//! The job queue over real HTTP with a pipeline the test controls: queue full → 429, job
//! status and result, `?wait=true`. (The server binary's own pipeline cannot make meshes yet.)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::DType;
use orfeas::server::jobs::{JobInput, Jobs, MeshFile, Pipeline};
use orfeas::server::models::{Models, load_in_background};
use orfeas::server::{AppState, router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Finishes a job each time the test adds a permit; the mesh names the request's seed.
struct Gated {
    permits: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl Pipeline for Gated {
    async fn run(
        &self,
        input: JobInput,
        step: &(dyn Fn(u32, u32) + Send + Sync),
    ) -> Result<MeshFile, String> {
        step(1, input.params.steps.unwrap_or(30));
        self.permits
            .acquire()
            .await
            .map_err(|e| e.to_string())?
            .forget();
        Ok(MeshFile {
            format: input.params.format,
            bytes: format!("solid seed{}\nendsolid\n", input.params.seed).into_bytes(),
        })
    }
}

fn tiny_model(root: &Path) {
    let input = root.join("in.safetensors");
    let data: Vec<u8> = (0..1024u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1024], &data).unwrap();
    safetensors::serialize_to_file([("w".to_string(), view)], None, &input).unwrap();
    let options = orfeas_engine::weights::pack::PackOptions {
        model_id: "shape".into(),
        ..Default::default()
    };
    orfeas_engine::weights::pack::pack(&[input], &root.join("shape"), &options, |_, _| {}).unwrap();
}

fn png() -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 10, 10, 255]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_jobs_deliver_their_mesh() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let models = Arc::new(Models::discover(Some(dir.path())).unwrap());
    let cpu = orfeas::compute::open(
        orfeas::compute::Backend::Cpu,
        orfeas::compute::Precision::F32,
        None,
    )
    .unwrap();
    load_in_background(models.clone(), cpu.device, DType::F32, cpu.capacity, None)
        .join()
        .unwrap();
    let permits = Arc::new(Semaphore::new(0));
    let jobs = Jobs::start(
        1,
        Arc::new(Gated {
            permits: permits.clone(),
        }),
    );
    let state = Arc::new(AppState {
        models,
        jobs,
        max_upload_bytes: 1 << 20,
        started: Instant::now(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router(state, None, None))
            .await
            .unwrap();
    });
    let client = reqwest::Client::new();
    let submit = |seed: u64| {
        client
            .post(format!("{base}/api/generate-3d"))
            .json(&json!({ "image": png(), "seed": seed, "format": "stl", "steps": 7 }))
            .send()
    };

    // One job runs (held by the gate), one waits in the queue of 1, the next is refused.
    let first: Value = submit(1).await.unwrap().json().await.unwrap();
    let first_url = format!("{base}{}", first["status_url"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = client
            .get(&first_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "running" {
            assert_eq!(status["steps"], 7);
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second: Value = submit(2).await.unwrap().json().await.unwrap();
    let second_url = format!("{base}{}", second["status_url"].as_str().unwrap());
    let queued: Value = client
        .get(&second_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["position"], 0);
    let refused = submit(3).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["status"], "queue_full");

    // Release the first: its result is the mesh, with the right type.
    permits.add_permits(1);
    let result_url = format!("{base}{}", first["result_url"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = client.get(&result_url).send().await.unwrap();
        if response.status() != 409 {
            break response;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "model/stl");
    assert_eq!(response.text().await.unwrap(), "solid seed1\nendsolid\n");

    // `?wait=true` answers with the file itself once the job is done.
    permits.add_permits(2);
    let waited = client
        .post(format!("{base}/api/generate-3d?wait=true"))
        .json(&json!({ "image": png(), "seed": 9, "format": "obj" }))
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    assert_eq!(waited.headers()["content-type"], "model/obj");
    assert!(
        waited.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".obj\"")
    );
    assert_eq!(waited.text().await.unwrap(), "solid seed9\nendsolid\n");
}
