//! `orfeas serve` under hostile input, round two: each attack run against the real binary on
//! a loopback port, then health must answer within a second and a normal job must complete.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{
    Server, b64, client, converted_fixture_model, corrupt_a_shard, header, health, model, peak_rss,
    png, raw_get, still_serves, wait_ready, web_and_secret,
};

/// A server over the converted fixture shape model, started with `extra`.
fn fixture_server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start(dir.path(), extra);
    (dir, server)
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Send `bytes` as they are on a fresh connection and read the answer to its end.
fn raw_exchange(server: &Server, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address(server)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and stop reading) before the whole request is sent.
    let _ = stream.write_all(bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    (
        head[9..12].parse().unwrap(),
        head,
        response[split + 4..].to_vec(),
    )
}

fn json_post(server: &Server, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        address(server),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_paths_are_judged_by_the_names_they_decode_to() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    // A writer's hidden partial file inside a model folder, and a page someone left there.
    let vae = dir.path().join("hunyuan/vae");
    std::fs::write(
        vae.join(".model-00001-of-00001.safetensors.partial"),
        "partial",
    )
    .unwrap();
    std::fs::write(vae.join("notes.html"), "<script>alert(1)</script>").unwrap();
    let (web, secret) = web_and_secret();
    std::fs::write(web.path().join(".secret"), "top secret").unwrap();
    std::os::unix::fs::symlink(secret.path(), web.path().join("out")).unwrap();
    let server = Server::start(dir.path(), &["--web", web.path().to_str().unwrap()]);
    let client = client();
    wait_ready(&client, &server).await;

    for path in [
        "/%2esecret",
        "/%2Esecret",
        "/o%75t/key",
        "/%6f%75%74/key",
        "/out%2fkey",
        "/models/hunyuan/vae/%2emodel-00001-of-00001.safetensors.partial",
        "/models/hunyuan/%76ae/%2emodel-00001-of-00001.safetensors.partial",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let (status, _, body) = raw_get(&server.base, path, "");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("secret") && !body.contains("partial"),
            "{path}"
        );
    }
    for path in ["/%zz", "/index.html%2", "/%ff", "/index.html%00"] {
        let (status, _, _) = raw_get(&server.base, path, "");
        assert_eq!(status, 400, "{path}");
    }
    // The app's page however its name is spelled: its policy (not framed), nosniff, and
    // revalidated every time (its name carries no hash).
    for path in ["/", "/index.html", "/%69ndex.html", "/index%2ehtml"] {
        let (status, head, body) = raw_get(&server.base, path, "");
        assert_eq!(status, 200, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("<script>1</script>"));
        let csp = header(&head, "content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no policy in {head}"));
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{path}");
    }
    // A page in the models' folder is inert: nothing runs, nothing frames it.
    let (status, head, _) = raw_get(&server.base, "/models/hunyuan/vae/notes.html", "");
    assert_eq!(status, 200);
    let csp = header(&head, "content-security-policy").expect("a policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    // A folder named without its slash is redirected (under its full path).
    let (status, head, _) = raw_get(&server.base, "/models/hunyuan", "");
    assert_eq!(status, 308);
    assert_eq!(header(&head, "location"), Some("/models/hunyuan/"));
    // Shards are still served, whole and in ranges.
    let index = std::fs::read(vae.join("model.safetensors.index.json")).unwrap();
    let (status, _, body) = raw_get(
        &server.base,
        "/models/hunyuan/vae/model.safetensors.index.json",
        "",
    );
    assert_eq!((status, body), (200, index));
    still_serves(&client, &server).await;
}

/// `pixels` (big-endian samples, as PNG stores them) of `width × height` as a PNG.
fn encode_png(pixels: &[u8], width: u32, height: u32, color: image::ExtendedColorType) -> Vec<u8> {
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::Cursor::new(&mut png),
        image::codecs::png::CompressionType::Default,
        image::codecs::png::FilterType::NoFilter,
    );
    image::ImageEncoder::write_image(encoder, pixels, width, height, color).unwrap();
    png
}

/// An 8000 × 8000 PNG (64 MP: 256 MB decoded), small on the wire.
fn huge_png() -> Vec<u8> {
    let image = image::RgbaImage::from_pixel(8000, 8000, image::Rgba([120, 60, 30, 255]));
    encode_png(image.as_raw(), 8000, 8000, image::ExtendedColorType::Rgba8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_decode_do_not_lift_the_decode_bound() {
    let (_dir, server) = fixture_server(&["--jobs-per-client", "8"]);
    let client = client();
    wait_ready(&client, &server).await;
    let picture = huge_png();
    eprintln!("the picture: {} KB", picture.len() >> 10);
    let body = serde_json::to_vec(&json!({
        "image": b64(&picture), "steps": 2, "octree_resolution": 16,
        "remove_background": false,
    }))
    .unwrap();
    let request = json_post(&server, "/api/generate-3d", &body);
    let before = peak_rss(&server);
    // Six clients send a 64 MP picture each and leave 0.1 s later, mid-decode.
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let request = request.clone();
            let address = address(&server);
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.write_all(&request).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    // Six decodes at two at a time take a few seconds; the peak is reached meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let peak = peak_rss(&server);
    let grown = peak.saturating_sub(before) >> 20;
    eprintln!(
        "peak RSS {} MB (was {} MB): +{grown} MB",
        peak >> 20,
        before >> 20
    );
    // Two decodes of 256 MB (plus their shrunk copies) at most; six at once would be 1.5 GB.
    assert!(grown < 700, "+{grown} MB: more than two decodes at once");
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_parameters_cost_their_bytes_and_errors_do_not_echo_them() {
    let (_dir, server) = fixture_server(&[]);
    let client = client();
    wait_ready(&client, &server).await;
    let image = b64(&png(32, 32));
    let before = peak_rss(&server);
    // 12 MiB of `steps`: an array of 1.5 million tiny objects.
    let mut body = format!("{{\"image\":\"{image}\",\"steps\":[").into_bytes();
    for i in 0..1_500_000 {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"a\":0}");
    }
    body.extend_from_slice(b"]}");
    let started = Instant::now();
    let (status, _, answer) = raw_exchange(&server, &json_post(&server, "/api/generate-3d", &body));
    let took = started.elapsed();
    let grown = peak_rss(&server).saturating_sub(before) >> 20;
    eprintln!(
        "array of objects: answered {status} in {took:?} with {} bytes, peak RSS +{grown} MB",
        answer.len()
    );
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let message = answer["error"].as_str().unwrap();
    let start: String = message.chars().take(200).collect();
    assert_eq!(status, 400, "{start}");
    assert!(
        message.contains("steps") && message.contains("expected a number"),
        "{start}"
    );
    assert!(message.len() < 300, "{} bytes: {start}…", message.len());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(grown < 150, "+{grown} MB for a 12 MiB body");

    // A 4 MB string where a number, a format or a flag goes: named, and quoted by its start.
    let long = "9".repeat(4 << 20);
    for field in ["steps", "format", "remove_background", "seed"] {
        let body = serde_json::to_vec(&json!({ "image": image, field: long })).unwrap();
        let (status, _, answer) =
            raw_exchange(&server, &json_post(&server, "/api/generate-3d", &body));
        assert_eq!(status, 400, "{field}");
        assert!(
            answer.len() < 400,
            "{field}: {} bytes answered",
            answer.len()
        );
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    // Nor does a long job id, Host or Origin come back whole.
    let long = "f".repeat(30_000);
    let requests = [
        format!(
            "GET /api/jobs/{long} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            address(&server)
        ),
        format!("GET /api/health HTTP/1.1\r\nHost: {long}.example\r\nConnection: close\r\n\r\n"),
        format!(
            "POST /api/models/retry HTTP/1.1\r\nHost: {}\r\nOrigin: http://{long}.example\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            address(&server)
        ),
    ];
    for (request, expected) in requests.iter().zip([404, 403, 403]) {
        let (status, _, answer) = raw_exchange(&server, request.as_bytes());
        assert_eq!(status, expected);
        assert!(answer.len() < 400, "{} bytes answered", answer.len());
    }
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_fields_are_capped() {
    let (_dir, server) = fixture_server(&[]);
    let client = client();
    wait_ready(&client, &server).await;
    let boundary = "B0und";
    let mut body = Vec::new();
    for _ in 0..200_000 {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut request = format!(
        "POST /api/generate-3d HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; \
         boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        address(&server),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let started = Instant::now();
    let (status, _, answer) = raw_exchange(&server, &request);
    let answer = String::from_utf8_lossy(&answer);
    eprintln!(
        "{} MB of fields answered {status} in {:?}",
        body.len() >> 20,
        started.elapsed()
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("more than 32 form fields"), "{answer}");
    still_serves(&client, &server).await;
}

/// Whether the server has closed `stream` (reads end or fail), waiting at most `wait`.
fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // the rest of an answer
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn open_descriptors(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_under_a_cap_below_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let server = Server::start_under(
        Some("ulimit -n 256"),
        dir.path(),
        &["--idle-timeout-s", "2", "--header-timeout-s", "3"],
    );
    let client = client();
    wait_ready(&client, &server).await;
    // 300 connections: a third send nothing, a third half a request head, a third a whole
    // request whose answer they read and then sit idle on.
    let mut held = Vec::new();
    let mut most = 0;
    for i in 0..300 {
        let mut stream = TcpStream::connect(address(&server)).unwrap();
        match i % 3 {
            0 => {}
            1 => stream
                .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap(),
            _ => {
                stream
                    .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(15)))
                    .unwrap();
                let mut buf = [0u8; 8192];
                let n = stream.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "connection {i}");
            }
        }
        held.push(stream);
        most = most.max(open_descriptors(&server));
    }
    // While they are all held: health still answers, within the time idle connections take
    // to be closed at the cap.
    let started = Instant::now();
    assert_eq!(health(&client, &server).await["status"], "healthy");
    let during = started.elapsed();
    most = most.max(open_descriptors(&server));
    // The server closes every one of them (idle, half a head, nothing sent).
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, stream) in held.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_by_server(stream, left.max(Duration::from_millis(10))),
            "connection {i} still open"
        );
    }
    eprintln!(
        "health during the attack: {during:?}; at most {most} descriptors open; all 300 \
         connections closed by the server"
    );
    assert!(during < Duration::from_secs(5), "health took {during:?}");
    assert!(most < 256, "{most} descriptors open");
    still_serves(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_whatever_clients_hold() {
    let dir = tempfile::tempdir().unwrap();
    converted_fixture_model(&dir.path().join("hunyuan"));
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html>").unwrap();
    std::fs::write(web.path().join("big.bin"), vec![7u8; 64 << 20]).unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            "--web",
            web.path().to_str().unwrap(),
            "--shutdown-grace-s",
            "2",
            "--idle-timeout-s",
            "600",
            "--header-timeout-s",
            "600",
            "--send-timeout-s",
            "600",
        ],
    );
    let client = client();
    wait_ready(&client, &server).await;
    // One client holds half a request head; another starts a 64 MB download and stops reading.
    let mut half = TcpStream::connect(address(&server)).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut stalled = TcpStream::connect(address(&server)).unwrap();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    let _ = stalled.read(&mut first).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (took, stderr) = server.terminate(Duration::from_secs(8));
    eprintln!("exited {took:?} after SIGTERM");
    assert!(
        stderr.contains("still open after the 2 s grace period"),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "left before the grace period: {took:?}"
    );
    drop((half, stalled));
}

/// A 16-bit RGB PNG of `width × height` in one colour, with an EXIF orientation (eXIf chunk).
fn deep_png_turned(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let pixels = vec![0x7777u16; (width * height * 3) as usize];
    let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut png = encode_png(&bytes, width, height, image::ExtendedColorType::Rgb16);
    let mut exif = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
    let mut typed = b"eXIf".to_vec();
    typed.extend_from_slice(&exif);
    let crc = crc32fast::hash(&typed);
    chunk.extend_from_slice(&typed);
    chunk.extend_from_slice(&crc.to_be_bytes());
    // After the signature (8) and IHDR (25).
    png.splice(33..33, chunk);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_turned_picture_costs_its_decoded_bytes_once() {
    let (_dir, server) = fixture_server(&[]);
    let client = client();
    wait_ready(&client, &server).await;
    // 7000 × 5000 at 16-bit RGB: 210 MB decoded, turned 90° by its EXIF orientation.
    let started = Instant::now();
    let picture = deep_png_turned(7000, 5000, 6);
    eprintln!(
        "the picture: {} KB (made in {:?})",
        picture.len() >> 10,
        started.elapsed()
    );
    let before = peak_rss(&server);
    let response = client
        .post(server.url("/api/generate-3d?wait=true"))
        .json(&json!({
            "image": b64(&picture), "steps": 2, "octree_resolution": 16,
            "remove_background": false, "format": "obj",
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let grown = peak_rss(&server).saturating_sub(before) >> 20;
    eprintln!("16-bit 7000×5000 turned: peak RSS +{grown} MB");
    // Its decoded bytes (210 MB) once; turning and converting it at full size doubled that.
    assert!(grown < 330, "+{grown} MB");

    // Deeper still: 64 MP at 16-bit RGBA (512 MB) is refused from its header, by its bytes.
    let mut claim = deep_png_turned(1, 1, 1);
    claim[16..20].copy_from_slice(&8000u32.to_be_bytes());
    claim[20..24].copy_from_slice(&8000u32.to_be_bytes());
    claim[25] = 6; // RGBA
    let crc = crc32fast::hash(&claim[12..29]);
    claim[29..33].copy_from_slice(&crc.to_be_bytes());
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(&json!({ "image": b64(&claim) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("8 bytes a pixel"),
        "{answer}"
    );
    still_serves(&client, &server).await;
}

/// A client whose connections come from `ip` (any address in 127.0.0.0/8 is this machine).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

/// A long job (stopped by the test): 100 steps at octree 256 on the CPU take minutes.
fn long_job() -> Value {
    json!({
        "image": b64(&png(32, 32)), "steps": 100, "octree_resolution": 256,
        "remove_background": false,
    })
}

/// Send a request head announcing a body, and part of it, from `ip`; the stream.
async fn partial_upload(server: &Server, ip: [u8; 4]) -> TcpStream {
    let mut stream = connect_from(ip, &address(server)).await;
    stream
        .write_all(
            format!(
                "POST /api/generate-3d HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{{\"image\": \"",
                address(server),
                8 << 20
            )
            .as_bytes(),
        )
        .unwrap();
    stream
}

/// A TCP connection from `ip` (an address of this machine) to `remote`: bound before it
/// connects (through tokio, as std cannot), so the server sees another client.
async fn connect_from(ip: [u8; 4], remote: &str) -> TcpStream {
    let remote: std::net::SocketAddr = remote.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    let stream = socket.connect(remote).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Whether an answer arrives on `stream` within `wait`: its status line.
fn answer_within(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

async fn post_job(client: &reqwest::Client, server: &Server) -> (u16, Value) {
    let response = client
        .post(server.url("/api/generate-3d"))
        .json(&long_job())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_gets_its_share_of_the_queue_and_places_are_reserved_before_uploads() {
    let (_dir, server) = fixture_server(&["--queue", "3", "--jobs-per-client", "2"]);
    let a = client_from([127, 0, 0, 1]);
    let b = client_from([127, 0, 0, 2]);
    wait_ready(&a, &server).await;
    let mut jobs = Vec::new();
    // A: one job running, one queued; a third is over its share.
    for _ in 0..2 {
        let (status, job) = post_job(&a, &server).await;
        assert_eq!(status, 202, "{job}");
        jobs.push(job["job_id"].as_str().unwrap().to_string());
    }
    let (status, refused) = post_job(&a, &server).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["status"], "client_share", "{refused}");
    // B still gets in.
    let (status, job) = post_job(&b, &server).await;
    assert_eq!(status, 202, "{job}");
    jobs.push(job["job_id"].as_str().unwrap().to_string());
    // One place is left. C starts an upload and takes it before its body is read; D is then
    // refused at once, without sending its body.
    let mut c = partial_upload(&server, [127, 0, 0, 3]).await;
    std::thread::sleep(Duration::from_millis(500));
    let mut d = partial_upload(&server, [127, 0, 0, 4]).await;
    let refused = answer_within(&mut d, Duration::from_secs(3)).expect("D is answered at once");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("queue_full"), "{refused}");
    assert_eq!(
        answer_within(&mut c, Duration::from_secs(1)),
        None,
        "C waits to send its body"
    );
    // C leaves: its place is free again.
    drop(c);
    drop(d);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, job) = post_job(&client_from([127, 0, 0, 5]), &server).await;
    assert_eq!(status, 202, "{job}");
    jobs.push(job["job_id"].as_str().unwrap().to_string());
    for id in &jobs {
        a.delete(server.url(&format!("/api/jobs/{id}")))
            .send()
            .await
            .unwrap();
    }
    // Cancelled jobs give their places back; a normal job runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: Vec<bool> = still_busy(&a, &server, &jobs).await;
        if running.iter().all(|r| !r) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serves(&a, &server).await;
}

/// For each job, whether it is still queued or running.
async fn still_busy(client: &reqwest::Client, server: &Server, jobs: &[String]) -> Vec<bool> {
    let mut out = Vec::new();
    for id in jobs {
        let status: Value = client
            .get(server.url(&format!("/api/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(matches!(
            status["status"].as_str(),
            Some("queued" | "running")
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_failed_model_are_spaced() {
    let dir = tempfile::tempdir().unwrap();
    corrupt_a_shard(&model(dir.path(), "shape", 1));
    let server = Server::start(dir.path(), &["--retry-interval-s", "3"]);
    let client = client();
    let failed = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = health(&client, &server).await;
            if h["models"][0]["status"] == "failed" {
                return;
            }
            assert!(Instant::now() < deadline, "{h}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    failed().await;
    let retry = || {
        client
            .post(server.url("/api/models/retry?model=shape"))
            .send()
    };
    // The first retry reloads it (and it fails again: the shard is still corrupt).
    assert_eq!(retry().await.unwrap().status(), 202);
    let first = Instant::now();
    failed().await;
    // Asked again and again meanwhile: refused with when to come back, never reloaded.
    let mut refused = 0;
    while first.elapsed() < Duration::from_secs(2) {
        let response = retry().await.unwrap();
        assert_eq!(response.status(), 429);
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3).contains(&wait), "Retry-After {wait}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "too_soon", "{body}");
        assert_eq!(
            health(&client, &server).await["models"][0]["status"],
            "failed"
        );
        refused += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{refused} retries refused within the interval");
    assert!(refused >= 5, "{refused}");
    // Once the interval has passed, a retry reloads it again.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(first.elapsed())).await;
    assert_eq!(retry().await.unwrap().status(), 202);
    failed().await;
    let started = Instant::now();
    assert_eq!(health(&client, &server).await["status"], "healthy");
    assert!(started.elapsed() < Duration::from_secs(1));
}
