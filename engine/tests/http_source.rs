//! The native HTTP source against a real loopback HTTP server: same tensors as from disk,
//! and real transport faults (404, an HTML page with 200, a connection dropped midway).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use burn::tensor::DType;
use bytes::Bytes;
use common::*;
use futures::StreamExt;
use orfeas_engine::weights::loader::read_index;
use orfeas_engine::weights::source::{DirSource, HttpSource};
use orfeas_engine::weights::{LoadError, ShardError, ShardSource, WeightSet, load_all};

#[derive(Clone, Copy)]
enum Fault {
    Html,
    DropAtHalf,
}

#[derive(Clone)]
struct Shared {
    dir: PathBuf,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
}

async fn serve(State(state): State<Shared>, Path(file): Path<String>) -> Response {
    let Ok(bytes) = std::fs::read(state.dir.join(&file)) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::empty())
            .unwrap();
    };
    let fault = state.faults.lock().unwrap().get(&file).copied();
    let body = match fault {
        Some(Fault::Html) => Body::from("<!doctype html><title>Not here</title>"),
        Some(Fault::DropAtHalf) => {
            let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
            // Headers and half the body go out; then the connection is cut.
            let first = futures::stream::once(async move { Ok::<_, std::io::Error>(half) });
            let cut = futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Err(std::io::Error::other("server went away"))
            });
            Body::from_stream(first.chain(cut))
        }
        None => {
            // Odd-sized chunks, so tensors straddle them.
            let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
                .chunks(1531)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures::stream::iter(chunks))
        }
    };
    Response::new(body)
}

async fn start(dir: PathBuf) -> (String, Shared) {
    let shared = Shared {
        dir,
        faults: Arc::default(),
    };
    let app = Router::new()
        .route("/m/{file}", get(serve))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/m/"), shared)
}

async fn load<S: ShardSource>(source: &S) -> Result<WeightSet, LoadError> {
    let device = orfeas_engine::device::cpu();
    Ok(load_all(source, &device, DType::F16, |_| {}).await?.1)
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    packed(&random_model(21, 30, 4000), 16 << 10, dir.path());
    let shards = shard_dir(dir.path());
    (dir, shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_load_matches_disk_load() {
    let (_dir, shards) = fixture();
    let (base, _) = start(shards.clone()).await;
    let over_http = load(&HttpSource::new(base)).await.unwrap();
    let from_disk = load(&DirSource::new(&shards)).await.unwrap();
    assert_eq!(over_http.len(), from_disk.len());
    for name in from_disk.names() {
        let a = over_http.get(name).unwrap().data();
        let b = from_disk.get(name).unwrap().data();
        assert_eq!(a.as_bytes(), b.as_bytes(), "{name}");
    }
}

async fn failing_load(fault: Option<Fault>, delete: bool) -> LoadError {
    let (_dir, shards) = fixture();
    let (base, shared) = start(shards.clone()).await;
    let index = read_index(&DirSource::new(&shards)).await.unwrap();
    let target = index.shards[1].file.clone();
    if let Some(fault) = fault {
        shared.faults.lock().unwrap().insert(target.clone(), fault);
    }
    if delete {
        std::fs::remove_file(shards.join(&target)).unwrap();
    }
    let err = load(&HttpSource::new(base)).await.unwrap_err();
    assert_eq!(err.shard_name(), Some(target.as_str()), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_404_names_the_status() {
    let err = failing_load(None, true).await;
    assert!(
        matches!(
            err,
            LoadError::Shard {
                error: ShardError::Open(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_html_page_with_200_is_rejected() {
    let err = failing_load(Some(Fault::Html), false).await;
    assert!(
        matches!(
            err,
            LoadError::Shard {
                error: ShardError::Html,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connection_dropped_midway_is_a_stream_error() {
    let err = failing_load(Some(Fault::DropAtHalf), false).await;
    assert!(
        matches!(
            err,
            LoadError::Shard {
                error: ShardError::Stream { .. } | ShardError::Truncated { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// A missing index is "not installed" (over HTTP and on disk), a shard missing from an index
/// that exists is still a broken model, and an unreadable index is not "not installed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_means_not_installed() {
    let (_dir, shards) = fixture();
    let (base, _) = start(shards.clone()).await;
    let elsewhere = format!("{base}../nothing/");
    let err = read_index(&HttpSource::new(elsewhere)).await.unwrap_err();
    assert!(matches!(err, LoadError::NotInstalled(_)), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = read_index(&DirSource::new(empty.path())).await.unwrap_err();
    assert!(matches!(err, LoadError::NotInstalled(_)), "{err}");
    assert!(read_index(&HttpSource::new(base)).await.is_ok());
    let unreadable = tempfile::tempdir().unwrap();
    std::fs::create_dir(
        unreadable
            .path()
            .join(orfeas_engine::weights::index::INDEX_FILE),
    )
    .unwrap();
    let err = read_index(&DirSource::new(unreadable.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Index(_)), "{err}");
}
