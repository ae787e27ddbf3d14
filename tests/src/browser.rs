//! A real browser for the console tests: Debian's headless Chromium driven through its
//! chromedriver (WebDriver) with fantoccini.
//!
//! [`Browser::start`] starts chromedriver on a free loopback port and a Chromium session with a new
//! empty profile directory, without background networking (the test machines have no outside
//! network). A missing `chromium` or `chromedriver` is an error that says how to install them
//! (`scripts/test.sh` does): the console tests fail, they are never skipped.
//!
//! `CHROME_BIN` and `CHROMEDRIVER` override the binaries (default `/usr/bin/chromium` and
//! `chromedriver` on `PATH`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A Chromium session and the chromedriver serving it (killed on drop).
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// Where the console screenshots go: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1280×900).
    pub async fn start() -> anyhow::Result<Browser> {
        Self::start_with(true).await
    }

    /// The same with JavaScript turned off in the browser (as a user who blocks scripts).
    pub async fn start_without_javascript() -> anyhow::Result<Browser> {
        Self::start_with(false).await
    }

    async fn start_with(javascript: bool) -> anyhow::Result<Browser> {
        let chrome = std::env::var_os("CHROME_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .or_else(|| find_in_path("chromium"));
        let Some(chrome) = chrome.filter(|p| p.is_file()) else {
            bail!("Chromium not found (set CHROME_BIN, or `apt-get install -y chromium chromium-driver`; scripts/test.sh installs them)");
        };
        let driver_bin = std::env::var_os("CHROMEDRIVER")
            .map(PathBuf::from)
            .or_else(|| find_in_path("chromedriver"))
            .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")));
        let Some(driver_bin) = driver_bin.filter(|p| p.is_file()) else {
            bail!("chromedriver not found (set CHROMEDRIVER, or `apt-get install -y chromium-driver`; scripts/test.sh installs it)");
        };
        let profile = tempfile::Builder::new()
            .prefix("keyrealm-chromium-")
            .tempdir()?;

        // A free port, then chromedriver on it (it cannot report a port it picked itself).
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut driver = tokio::process::Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", driver_bin.display()))?;
            let url = format!("http://127.0.0.1:{port}");
            match wait_ready(&url, &mut driver).await {
                Ok(()) => {
                    let client = connect(&url, &chrome, profile.path(), javascript).await?;
                    let shots = screenshot_dir();
                    std::fs::create_dir_all(&shots)?;
                    return Ok(Browser {
                        client,
                        driver,
                        _profile: profile,
                        shots,
                    });
                }
                Err(e) => {
                    let _ = driver.kill().await;
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("chromedriver did not start")))
    }

    /// Saves a PNG of the window as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| path.display().to_string())?;
        Ok(())
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }

    /// The text of the first element matching `css` (waits up to 10 s for it to appear).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => Ok(element.text().await?),
            Err(e) => bail!("no element {css} on {}: {e}", self.url().await),
        }
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Replaces the value of input `css` by typing `value`.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let input = match self.client.find(Locator::Css(css)).await {
            Ok(input) => input,
            Err(e) => bail!("no input {css} on {}: {e}", self.url().await),
        };
        input.clear().await?;
        if !value.is_empty() {
            input.send_keys(value).await?;
        }
        Ok(())
    }

    /// Clicks element `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Ok(element.click().await?),
            Err(e) => bail!("no element {css} on {}: {e}", self.url().await),
        }
    }

    /// Clicks element `css`, which loads another page, and waits until the old page is gone (so
    /// that what is read next is from the new page).
    pub async fn click_nav(&self, css: &str) -> anyhow::Result<()> {
        let old = self.client.find(Locator::Css("html")).await?;
        self.click(css).await?;
        self.wait_gone(old).await
    }

    /// Waits (up to 15 s) until `old`, an element of the page before a navigation, is stale.
    pub async fn wait_gone(&self, old: fantoccini::elements::Element) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if old.tag_name().await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the page did not change within 15 s ({})", self.url().await)
    }

    /// The value property of input `css`.
    pub async fn value(&self, css: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no input {css}"))?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    /// The current URL as text (for messages).
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(unknown url: {e})"))
    }

    /// The current path.
    pub async fn path(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.path().to_string())
    }
}

async fn wait_ready(url: &str, driver: &mut tokio::process::Child) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = driver.try_wait()? {
            bail!("chromedriver exited at start: {status}");
        }
        if let Ok(res) = http.get(format!("{url}/status")).send().await {
            if res.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("chromedriver at {url} not ready within 20 s")
}

async fn connect(
    url: &str,
    chrome: &Path,
    profile: &Path,
    javascript: bool,
) -> anyhow::Result<Client> {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-extensions".to_string(),
        "--hide-scrollbars".to_string(),
        "--window-size=1280,900".to_string(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chrome.display().to_string(),
            "args": args,
            // 2 = block: Chromium's content setting for scripts on every site.
            "prefs": {"profile.managed_default_content_settings.javascript": if javascript { 1 } else { 2 }},
        },
        // Confirm dialogs are answered by the tests themselves.
        "unhandledPromptBehavior": "ignore",
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        bail!("capabilities are an object");
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = tokio::time::timeout(
        Duration::from_secs(60),
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(url),
    )
    .await
    .context("Chromium did not start within 60 s")?
    .context("starting a Chromium session through chromedriver")?;
    client
        .update_timeouts(TimeoutConfiguration::new(
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(30)),
            Some(Duration::ZERO),
        ))
        .await?;
    Ok(client)
}
