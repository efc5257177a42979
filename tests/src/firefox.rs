//! Debian's Firefox ESR, headless, driven over Marionette: its own remote protocol, spoken over
//! TCP without geckodriver (Debian has no package for it). Firefox's WebGPU is built on wgpu
//! and finds lavapipe here, which offers `shader-f16`: the f16 compute path in a real browser.
//!
//! The protocol: each message is `LENGTH:JSON`; the server greets first; a command is
//! `[0, id, name, params]` and its reply `[1, id, error, result]`. The command names are
//! WebDriver's (`WebDriver:Navigate`, `WebDriver:ExecuteScript`, ...), with the same
//! semantics.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::browser::{Page, connect_when_listening, free_port};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Firefox binary: `$ORFEAS_FIREFOX` or Debian's `firefox-esr`.
pub fn binary() -> String {
    std::env::var("ORFEAS_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into())
}

/// A headless Firefox with a fresh profile (WebGPU on), and a Marionette session in it; the
/// process is killed on drop.
pub struct Firefox {
    child: tokio::process::Child,
    connection: Mutex<Connection>,
    _profile: tempfile::TempDir,
}

struct Connection {
    stream: BufReader<TcpStream>,
    next_id: u64,
}

impl Firefox {
    pub async fn open() -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let port = free_port()?;
        let prefs = [
            ("dom.webgpu.enabled", "true".to_string()),
            ("gfx.webgpu.ignore-blocklist", "true".into()),
            ("marionette.port", port.to_string()),
            // A quiet first run: no default-browser question, no reporting, no updates.
            ("browser.shell.checkDefaultBrowser", "false".into()),
            ("datareporting.policy.dataSubmissionEnabled", "false".into()),
            ("toolkit.telemetry.reportingpolicy.firstRun", "false".into()),
            (
                "browser.startup.homepage_override.mstone",
                "\"ignore\"".into(),
            ),
            ("app.update.auto", "false".into()),
            ("browser.aboutwelcome.enabled", "false".into()),
        ];
        let user_js: String = prefs
            .iter()
            .map(|(name, value)| format!("user_pref(\"{name}\", {value});\n"))
            .collect();
        std::fs::write(profile.path().join("user.js"), user_js)?;
        let runtime_dir = profile.path().join("xdg");
        std::fs::create_dir(&runtime_dir)?;
        let binary = binary();
        let child = tokio::process::Command::new(&binary)
            .args(["--headless", "--no-remote", "--marionette", "--profile"])
            .arg(profile.path())
            .arg("about:blank")
            .env("MOZ_HEADLESS", "1")
            .env("MOZ_HEADLESS_WIDTH", "1280")
            .env("MOZ_HEADLESS_HEIGHT", "900")
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (apt-get install firefox-esr)"))?;
        let stream =
            connect_when_listening("Firefox's Marionette", port, Duration::from_secs(60)).await?;
        let mut connection = Connection {
            stream: BufReader::new(stream),
            next_id: 0,
        };
        let greeting = connection.read_frame().await?;
        anyhow::ensure!(
            greeting["marionetteProtocol"].as_u64() == Some(3),
            "an unexpected Marionette greeting: {greeting}"
        );
        let firefox = Self {
            child,
            connection: Mutex::new(connection),
            _profile: profile,
        };
        firefox
            .command("WebDriver:NewSession", json!({"capabilities": {}}))
            .await
            .context("opening a Marionette session")?;
        Ok(firefox)
    }

    /// Send a command and wait for its reply; a reply's error becomes this call's error.
    pub async fn command(&self, name: &str, params: Value) -> anyhow::Result<Value> {
        let mut connection = self.connection.lock().await;
        connection.next_id += 1;
        let id = connection.next_id;
        let message = json!([0, id, name, params]).to_string();
        let frame = format!("{}:{message}", message.len());
        connection
            .stream
            .get_mut()
            .write_all(frame.as_bytes())
            .await?;
        loop {
            let reply = connection.read_frame().await?;
            // Replies to earlier commands (none are left waiting here) would be skipped.
            if reply[0] != 1 || reply[1].as_u64() != Some(id) {
                continue;
            }
            if !reply[2].is_null() {
                bail!("{name}: {}", reply[2]);
            }
            return Ok(reply[3].clone());
        }
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("WebDriver:Navigate", json!({ "url": url }))
            .await?;
        Ok(())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command(
                "WebDriver:FindElement",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        let reference = found.get("value").unwrap_or(&found);
        reference[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no element reference for {css}: {found}"))
    }
}

impl Connection {
    async fn read_frame(&mut self) -> anyhow::Result<Value> {
        let mut length = Vec::new();
        loop {
            let byte = self.stream.read_u8().await.context("Marionette closed")?;
            if byte == b':' {
                break;
            }
            anyhow::ensure!(
                byte.is_ascii_digit() && length.len() < 12,
                "a malformed Marionette frame"
            );
            length.push(byte);
        }
        let length: usize = std::str::from_utf8(&length)?.parse()?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

impl Page for Firefox {
    async fn eval(&self, body: &str) -> anyhow::Result<Value> {
        let result = self
            .command(
                "WebDriver:ExecuteScript",
                json!({"script": body, "args": []}),
            )
            .await?;
        Ok(result.get("value").cloned().unwrap_or(Value::Null))
    }

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.command("WebDriver:ElementClick", json!({ "id": id }))
            .await?;
        Ok(())
    }

    async fn choose_file(&self, css: &str, path: &Path) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.command(
            "WebDriver:ElementSendKeys",
            json!({"id": id, "text": path.display().to_string()}),
        )
        .await?;
        Ok(())
    }

    /// End the session and the process.
    async fn close(mut self) {
        let _ = self.command("WebDriver:DeleteSession", json!({})).await;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
