//! `GET /events` and `GET /events/summary`: the broker's Server-Sent
//! Events, read as [`FarmEvent`]s or [`renderfarm_wire::FarmSummary`]s.

use std::marker::PhantomData;
use std::pin::Pin;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use renderfarm_wire::FarmEvent;
use serde::de::DeserializeOwned;

use crate::ClientError;

type Raw = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An open event stream. It ends (`None`) when the broker closes it; read
/// again with [`crate::BrokerClient::events`] after [`EventStream::last_event_id`]
/// to go on where it stopped.
pub struct EventStream<T = FarmEvent> {
    raw: Raw,
    base: String,
    last_event_id: Option<i64>,
    what: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> EventStream<T> {
    pub(crate) fn new(response: reqwest::Response, base: String) -> Self {
        Self {
            raw: Box::pin(response.bytes_stream().eventsource()),
            base,
            last_event_id: None,
            what: PhantomData,
        }
    }

    /// The next event, `None` once the stream ended. A broken connection is
    /// [`ClientError::Unreachable`].
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            let raw = match self.raw.next().await? {
                Ok(raw) => raw,
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        base: self.base.clone(),
                        cause: format!("the event stream broke: {e}"),
                        retry_after: None,
                    }))
                }
            };
            // Comments and retry hints carry no event.
            if raw.data.is_empty() {
                continue;
            }
            let event: T = match serde_json::from_str(&raw.data) {
                Ok(event) => event,
                Err(e) => {
                    return Some(Err(ClientError::Rejected(
                        reqwest::StatusCode::OK,
                        format!("an event this client cannot read ({e}); are the broker and this program the same version?"),
                    )))
                }
            };
            if let Ok(id) = raw.id.parse() {
                self.last_event_id = Some(id);
            }
            return Some(Ok(event));
        }
    }

    /// The id of the last event read, to resume after.
    pub fn last_event_id(&self) -> Option<i64> {
        self.last_event_id
    }
}
