//! `orfeas serve` as a real process on a loopback port, driven by a real HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{
    Hold, Server, b64, client, converted_fixture_model, corrupt_a_shard, finished_job, fixtures,
    get_text, header, health, model, peak_rss, png, raw_get, still_serves, wait_ready,
    web_and_secret,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_at_once_503s_while_loading_then_runs_jobs() {
    let dir = tempfile::tempdir().unwrap();
    model(dir.path(), "weights", 4);
    converted_fixture_model(&dir.path().join("hunyuan"));
    // Loading is held (no shard is read) until the test removes the file.
    let hold = Hold::new();
    let server = Server::start(dir.path(), &hold.args());
    let client = client();
    let first = health(&client, &server).await;
    let first_answer = server.started.elapsed();
    eprintln!("first health answer {first_answer:?} after spawning the process");
    assert_eq!(first["status"], "healthy");
    assert_eq!(first["models_status"], "loading", "{first}");
    assert_eq!(first["processor"], json!({}));

    // 200 concurrent generation requests while loading: every one a 503 with Retry-After,
    // and health keeps answering in the middle of them.
    let body = json!({ "image": b64(&png(16, 16)) });
    let requests = (0..200).map(|_| {
        client
            .post(server.url("/api/generate-3d"))
            .json(&body)
            .send()
    });
    let healths = (0..10).map(|_| client.get(server.url("/api/health")).send());
    let (responses, health_responses) = tokio::join!(
        futures::future::join_all(requests),
        futures::future::join_all(healths)
    );
    for response in health_responses {
        assert_eq!(response.unwrap().status(), 200);
    }
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 503);
        let retry: u32 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry));
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["status"], "models_loading");
        assert_eq!(json["retry_after"], retry);
        assert!(json["error"].as_str().unwrap().contains("still loading"));
    }
    let loading = health(&client, &server).await;
    let progress = &loading["models"][0]["progress"];
    assert_eq!(
        loading["models"][0]["id"], "weights",
        "the smallest set loads first"
    );
    assert!(progress["bytes_total"].as_u64().unwrap() > 0, "{loading}");

    hold.release();
    let ready = wait_ready(&client, &server).await;
    assert_eq!(ready["models_ready"], true);
    assert_eq!(ready["processor"]["weights"]["tensors"], 4);
    for part in ["conditioner", "denoiser", "vae"] {
        let id = format!("hunyuan/{part}");
        assert!(
            ready["processor"][&id]["tensors"].as_u64().unwrap() > 0,
            "{ready}"
        );
    }

    // Ready: a request becomes a job with a status URL, and the job runs the fixture shape
    // model (converted from the official layout) to a mesh file.
    let cutout = std::fs::read(fixtures().join("preprocess_input_0.png")).unwrap();
    let request = json!({
        "image": b64(&cutout), "steps": 4, "octree_resolution": 32, "seed": 7, "format": "obj",
    });
    let (status, seen) = finished_job(&client, &server, &request).await;
    eprintln!("job states seen: {seen:?}");
    assert_eq!(status["status"], "done", "{status}");
    let result = client
        .get(server.url(status["result_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "model/obj");
    let obj = result.text().await.unwrap();
    let faces = obj.lines().filter(|l| l.starts_with("f ")).count();
    assert!(faces > 0, "an OBJ with faces");

    // The detail knob (the official API's `face_count`): the same job decimated to half its
    // faces, or stopped above that with a note where fewer would open the surface.
    let budget = faces / 2;
    assert!(budget >= 100, "{faces} faces: too few to decimate");
    let mut fewer = request.clone();
    fewer["face_count"] = json!(budget);
    let (status, _) = finished_job(&client, &server, &fewer).await;
    assert_eq!(status["status"], "done", "{status}");
    let decimated = get_text(&client, &server, status["result_url"].as_str().unwrap()).await;
    let kept = decimated.lines().filter(|l| l.starts_with("f ")).count();
    let notes = status["notes"].to_string();
    if kept > budget {
        assert!(
            notes.contains(&format!("kept {kept} faces of the {budget} asked for")),
            "{kept} faces over a budget of {budget}, and no note: {notes}"
        );
    } else {
        assert!(kept * 100 >= budget * 98, "{kept} faces for {budget}");
        assert!(!notes.contains("kept"), "{notes}");
    }
    // FlashVDM decoding (the official enable_flashvdm) on request: a mesh as well.
    let mut flashvdm = request.clone();
    flashvdm["flashvdm"] = json!(true);
    let (status, _) = finished_job(&client, &server, &flashvdm).await;
    assert_eq!(status["status"], "done", "{status}");
    let obj = get_text(&client, &server, status["result_url"].as_str().unwrap()).await;
    assert!(
        obj.lines().any(|l| l.starts_with("f ")),
        "a FlashVDM mesh with faces"
    );
    // More views go with the picture (JSON keys, multipart fields: left, back, right); this
    // single-image model fails the job naming the view, and a view given twice is refused.
    let mut with_view = request.clone();
    with_view["back"] = json!(b64(&cutout));
    let (status, _) = finished_job(&client, &server, &with_view).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("back view needs a multi-view (2mv) model"),
        "{status}"
    );
    // Refused by name before anything runs: a view twice, a view that is not base64, a face
    // budget out of range.
    for (body, reason) in [
        (
            json!({ "image": b64(&cutout), "front": b64(&cutout) }),
            "front view is given twice",
        ),
        (
            json!({ "image": b64(&cutout), "left": "not base64!" }),
            "the left view is not base64",
        ),
        (
            json!({ "image": b64(&cutout), "face_count": 5 }),
            "face_count must be 100–1000000, got 5",
        ),
        (
            json!({ "image": b64(&cutout), "flashvdm": "maybe" }),
            "flashvdm: expected true/false, got \"maybe\"",
        ),
    ] {
        let refused = client
            .post(server.url("/api/generate-3d"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{reason}");
        let answer = refused.json::<serde_json::Value>().await.unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{answer}"
        );
    }

    // `?wait=true` answers with the file itself: a GLB that re-parses, the same for the same seed.
    let glb = |seed: u64| {
        let mut request = request.clone();
        request["format"] = json!("glb");
        request["seed"] = json!(seed);
        let response = client
            .post(server.url("/api/generate-3d?wait=true"))
            .json(&request)
            .send();
        async move {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "model/gltf-binary");
            response.bytes().await.unwrap().to_vec()
        }
    };
    let (first, again) = (glb(7).await, glb(7).await);
    assert_eq!(first, again, "same seed, same mesh");
    let gltf = gltf::Gltf::from_slice(&first).expect("the GLB re-parses");
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    assert!(primitive.indices().unwrap().count() / 3 > 0);

    // An opaque photo on a server with no ISNet: the one policy of every front-end (the
    // engine's `ImageToMesh`) takes the whole picture and the job's status says so; the same
    // photo with remove_background=false gives the same mesh.
    let opaque = json!({ "image": b64(&std::fs::read(fixtures().join("isnet_input_0.png")).unwrap()),
        "steps": 2, "octree_resolution": 32 });
    let (status, _) = finished_job(&client, &server, &opaque).await;
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(
        status["notes"],
        json!(["no background removal: the whole picture is taken as the object"]),
        "{status}"
    );
    let used_whole = client
        .get(server.url(status["result_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut whole = opaque.clone();
    whole["remove_background"] = json!(false);
    let response = client
        .post(server.url("/api/generate-3d?wait=true"))
        .json(&whole)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), used_whole);
    // PLY, as the CLI and the app write it.
    let mut ply = whole.clone();
    ply["format"] = json!("ply");
    let response = client
        .post(server.url("/api/generate-3d?wait=true"))
        .json(&ply)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ply");
    assert!(
        response
            .bytes()
            .await
            .unwrap()
            .starts_with(b"ply\nformat binary_little_endian")
    );

    let missing = client
        .get(server.url("/api/jobs/job-999"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shape_model_generation_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    model(dir.path(), "weights", 1);
    let server = Server::start(dir.path(), &[]);
    let client = client();
    let ready = wait_ready(&client, &server).await;
    assert_eq!(ready["models_status"], "ready");
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(&json!({ "image": b64(&png(16, 16)) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "models_not_ready");
    assert!(
        body["error"].as_str().unwrap().contains("orfeas convert"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_or_413_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &["--max-upload-mb", "1"]);
    let client = client();
    wait_ready(&client, &server).await;
    let post = |body: reqwest::RequestBuilder| async move {
        let response = body.send().await.unwrap();
        let status = response.status().as_u16();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        (
            status,
            json["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    let url = server.url("/api/generate-3d");
    let cases = [
        (
            client
                .post(&url)
                .json(&json!({ "image": b64(b"hello, not a picture") })),
            400,
            "not an image",
        ),
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .body("{\"image\": "),
            400,
            "malformed JSON",
        ),
        (
            client.post(&url).json(&json!({ "steps": 4 })),
            400,
            "missing",
        ),
        (
            client.post(&url).json(&json!({ "image": "%%%" })),
            400,
            "not base64",
        ),
        (
            client
                .post(&url)
                .json(&json!({ "image": b64(&png(8, 8)), "steps": 0 })),
            400,
            "steps",
        ),
        (
            client
                .post(&url)
                .json(&json!({ "image": b64(&png(8, 8)), "format": "fbx" })),
            400,
            "glb, obj, stl or ply",
        ),
        (
            client
                .post(&url)
                .json(&json!({ "image": b64(&png(8, 8)[..40]) })),
            400,
            "image",
        ),
        (client.post(&url).body("plain text"), 400, "multipart"),
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(vec![b' '; 2 << 20]),
            413,
            "larger than 1 MB",
        ),
        (
            client
                .post(&url)
                .multipart(reqwest::multipart::Form::new().part(
                    "image",
                    reqwest::multipart::Part::bytes(vec![0u8; 2 << 20]).file_name("big.png"),
                )),
            413,
            "",
        ),
        (
            client
                .post(&url)
                .header("content-type", "multipart/form-data; boundary=zzz")
                .body("--zzz\r\nbroken"),
            400,
            "multipart",
        ),
    ];
    for (request, expected, reason) in cases {
        let (status, error) = post(request).await;
        assert_eq!(status, expected, "{reason}: {error}");
        assert!(error.contains(reason), "expected {reason:?} in {error:?}");
    }
    // A good multipart upload with form fields is accepted.
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png(8, 8)).file_name("x.png"),
        )
        .text("steps", "3")
        .text("format", "stl")
        .text("remove_background", "false");
    let response = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 202);
    // The server is still fine.
    assert_eq!(health(&client, &server).await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_model_is_not_ready_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    corrupt_a_shard(&model(dir.path(), "shape", 1));
    let server = Server::start(dir.path(), &[]);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let h = loop {
        let h = health(&client, &server).await;
        if h["models_status"] != "loading" {
            break h;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["models_status"], "not_ready");
    assert_eq!(h["models"][0]["status"], "failed");
    assert!(
        h["models"][0]["error"].as_str().unwrap().contains("sha256"),
        "{h}"
    );
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(&json!({ "image": b64(&png(8, 8)) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["status"], "models_not_ready");
    assert!(json["error"].as_str().unwrap().contains("not ready"));
    // Health names the model, never where it lives on this machine.
    let folder = dir.path().to_str().unwrap();
    assert!(!h.to_string().contains(folder), "a path in health: {h}");

    // The shard is put right: a retry loads the model without a restart.
    let retry = |model: &str| {
        client
            .post(server.url(&format!("/api/models/retry?model={model}")))
            .send()
    };
    assert_eq!(retry("nothing-by-that-name").await.unwrap().status(), 404);
    corrupt_a_shard(&dir.path().join("shape")); // flips the byte back
    let started = retry("shape").await.unwrap();
    assert_eq!(started.status(), 202);
    let body: Value = started.json().await.unwrap();
    assert_eq!(body["models"], json!(["shape"]), "{body}");
    // Once is enough: a second retry while it loads is refused.
    assert_eq!(retry("shape").await.unwrap().status(), 409);
    let ready = wait_ready(&client, &server).await;
    assert_eq!(ready["models"][0]["status"], "ready", "{ready}");
    assert_eq!(retry("shape").await.unwrap().status(), 409);
    still_serves_health(&client, &server).await;
}

/// Health within a second (for servers without a shape model).
async fn still_serves_health(client: &reqwest::Client, server: &Server) {
    let started = Instant::now();
    assert_eq!(health(client, server).await["status"], "healthy");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// An upload that stops arriving is answered 408 once `--upload-timeout-s` has passed, and
/// its connection closed: a slow client cannot hold a request open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_answered_408_within_the_upload_timeout() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &["--upload-timeout-s", "1"]);
    let client = client();
    wait_ready(&client, &server).await;
    let address = server.base.trim_start_matches("http://").to_string();
    let (response, waited) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let started = Instant::now();
        write!(
            stream,
            "POST /api/generate-3d HTTP/1.1\r\nHost: {address}\r\nContent-Type: \
             application/json\r\nContent-Length: 100000\r\n\r\n{{\"image\": \""
        )
        .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        (
            String::from_utf8_lossy(&response).to_string(),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("longer than 1 s"), "{response}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_fit_is_refused_before_it_loads() {
    // The converted fixture shape model against a device with almost no memory for weights:
    // its three sets are failed at start-up with the reason (needs, has, what would fit) and
    // not one shard is read; a generation request is not ready with that reason.
    let dir = tempfile::tempdir().unwrap();
    let model = converted_fixture_model(&dir.path().join("hunyuan3d"));
    // Had a shard been read, its broken hash would be the error.
    corrupt_a_shard(&model.join("denoiser"));
    let server = Server::start(
        dir.path(),
        &["--gpu-memory-gib", "0.0001", "--dtype", "f32"],
    );
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let h = loop {
        let h = health(&client, &server).await;
        if h["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "failed")
        {
            break h;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["models_status"], "not_ready", "{h}");
    let models = h["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{h}");
    for model in models {
        assert_eq!(model["status"], "failed", "{h}");
        let error = model["error"].as_str().unwrap();
        assert!(
            error.contains("does not fit")
                && error.contains("in f32")
                && error.contains("as configured")
                && error.contains("MiB"),
            "{error}"
        );
    }
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(&json!({ "image": b64(&png(8, 8)), "remove_background": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let json: Value = response.json().await.unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("does not fit"),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_app_and_shards_with_ranges_and_etags_and_no_traversal() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let shards = model(&models, "shape", 1);
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    std::fs::write(
        web.join("index.html"),
        "<!DOCTYPE html><title>Orfeas</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    let server = Server::start(&models, &["--web", web.to_str().unwrap()]);

    let (status, _, body) = raw_get(&server.base, "/", "");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("Orfeas"));

    let shard = std::fs::read_dir(&shards)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".safetensors"))
        .unwrap();
    let on_disk = std::fs::read(shards.join(&shard)).unwrap();
    let path = format!("/models/shape/{shard}");
    let (status, head, body) = raw_get(&server.base, &path, "");
    assert_eq!(status, 200);
    assert_eq!(body, on_disk);
    assert_eq!(
        header(&head, "content-length"),
        Some(on_disk.len().to_string().as_str())
    );
    let etag = header(&head, "etag").expect("an ETag").to_string();

    let (status, head, body) = raw_get(&server.base, &path, "Range: bytes=100-199\r\n");
    assert_eq!(status, 206);
    assert_eq!(body, on_disk[100..200]);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 100-199/{}", on_disk.len()).as_str())
    );
    let (status, _, body) = raw_get(&server.base, &path, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 304);
    assert!(body.is_empty());

    for sneaky in [
        "/models/../secret.txt",
        "/models/%2e%2e/secret.txt",
        "/models/shape/../../secret.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/models/..%2fsecret.txt",
    ] {
        let (status, _, body) = raw_get(&server.base, sneaky, "");
        assert_eq!(status, 404, "{sneaky}");
        assert!(!String::from_utf8_lossy(&body).contains("top secret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_to_loopback_by_default_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    model(dir.path(), "shape", 1);
    let mut server = Server::start(dir.path(), &[]);
    assert!(server.base.starts_with("http://127.0.0.1:"));
    let client = client();
    wait_ready(&client, &server).await;
    let (_, stderr) = server.terminate(Duration::from_secs(20));
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_written_for_the_original_studio_works_unchanged() {
    // The client sends an opaque picture, so the server needs background removal as well as a
    // shape model, as the original studio had.
    let Some(isnet) = common::isnet_weights() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&isnet, dir.path().join("isnet-medium")).unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    // Loading is held until the client has seen it and been told to come back.
    let hold = Hold::new();
    let server = Server::start(dir.path(), &hold.args());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/original_client.mjs");
    let base = server.base.clone();
    let (stdout, status, stderr) = tokio::task::spawn_blocking(move || {
        let mut client = Command::new("node")
            .arg(&script)
            .arg(&base)
            .env("POLL_MS", "200")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (installed by scripts/setup.sh)");
        let mut stdout = String::new();
        for line in BufReader::new(client.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line == "generate 503 models_loading" {
                hold.release();
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let output = client.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (stdout, output.status, stderr)
    })
    .await
    .unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"models_status loading"), "{stdout}");
    assert!(lines.contains(&"generate 503 models_loading"), "{stdout}");
    assert!(lines.contains(&"models_status ready"), "{stdout}");
    let loading = lines
        .iter()
        .position(|l| *l == "models_status loading")
        .unwrap();
    let ready = lines
        .iter()
        .position(|l| *l == "models_status ready")
        .unwrap();
    assert!(loading < ready);
    assert!(
        lines.last().unwrap().starts_with("generate accepted"),
        "{stdout}"
    );
}

/// A PNG whose header claims `width × height` (the pixels are never there).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A JPEG whose frame header claims `width × height`.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([90, 90, 90]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_png_and_a_tall_jpeg_are_refused_naming_the_limit() {
    // 32 000 000 × 2 is 64 MP (within the pixel count) and once killed the process: the
    // recentring squares the longer side. 65 000 × 980 asked for 17 GB.
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &[]);
    let client = client();
    wait_ready(&client, &server).await;
    for (what, bytes) in [
        ("32 000 000 × 2 PNG", png_claiming(32_000_000, 2)),
        ("65 000 × 980 JPEG", jpeg_claiming(980, 65_000)),
    ] {
        let response = client
            .post(server.url("/api/generate-3d"))
            .json(&json!({ "image": b64(&bytes), "remove_background": false }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{what}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("8192"), "{what}: {error}");
    }
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chunked_body_is_cut_off_with_413_and_memory_stays_bounded() {
    // A chunked multipart body (no Content-Length) that never ends: the server answers 413
    // once the limit is passed, closes the connection, and its memory does not follow.
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &["--max-upload-mb", "4"]);
    let client = client();
    wait_ready(&client, &server).await;
    let before = peak_rss(&server);
    let address = server.base.trim_start_matches("http://").to_string();
    let (status, sent) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "POST /api/generate-3d HTTP/1.1\r\nHost: {address}\r\nContent-Type: \
             multipart/form-data; boundary=zzz\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let head = "--zzz\r\nContent-Disposition: form-data; name=\"image\"; \
                    filename=\"a.png\"\r\n\r\n";
        write!(stream, "{:x}\r\n{head}\r\n", head.len()).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        // Up to 200 MB; the server stops us long before.
        while sent < 200 << 20 {
            let ok = write!(stream, "{:x}\r\n", chunk.len()).is_ok()
                && stream.write_all(&chunk).is_ok()
                && stream.write_all(b"\r\n").is_ok();
            if !ok {
                break;
            }
            sent += chunk.len();
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.get(9..12).and_then(|s| s.parse::<u16>().ok());
        (status, sent)
    })
    .await
    .unwrap();
    let after = peak_rss(&server);
    eprintln!(
        "endless chunked upload: cut off after {} MB sent; server peak RSS {} → {} MiB",
        sent >> 20,
        before >> 20,
        after >> 20
    );
    assert_eq!(status, Some(413), "413 for the endless body");
    assert!(
        sent < 100 << 20,
        "cut off early, not after {} MB",
        sent >> 20
    );
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "the server's memory grew by {} MiB",
        (after - before) >> 20
    );
    still_serves(&client, &server).await;
}

/// A client still sending an oversize body reads the 413, not a reset connection: the server
/// reads (and discards) what remains of a body up to three times the limit before it closes.
/// Before it did, a plain client (reqwest) got "broken pipe" now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversize_body_reads_the_413() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &["--max-upload-mb", "1"]);
    let client = client();
    wait_ready(&client, &server).await;
    let url = server.url("/api/generate-3d");
    for round in 0..20 {
        let size = (5 << 19) + round * 4096; // ~2.5 MB
        let json = client
            .post(&url)
            .header("content-type", "application/json")
            .body(vec![b' '; size]);
        let form = client
            .post(&url)
            .multipart(reqwest::multipart::Form::new().part(
                "image",
                reqwest::multipart::Part::bytes(vec![0u8; size]).file_name("big.png"),
            ));
        let chunked = client
            .post(&url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(
                (0..size / 65536).map(|_| Ok::<_, std::io::Error>(vec![b' '; 65536])),
            )));
        for (kind, request) in [("json", json), ("multipart", form), ("chunked", chunked)] {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}, {kind}: {e:?}"));
            assert_eq!(response.status(), 413, "round {round}, {kind}");
        }
    }
    still_serves(&client, &server).await;
}

/// A raw request with our own Host and headers; the status.
fn raw_status(base: &str, request: &str) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8_lossy(&response)[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_cannot_post_and_a_rebinding_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), &["--allow-origin", "https://studio.example"]);
    let client = client();
    wait_ready(&client, &server).await;
    let own = server.base.clone();
    let body = json!({ "image": b64(&png(8, 8)), "remove_background": false });
    let post = |origin: &str| {
        client
            .post(server.url("/api/generate-3d"))
            .header("origin", origin)
            .json(&body)
            .send()
    };
    // Any page the kiosk's browser opens: refused.
    let refused = post("http://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    let text: Value = refused.json().await.unwrap();
    assert!(
        text["error"].as_str().unwrap().contains("evil.example"),
        "{text}"
    );
    assert!(!text.to_string().contains("job_id"));
    // The app itself, and an allowed origin: accepted.
    assert_eq!(post(&own).await.unwrap().status(), 202);
    assert_eq!(post("https://studio.example").await.unwrap().status(), 202);
    // No CORS headers: another origin's page cannot read the answers.
    let health = client
        .get(server.url("/api/health"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        health
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");
    // DNS rebinding: the page's own name in Host, pointing at 127.0.0.1.
    let rebinding = raw_status(
        &server.base,
        "GET /api/health HTTP/1.1\r\nHost: evil.example:8000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(rebinding, 403);
    let loopback = raw_status(
        &server.base,
        "GET /api/health HTTP/1.1\r\nHost: localhost:8000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(loopback, 200);
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_folder_and_dotfiles_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let (web, secret) = web_and_secret();
    std::fs::write(web.path().join(".env"), "TOKEN=x").unwrap();
    std::fs::create_dir(web.path().join(".git")).unwrap();
    std::fs::write(web.path().join(".git/config"), "[core]").unwrap();
    std::os::unix::fs::symlink(secret.path().join("key"), web.path().join("key.txt")).unwrap();
    std::os::unix::fs::symlink(secret.path(), web.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(web.path().join("index.html"), web.path().join("alias.html"))
        .unwrap();
    let server = Server::start(dir.path(), &["--web", web.path().to_str().unwrap()]);
    let client = client();
    wait_ready(&client, &server).await;
    for path in [
        "/.env",
        "/.git/config",
        "/key.txt",
        "/outside/key",
        "/hunyuan/.hidden",
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(!response.text().await.unwrap().contains("secret"), "{path}");
    }
    // Inside links still work; the page carries its policy and nosniff.
    let page = client.get(server.url("/alias.html")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = client.get(server.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval' 'sha256-"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    // Health names models, not where they live.
    let h = health(&client, &server).await.to_string();
    assert!(!h.contains(dir.path().to_str().unwrap()), "{h}");
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_running_job_at_its_next_step() {
    // A long job (100 steps at octree 256 on the CPU backend: over a minute here) is stopped
    // at its next step by SIGTERM; the process exits within seconds, not after the job.
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let mut server = Server::start(dir.path(), &[]);
    let client = client();
    wait_ready(&client, &server).await;
    let job: Value = client
        .post(server.url("/api/generate-3d"))
        .json(&json!({
            "image": b64(&png(32, 32)), "steps": 100, "octree_resolution": 256,
            "remove_background": false,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = server.url(job["status_url"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        if status["status"] == "running" && status["step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took, stderr) = server.terminate(Duration::from_secs(15));
    eprintln!("exited {took:?} after SIGTERM");
    assert!(stderr.contains("1 job(s) cancelled"), "{stderr}");
}
