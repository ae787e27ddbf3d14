//! A driver for the realm console in a [`Browser`]: the steps the console tests repeat (sign in,
//! open a page, fill and submit a form, read the flash, a field's error or a secret shown once),
//! named, so that a test reads as what a user does.
//!
//! [`ConsoleDriver`] dereferences to its [`Browser`], so the browser's own steps (`text`, `fill`,
//! `click_nav`, `client`, ...) are there too.

use std::net::SocketAddr;
use std::ops::Deref;

use anyhow::{ensure, Context};
use fantoccini::Locator;
use serde_json::json;

use crate::browser::Browser;

/// The console of one realm service, in one browser.
pub struct ConsoleDriver<'a> {
    b: &'a Browser,
    base: String,
}

impl Deref for ConsoleDriver<'_> {
    type Target = Browser;

    fn deref(&self) -> &Browser {
        self.b
    }
}

impl<'a> ConsoleDriver<'a> {
    /// The console of the realm service at `addr`.
    pub fn new(b: &'a Browser, addr: SocketAddr) -> ConsoleDriver<'a> {
        ConsoleDriver {
            b,
            base: format!("http://{addr}"),
        }
    }

    /// `http://<addr>`, the service's origin.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Goes to `path` (e.g. `/console/realms`) of the service.
    pub async fn open(&self, path: &str) -> anyhow::Result<()> {
        Ok(self.b.client.goto(&format!("{}{path}", self.base)).await?)
    }

    /// Signs in with `token` and checks that the overview shows.
    pub async fn sign_in(&self, token: &str) -> anyhow::Result<()> {
        self.open("/console/sign-in").await?;
        self.b.fill("#f-token", token).await?;
        self.b
            .click_nav("form[action='/console/sign-in'] button[type=submit]")
            .await?;
        let title = self.b.text("main h1").await?;
        ensure!(
            title == "Overview",
            "after sign-in: expected the overview, got {title:?}"
        );
        Ok(())
    }

    /// Clicks the submit button of the form whose action ends with `action`.
    pub async fn submit(&self, action: &str) -> anyhow::Result<()> {
        self.b
            .click_nav(&format!("form[action$='{action}'] button[type=submit]"))
            .await
    }

    /// Fills the inputs (`(css, value)`, in order), then submits the form whose action ends with
    /// `action`.
    pub async fn fill_and_submit(
        &self,
        fields: &[(&str, &str)],
        action: &str,
    ) -> anyhow::Result<()> {
        for (css, value) in fields {
            self.b.fill(css, value).await?;
        }
        self.submit(action).await
    }

    /// Clicks a button whose form asks for confirmation (JavaScript `confirm`), accepts it, and
    /// returns the question.
    pub async fn submit_confirmed(&self, action: &str) -> anyhow::Result<String> {
        let old = self.b.client.find(Locator::Css("html")).await?;
        self.b
            .click(&format!("form[action$='{action}'] button[type=submit]"))
            .await?;
        let question = self
            .b
            .client
            .get_alert_text()
            .await
            .context("the delete button asks for confirmation")?;
        self.b.client.accept_alert().await?;
        self.b.wait_gone(old).await?;
        Ok(question)
    }

    /// The one-time notice after a form.
    pub async fn flash(&self) -> anyhow::Result<String> {
        self.b.text(".flash").await
    }

    /// The API's error shown next to form field `name` (`#error-<name>`).
    pub async fn field_error(&self, name: &str) -> anyhow::Result<String> {
        self.b.text(&format!("#error-{name}")).await
    }

    /// Whether form field `name` shows an error now.
    pub async fn has_field_error(&self, name: &str) -> anyhow::Result<bool> {
        self.b.has(&format!("#error-{name}")).await
    }

    /// The secret (key or data-plane token) shown once on this page.
    pub async fn secret_on_page(&self) -> anyhow::Result<String> {
        self.b.text("#secret").await
    }

    /// Picks `value` in the select `css`.
    pub async fn select(&self, css: &str, value: &str) -> anyhow::Result<()> {
        self.b
            .client
            .find(Locator::Css(css))
            .await?
            .select_by_value(value)
            .await?;
        Ok(())
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self.b.client.find_all(Locator::Css(css)).await?.len())
    }

    /// Searches the consumers of the realm page shown for `q`.
    pub async fn search(&self, q: &str) -> anyhow::Result<()> {
        self.b.fill("input[name=q]", q).await?;
        self.b.click_nav("form.search button").await
    }

    /// Creates realm `name` allowing all control planes through the new-realm form, checks its
    /// notice and returns its id (the browser is on the realm's page).
    pub async fn create_realm_allowing_all(&self, name: &str) -> anyhow::Result<String> {
        self.open("/console/realms/new").await?;
        self.b.fill("#f-name", name).await?;
        self.b.click("input[name=allow_all_control_planes]").await?;
        self.submit("/console/realms/new").await?;
        let notice = self.flash().await?;
        ensure!(
            notice == format!("Realm {name} created."),
            "realm create: {notice:?}"
        );
        self.b.text("#realm-id").await
    }

    /// From a realm's page, creates a consumer with the inputs `fields` (`(css, value)`) and
    /// returns its id (the browser is on the consumer's page, with its notice).
    pub async fn create_consumer(&self, fields: &[(&str, &str)]) -> anyhow::Result<String> {
        self.b.click_nav("a[href$='/consumers/new']").await?;
        self.fill_and_submit(fields, "/consumers/new").await?;
        self.b.text("#consumer-id").await
    }

    /// On a consumer's page, creates a key with the form as it is and returns its secret, shown
    /// once.
    pub async fn create_key(&self) -> anyhow::Result<String> {
        self.submit("/keys").await?;
        self.secret_on_page().await
    }

    /// Checks `secret` in realm `realm_id` with the check-key form (an empty `secret` leaves the
    /// key field empty).
    pub async fn check_key(&self, realm_id: &str, secret: &str) -> anyhow::Result<()> {
        self.open("/console/check-key").await?;
        self.select("#f-realm", realm_id).await?;
        if !secret.is_empty() {
            self.b.fill("#f-secret", secret).await?;
        }
        self.submit("/console/check-key").await
    }

    /// Checks what every console page must be, then saves its screenshot: no inline script, event
    /// handler or style attribute (the Content-Security-Policy would block them), and a CSRF token
    /// in every form that posts.
    pub async fn shot(&self, name: &str) -> anyhow::Result<()> {
        let problems = self
            .b
            .client
            .execute(
                r#"var out = [];
            document.querySelectorAll("script").forEach(function (s) {
              if (!s.getAttribute("src")) out.push("inline script");
            });
            document.querySelectorAll("*").forEach(function (e) {
              for (var i = 0; i < e.attributes.length; i++) {
                var a = e.attributes[i].name.toLowerCase();
                if (a.indexOf("on") === 0) out.push("handler " + a + " on " + e.tagName);
                if (a === "style") out.push("style attribute on " + e.tagName);
              }
            });
            document.querySelectorAll("form").forEach(function (f) {
              if ((f.getAttribute("method") || "get").toLowerCase() !== "post") return;
              var c = f.querySelector("input[type=hidden][name=csrf]");
              if (!c || c.value.length < 32) out.push("a POST form without a CSRF token: " + f.getAttribute("action"));
            });
            return out;"#,
                vec![],
            )
            .await?;
        ensure!(
            problems == json!([]),
            "{name} ({}): {problems}",
            self.b.url().await
        );
        self.b.screenshot(name).await
    }
}
