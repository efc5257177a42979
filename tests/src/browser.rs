//! Debian's Chromium, headless, driven through chromedriver (WebDriver) with fantoccini.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// A running chromedriver on a free loopback port; killed on drop.
pub struct Chromedriver {
    child: tokio::process::Child,
    pub port: u16,
}

impl Chromedriver {
    pub async fn start() -> anyhow::Result<Self> {
        let binary =
            std::env::var("ORFEAS_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port()?;
        let child = tokio::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (apt-get install chromium-driver)"))?;
        connect_when_listening("chromedriver", port, Duration::from_secs(20)).await?;
        Ok(Self { child, port })
    }
}

/// A loopback port nothing listens on now (for a driver to be told to listen on).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A connection to `what` on loopback `port`, retried until it listens or `timeout` passes.
pub(crate) async fn connect_when_listening(
    what: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<tokio::net::TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => {
                bail!("{what} did not listen on port {port}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One browser session with a fresh profile (empty caches, no service worker).
pub struct Browser {
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `webgpu: false` leaves out `--enable-unsafe-webgpu`, so the page has no adapter.
    pub async fn open(driver: &Chromedriver, webgpu: bool) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let binary =
            std::env::var("ORFEAS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if webgpu {
            args.push("--enable-unsafe-webgpu".into());
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": binary, "args": args },
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.as_object().expect("an object").clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .context("opening a Chromium session through chromedriver")?;
        Ok(Self {
            client,
            _profile: profile,
        })
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await?;
        Ok(())
    }

    /// PNG screenshot of the element matching a CSS selector.
    pub async fn screenshot(&self, css: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .client
            .find(fantoccini::Locator::Css(css))
            .await?
            .screenshot()
            .await?)
    }

    /// Run a Chrome DevTools Protocol command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> anyhow::Result<Value> {
        let command = CdpCommand {
            cmd: cmd.to_string(),
            params,
        };
        Ok(self.client.issue_cmd(command).await?)
    }
}

/// What the tests do with a page, in either browser: run script, click, choose a file, close;
/// waiting, reading the text and fetching bytes are built on running script.
#[allow(async_fn_in_trait)] // the tests' own trait, used with concrete types only
pub trait Page {
    /// Run `body` (a function body that `return`s a value, or a promise of one) in the page.
    async fn eval(&self, body: &str) -> anyhow::Result<Value>;

    /// Click the element matching a CSS selector.
    async fn click(&self, css: &str) -> anyhow::Result<()>;

    /// Choose a file in the `<input type=file>` matching a CSS selector.
    async fn choose_file(&self, css: &str, path: &std::path::Path) -> anyhow::Result<()>;

    /// End the session (and the browser).
    async fn close(self)
    where
        Self: Sized;

    /// Poll the expression `expr` every 50 ms until it is truthy; returns its value.
    async fn wait_for(&self, what: &str, expr: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        loop {
            if let Ok(value) = self.eval(&script).await
                && truthy(&value)
            {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let page = self.page_text().await.unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}; page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn page_text(&self) -> anyhow::Result<String> {
        Ok(self
            .eval("return document.body ? document.body.innerText : ''")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The bytes behind a URL as the page sees it (blob: URLs included).
    async fn fetch_bytes(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let url = serde_json::to_string(url)?;
        let value = self
            .eval(&format!(
                "return fetch({url}).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))"
            ))
            .await?;
        let bytes = value
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("fetch {url}: {value}"))?
            .iter()
            .map(|b| b.as_u64().unwrap_or(0) as u8)
            .collect();
        Ok(bytes)
    }
}

impl Page for Browser {
    async fn eval(&self, body: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(body, vec![]).await?)
    }

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await?
            .click()
            .await?;
        Ok(())
    }

    async fn choose_file(&self, css: &str, path: &std::path::Path) -> anyhow::Result<()> {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await?
            .send_keys(&path.display().to_string())
            .await?;
        Ok(())
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// chromedriver's `goog/cdp/execute` endpoint.
#[derive(Debug)]
struct CdpCommand {
    cmd: String,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for CdpCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (hyper::Method::POST, Some(body.to_string()))
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// JavaScript for a model panel's attribute (`status`, `progress`, ...), or null.
pub fn model_attr(model: &str, attr: &str) -> String {
    format!("(document.querySelector('[data-model=\"{model}\"]')?.dataset.{attr} ?? null)")
}
