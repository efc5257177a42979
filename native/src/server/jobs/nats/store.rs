//! The fleet's JetStream objects: the job stream and its workers' consumer, the job records' and
//! the workers' KV buckets, the inputs' and results' object stores; the job message and the
//! stored picture.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use serde::{Deserialize, Serialize};

use super::super::GenerateParams;
use super::{FleetQueue, WORKER_TTL};

/// The job message: what a worker needs besides the picture (in the inputs store).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JobMessage {
    pub(super) id: String,
    pub(super) params: GenerateParams,
    pub(super) width: u32,
    pub(super) height: u32,
    /// More views' names (left, back, right), each stored as `<id>.<view>` beside the picture.
    #[serde(default)]
    pub(super) views: Vec<String>,
}

/// Where a job's view is stored in the inputs (the picture itself is under the job's id).
pub(super) fn view_key(id: &str, view: &str) -> String {
    format!("{id}.{view}")
}

/// Drop a job's inputs: its picture and any views (absent ones are no error).
pub(super) async fn delete_inputs(handles: &Handles, id: &str) {
    let _ = handles.inputs.delete(id).await;
    for view in orfeas_engine::pipeline::View::ALL.into_iter().skip(1) {
        let _ = handles.inputs.delete(view_key(id, view.name())).await;
    }
}

/// The stream, consumer and buckets, once set up.
pub(super) struct Handles {
    pub(super) js: jetstream::Context,
    pub(super) stream: stream::Stream,
    pub(super) consumer: consumer::PullConsumer,
    pub(super) jobs: kv::Store,
    pub(super) workers: kv::Store,
    pub(super) inputs: object_store::ObjectStore,
    pub(super) results: object_store::ObjectStore,
    pub(super) subject: String,
}

/// The picture as the inputs store keeps it: width and height (u32 LE), then RGBA rows.
pub(super) fn encode_image(image: &image::RgbaImage) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + image.as_raw().len());
    bytes.extend_from_slice(&image.width().to_le_bytes());
    bytes.extend_from_slice(&image.height().to_le_bytes());
    bytes.extend_from_slice(image.as_raw());
    bytes
}

pub(super) fn decode_image(bytes: Vec<u8>) -> Result<image::RgbaImage, String> {
    let size = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(width), Some(height)) = (size(0), size(4)) else {
        return Err("the stored input is truncated".into());
    };
    image::RgbaImage::from_raw(width, height, bytes[8..].to_vec())
        .ok_or_else(|| format!("the stored input is not a {width}×{height} RGBA picture"))
}

/// The KV bucket `bucket` (one value per key), created if missing. Its stream is made here
/// as the KV convention lays it out, because `async-nats` 0.52's `create_key_value` first
/// reads the account's info, which it cannot parse from nats-server 2.9 (Debian 12's).
pub(super) async fn key_value(
    js: &jetstream::Context,
    bucket: String,
    max_age: Duration,
    storage: stream::StorageType,
) -> Result<kv::Store, String> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

impl FleetQueue {
    pub(super) async fn create(&self) -> Result<Handles, String> {
        let js = jetstream::new(self.client.clone());
        let name = &self.options.name;
        let keep = self.limits.retain_for.max(Duration::from_secs(1));
        let subject = format!("{name}.jobs");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}-jobs"),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: keep,
                duplicate_window: keep.min(Duration::from_secs(120)),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("the job stream: {e}"))?;
        let consumer = stream
            .get_or_create_consumer(
                "workers",
                consumer::pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    // One delivery past the last run: the worker that gets it fails the job.
                    max_deliver: i64::from(self.options.max_attempts.max(1)) + 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("the workers' consumer: {e}"))?;
        let jobs = key_value(
            &js,
            format!("{name}-jobs"),
            keep * 2,
            stream::StorageType::File,
        )
        .await
        .map_err(|e| format!("the job records: {e}"))?;
        let workers = key_value(
            &js,
            format!("{name}-workers"),
            WORKER_TTL,
            stream::StorageType::Memory,
        )
        .await
        .map_err(|e| format!("the workers' bucket: {e}"))?;
        let objects = |bucket: String| object_store::Config {
            bucket,
            max_age: keep,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stores = Vec::new();
        for bucket in [format!("{name}-inputs"), format!("{name}-results")] {
            let store = match js.create_object_store(objects(bucket.clone())).await {
                Ok(store) => store,
                Err(_) => js
                    .get_object_store(&bucket)
                    .await
                    .map_err(|e| format!("the object store {bucket}: {e}"))?,
            };
            stores.push(store);
        }
        let results = stores.pop().expect("two stores");
        let inputs = stores.pop().expect("two stores");
        Ok(Handles {
            js,
            stream,
            consumer,
            jobs,
            workers,
            inputs,
            results,
            subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_picture_reads_back_and_a_damaged_one_is_named() {
        let picture =
            image::RgbaImage::from_fn(3, 2, |x, y| image::Rgba([x as u8, y as u8, 7, 255]));
        let stored = encode_image(&picture);
        assert_eq!(decode_image(stored.clone()).unwrap(), picture);
        let cut = decode_image(stored[..stored.len() - 1].to_vec()).unwrap_err();
        assert!(cut.contains("3×2"), "{cut}");
        assert!(decode_image(vec![1, 2]).unwrap_err().contains("truncated"));
    }
}
