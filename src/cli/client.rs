//! A small HTTP client of the broker for the command line.

use anyhow::Context;
use renderfarm_wire::{ErrorBody, Render, RenderSpec, Task, Worker};
use serde::de::DeserializeOwned;

pub struct BrokerClient {
    base: String,
    http: reqwest::Client,
}

impl BrokerClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub async fn submit(&self, spec: &RenderSpec) -> anyhow::Result<Render> {
        let response = self
            .http
            .post(format!("{}/renders", self.base))
            .json(spec)
            .send()
            .await;
        self.answer(response).await
    }

    pub async fn render(&self, id: &str) -> anyhow::Result<Render> {
        let response = self
            .http
            .get(format!("{}/renders/{id}", self.base))
            .send()
            .await;
        self.answer(response).await
    }

    pub async fn task(&self, id: &str) -> anyhow::Result<Task> {
        let response = self
            .http
            .get(format!("{}/tasks/{id}", self.base))
            .send()
            .await;
        self.answer(response).await
    }

    pub async fn workers(&self) -> anyhow::Result<Vec<Worker>> {
        let response = self.http.get(format!("{}/workers", self.base)).send().await;
        self.answer(response).await
    }

    /// Reads a success body, or turns the broker's error body into a message.
    async fn answer<T: DeserializeOwned>(
        &self,
        response: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<T> {
        let response = response.with_context(|| {
            format!(
                "cannot reach the broker at {}: is `renderfarm serve` running? (--broker or RENDERFARM_BROKER to point elsewhere)",
                self.base
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .context("the broker's answer was not the JSON expected");
        }
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => anyhow::bail!("the broker answered {status}: {}", body.message),
            Err(_) => anyhow::bail!("the broker answered {status}: {text}"),
        }
    }
}
