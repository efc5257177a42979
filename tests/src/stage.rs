//! The browser tests' one prologue: the built app and a models folder on the fault server,
//! with the site's `orfeas.json`, and a chromedriver to open Chromium at it (or Firefox).

use std::path::Path;

use crate::browser::{Browser, Chromedriver};
use crate::firefox::Firefox;
use crate::server::Server;

pub struct Stage {
    pub server: Server,
    pub driver: Chromedriver,
}

impl Stage {
    /// Serve the built app (`dist_dir`) and `models` at `/models/`; `config`, when given, is
    /// the site's `orfeas.json`.
    pub async fn start(models: &Path, config: Option<&str>) -> anyhow::Result<Stage> {
        let server = Server::start(&crate::dist_dir()?, models).await?;
        if let Some(config) = config {
            server.put_file("orfeas.json", "application/json", config.to_string());
        }
        let driver = Chromedriver::start().await?;
        Ok(Stage { server, driver })
    }

    /// A fresh Chromium (WebGPU on, empty profile) at `path` on the server.
    pub async fn open(&self, path: &str) -> anyhow::Result<Browser> {
        self.open_with(path, true).await
    }

    /// The same Chromium without WebGPU: the page gets no GPU adapter.
    pub async fn open_without_webgpu(&self, path: &str) -> anyhow::Result<Browser> {
        self.open_with(path, false).await
    }

    /// A fresh Firefox (WebGPU on lavapipe, with `shader-f16`; empty profile) at `path`.
    pub async fn open_firefox(&self, path: &str) -> anyhow::Result<Firefox> {
        let browser = Firefox::open().await?;
        browser.goto(&self.server.url(path)).await?;
        Ok(browser)
    }

    async fn open_with(&self, path: &str, webgpu: bool) -> anyhow::Result<Browser> {
        let browser = Browser::open(&self.driver, webgpu).await?;
        browser.goto(&self.server.url(path)).await?;
        Ok(browser)
    }
}

/// A site config listing `models` as (id, label), in load order.
pub fn config(models: &[(&str, &str)]) -> String {
    let models: Vec<serde_json::Value> = models
        .iter()
        .map(|(id, label)| serde_json::json!({"id": id, "label": label}))
        .collect();
    serde_json::json!({ "models": models }).to_string()
}
