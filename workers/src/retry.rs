//! How the agent waits before it asks the broker again: its own jittered
//! backoff, on top of the broker's `Retry-After` (within reason).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use renderfarm_client::ClientError;

pub(crate) fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}

/// The most of a broker's `Retry-After` the agent honours: a misconfigured
/// proxy must not park a render machine for an hour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The pause before trying again after `error`: our own jittered backoff, on
/// top of the broker's `Retry-After` when it gave one, so that a crowd of
/// agents told the same number does not come back in the same instant.
pub(crate) fn retry_delay(backoff: Option<Duration>, error: &ClientError) -> Duration {
    let ours = backoff.unwrap_or(Duration::from_secs(10));
    match error.retry_after() {
        Some(asked) => asked.min(MAX_RETRY_AFTER) + ours,
        None => ours,
    }
}

/// Until when a rendering agent sends no heartbeat or progress after
/// `error`: the broker's `Retry-After` (at most [`MAX_RETRY_AFTER`]), else not
/// at all (the next tick tries again).
pub(crate) fn quiet_after(error: &ClientError) -> Option<tokio::time::Instant> {
    error
        .retry_after()
        .map(|asked| tokio::time::Instant::now() + asked.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_waits_at_least_what_the_broker_asked_and_never_an_hour() {
        let busy = |retry_after| ClientError::Unreachable {
            base: "http://b".into(),
            cause: "429".into(),
            retry_after,
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases = [
            // (our backoff, the error, the pause)
            (Some(ms(300)), busy(None), ms(300)),
            (None, busy(None), s(10)),
            (Some(ms(300)), busy(Some(s(5))), ms(5300)),
            (Some(ms(300)), busy(Some(s(3600))), s(60) + ms(300)),
            (
                Some(ms(300)),
                ClientError::Conflict("stale".into()),
                ms(300),
            ),
        ];
        for (backoff, error, want) in cases {
            assert_eq!(retry_delay(backoff, &error), want, "{backoff:?} {error:?}");
        }
    }

    #[test]
    fn heartbeats_and_progress_keep_quiet_for_what_the_broker_asked_and_never_an_hour() {
        let busy = |retry_after| ClientError::Unreachable {
            base: "http://b".into(),
            cause: "429 Too Many Requests".into(),
            retry_after,
        };
        let before = tokio::time::Instant::now();
        let until = quiet_after(&busy(Some(Duration::from_secs(3)))).expect("a pause");
        assert!(until >= before + Duration::from_secs(3), "{until:?}");
        let until = quiet_after(&busy(Some(Duration::from_secs(3600)))).expect("a pause");
        assert!(
            until <= tokio::time::Instant::now() + MAX_RETRY_AFTER,
            "{until:?}"
        );
        assert_eq!(quiet_after(&busy(None)), None, "no Retry-After, no pause");
        assert_eq!(quiet_after(&ClientError::Conflict("stale".into())), None);
    }
}
