//! The guard around one session task: a panic that still happens inside a session is caught
//! where the task runs, logged with the client's address, counted
//! (`smtp_gateway_session_panics_total`), and the session's slots (the global and per-source
//! connection permits, the active-session gauge) are released as after any other end. No client
//! can crash the accept loop or leak a slot by making its session panic.

use std::{
    any::Any,
    future::Future,
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use crate::metrics::Metrics;

/// Runs `session` to its end and then releases `slots` (also when the session panicked).
///
/// The session comes boxed: its state machine (several KiB, most of it states an idle session
/// is not in) lives in one allocation, and the spawned task holding this future stays small.
pub async fn run_guarded<F: Future<Output = ()>, S>(
    session: Pin<Box<F>>,
    slots: S,
    client: SocketAddr,
    metrics: &Metrics,
) {
    let outcome = CatchUnwind(session).await;
    drop(slots);
    if let Err(panic) = outcome {
        metrics.session_panic();
        tracing::error!(
            %client,
            panic = panic_message(panic.as_ref()),
            "session task panicked; its connection slots are released"
        );
    }
}

/// A future that turns a panic while polling `F` into `Err(payload)`. Once it has panicked, the
/// inner future (and everything it held: socket, backend connection) is dropped with this one.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The session's state is never used again after a panic (the future is dropped), so a
        // half-updated state cannot be observed.
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The text a panic was raised with, when it was a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(not a string)"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    fn panics_counted(metrics: &Metrics) -> String {
        let mut text = String::new();
        metrics.encode(&mut text).expect("encode");
        text.lines()
            .find(|l| l.starts_with("smtp_gateway_session_panics_total"))
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn a_panicking_session_is_counted_and_its_permits_come_back() {
        let metrics = Metrics::new();
        let limit = Arc::new(Semaphore::new(1));
        let per_source = Arc::new(Semaphore::new(1));
        let slots = (
            limit.clone().try_acquire_owned().expect("global permit"),
            per_source
                .clone()
                .try_acquire_owned()
                .expect("source permit"),
        );
        let client: SocketAddr = "198.51.100.7:2525".parse().expect("addr");
        let held = Arc::new(());
        let inside = held.clone();
        let session = async move {
            let _state = inside;
            tokio::task::yield_now().await;
            let text = "é";
            // A cut inside a multi-byte character, as in issue 10 section 1.1.
            let _ = text
                .get(..1)
                .map(str::len)
                .unwrap_or_else(|| panic!("cut {text:?}"));
        };
        run_guarded(Box::pin(session), slots, client, &metrics).await;
        assert_eq!(limit.available_permits(), 1, "global permit released");
        assert_eq!(
            per_source.available_permits(),
            1,
            "per-source permit released"
        );
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the session's state was dropped"
        );
        assert_eq!(
            panics_counted(&metrics),
            "smtp_gateway_session_panics_total 1"
        );
    }

    #[tokio::test]
    async fn a_session_that_ends_normally_is_not_counted() {
        let metrics = Metrics::new();
        let limit = Arc::new(Semaphore::new(1));
        let permit = limit.clone().try_acquire_owned().expect("permit");
        let client: SocketAddr = "198.51.100.7:2525".parse().expect("addr");
        run_guarded(Box::pin(async {}), permit, client, &metrics).await;
        assert_eq!(limit.available_permits(), 1);
        assert_eq!(
            panics_counted(&metrics),
            "smtp_gateway_session_panics_total 0"
        );
    }
}
