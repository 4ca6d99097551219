//! Webhooks: registering a receiver, and what the broker POSTs to it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;

/// `POST /webhooks`: a receiver and the events it wants.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"url": "https://hooks.example.com/renderfarm", "events": ["render.completed", "render.failed"], "description": "the studio's chat"})))]
pub struct WebhookSpec {
    /// Where deliveries are POSTed: an http(s) URL whose host is not on
    /// the broker's own machine or private network (unless the broker runs
    /// with `--webhooks-allow-private`).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 2048))]
    pub url: String,
    /// Any of `render.completed`, `render.failed`, `render.canceled`,
    /// `task.failed`, `worker.lost`.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub events: Vec<String>,
    /// What it is for, for the people who read the list.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub description: Option<String>,
}

/// A webhook as the broker lists it: never its secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "url": "https://hooks.example.com/renderfarm", "events": ["render.completed"], "description": null, "created_at": "2026-11-24T01:17:17.363091Z", "status": "active", "disabled_at": null, "disabled_reason": null, "consecutive_failures": 0, "failing_since": null, "last_attempt_at": "2026-11-24T02:00:01.100000Z", "last_outcome": "HTTP 204", "last_success_at": "2026-11-24T02:00:01.100000Z", "deliveries": {"pending": 0, "delivered": 12, "failed": 0}})))]
pub struct WebhookInfo {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub description: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// `active`, or `disabled` (nothing is queued or sent for it until it
    /// is enabled again: `POST /webhooks/{id}/enable`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^(active|disabled)$"))]
    pub status: String,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub disabled_at: Option<Timestamp>,
    /// Why it was disabled.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub disabled_reason: Option<String>,
    /// Delivery attempts that failed in a row.
    pub consecutive_failures: i64,
    /// The first failed attempt since the last success.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub failing_since: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub last_attempt_at: Option<Timestamp>,
    /// What the last attempt got: `HTTP 204`, `HTTP 500`, `timed out
    /// after 10s`, `refused: ...`.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_outcome: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub last_success_at: Option<Timestamp>,
    /// Its deliveries by state (`GET /webhooks/{id}` only; absent in the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<WebhookDeliveryCounts>,
}

/// A webhook's deliveries by state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliveryCounts {
    /// Waiting for their first or next attempt.
    pub pending: i64,
    /// Answered with a 2xx.
    pub delivered: i64,
    /// Given up after their last retry.
    pub failed: i64,
}

/// The answer to `POST /webhooks`: the webhook and its signing secret,
/// shown this once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredWebhook {
    #[serde(flatten)]
    pub webhook: WebhookInfo,
    /// The key of every delivery's `Renderfarm-Signature` (HMAC-SHA256 over
    /// `{timestamp}.{body}`, keyed with this text). It cannot be shown again.
    pub secret: String,
}

/// What the broker POSTs to a webhook's URL (JSON), with the headers
/// `Renderfarm-Webhook-Id` (= `id`), `Renderfarm-Webhook-Timestamp` (Unix
/// seconds) and `Renderfarm-Signature: v1=<hex HMAC-SHA256>`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// The idempotency id: the same on every attempt of this delivery, so a
    /// receiver that saw it already answers 2xx and does nothing.
    pub id: Uuid,
    /// `render.completed`, `render.failed`, `render.canceled`,
    /// `task.failed` or `worker.lost`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// `render_id`, `task_id`, `worker_id` and `status` as the event
    /// recorded them, and the `render`, `task` or `worker` as it is when
    /// sent (absent once deleted).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}
