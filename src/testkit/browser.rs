//! A real browser for the console's tests: Debian's headless Chromium,
//! driven over WebDriver (`chromedriver`, through `fantoccini`).
//!
//! [`Browser::start`] runs one `chromedriver` on a free port; each
//! [`Browser::page`] is a session of its own (its own Chromium, its own
//! storage), so two pages are two users on two devices. Every wait on a
//! page polls the DOM with a bound ([`PAGE_WAIT`]); nothing sleeps for a
//! fixed time. One browser test runs at a time (Chromium is the heaviest
//! thing the tests start), and dropping the [`Browser`] kills the driver's
//! whole process group, so a failed test leaves no Chromium behind.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Longest wait for anything on a page.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// One browser test at a time.
static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A running `chromedriver`; stopped on drop, with every Chromium it started.
pub struct Browser {
    driver: Child,
    url: String,
    _turn: tokio::sync::SemaphorePermit<'static>,
}

/// `name` on PATH, else under `/usr/bin`.
fn find(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(name))
}

impl Browser {
    /// Starts `chromedriver` and waits until it accepts sessions.
    ///
    /// # Panics
    /// When Chromium or its driver is not installed (Debian: `apt-get install
    /// chromium chromium-driver`; `.ci/run` does), or the driver does not
    /// come up within [`PAGE_WAIT`].
    pub async fn start() -> Browser {
        let (driver, chromium) = (find("chromedriver"), find("chromium"));
        assert!(
            driver.is_file() && chromium.is_file(),
            "chromium and chromedriver are not installed \
             (Debian: apt-get install chromium chromium-driver; .ci/run does)"
        );
        let turn = ONE_AT_A_TIME.acquire().await.expect("never closed");
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let browser = Browser {
            driver: child,
            url: format!("http://127.0.0.1:{port}"),
            _turn: turn,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let ready = http
                .get(format!("{}/status", browser.url))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(body) = ready {
                if body.await.is_ok_and(|v| v["value"]["ready"] == true) {
                    return browser;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new session: headless Chromium, 1280×900 unless `width` says otherwise.
    pub async fn page(&self) -> Page {
        self.page_sized(1280, 900).await
    }

    /// A new session with a viewport of `width` × `height` (below 500 px
    /// wide, Chromium's smallest window, a phone's screen is emulated).
    pub async fn page_sized(&self, width: u32, height: u32) -> Page {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        // Chromium refuses to run as root with its sandbox.
        if nix::unistd::Uid::effective().is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let mut options = json!({"binary": find("chromium"), "args": args});
        // A window is at least 500 px wide; a phone's viewport is emulated.
        if width < 500 {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0}
            });
        }
        let capabilities = json!({"browserName": "chrome", "goog:chromeOptions": options});
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session");
        Page { client }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its own group; its Chromiums are in it.
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// One browser session.
pub struct Page {
    /// The WebDriver client, for what the helpers do not cover.
    pub client: Client,
}

impl Page {
    /// Opens `url` and waits for the page to have loaded.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("page opens");
    }

    /// Types `text` into the field matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.visible(css).await;
        field.clear().await.expect("field cleared");
        field.send_keys(text).await.expect("typed");
    }

    /// Clicks the element matching `css` once it is shown.
    pub async fn click(&self, css: &str) {
        self.visible(css).await.click().await.expect("clicked");
    }

    /// The element matching `css`, once there and shown.
    async fn visible(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if element.is_displayed().await.unwrap_or(false) {
                    return element;
                }
            }
            if Instant::now() >= deadline {
                panic!("{css} never showed; the page: {}", self.snapshot().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` (a function body; `arguments[0..]` are `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}: {script}"))
    }

    /// The text of the element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                vec![json!(css)],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `script` (a function body) returns `true`; `what` names
    /// the wait in the failure, with the last value seen.
    pub async fn wait_until(&self, what: &str, script: &str, args: Vec<Value>) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let v = self.eval(script, args.clone()).await;
            if v == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {PAGE_WAIT:?} for {what}; last: {v}; the page: {}",
                    self.snapshot().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str) {
        self.wait_until(
            &format!("{css} to contain {needle:?}"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.textContent.includes(arguments[1]);",
            vec![json!(css), json!(needle)],
        )
        .await;
    }

    /// The `data-seq` of every message shown, top to bottom.
    pub async fn seqs(&self) -> Vec<i64> {
        let v = self
            .eval(
                "return [...document.querySelectorAll('#messages li')].map(li => Number(li.dataset.seq));",
                vec![],
            )
            .await;
        serde_json::from_value(v).expect("numbers")
    }

    /// What the page shows, for a failure message: its visible text.
    async fn snapshot(&self) -> String {
        let v = self
            .client
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
            .unwrap_or_default();
        let text = v.as_str().unwrap_or_default().replace('\n', " | ");
        text.chars().take(2000).collect()
    }

    /// A PNG of the whole window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session (its Chromium exits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
