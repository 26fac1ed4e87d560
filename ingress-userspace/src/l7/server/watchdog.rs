//! The timeouts of a connection hyper serves, which hyper does not keep
//! the way nginx does: an idle connection closes after the keep-alive
//! timeout (no 408), a head that started must be whole within the client
//! header timeout (408), and a response that cannot go out (the client
//! stopped reading, or an HTTP/2 stream whose window never opens) is given
//! up after the send timeout. One timer per connection, ticking while it
//! lives; the IO and every request on it report to a shared `Watch`.
use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::l7::{body::Body, error::BoxError};

/// How often a connection's timeouts are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Why the watchdog ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expired {
    /// Idle for the keep-alive timeout: closed without a word.
    Idle,
    /// A head begun and not finished within the header timeout: 408.
    Head,
    /// A response the client would not take for the send timeout.
    Send,
}

/// What the connection's IO and requests report.
pub(super) struct Watch {
    born: tokio::time::Instant,
    /// Requests whose responses are not done yet.
    in_flight: AtomicUsize,
    /// Requests begun so far: the next one's number.
    begun: AtomicU64,
    /// When the last request ended (ms since born): idle from then.
    idle_since: AtomicU64,
    /// When bytes came while idle (ms since born + 1; 0: none): a head is
    /// on its way (HTTP/1 only).
    head_since: AtomicU64,
    /// Since when a write has waited (ms since born + 1; 0: not waiting).
    write_waiting: AtomicU64,
    /// Response bodies that gave a piece and wait to be asked again.
    bodies: Mutex<Vec<Weak<AtomicU64>>>,
    /// HTTP/2: bytes between requests are pings and settings, not heads.
    h2: bool,
}

/// The timeouts the watchdog keeps.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub idle: Duration,
    pub head: Duration,
    pub send: Duration,
}

impl Watch {
    pub(super) fn new(h2: bool) -> Arc<Self> {
        Arc::new(Self {
            born: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_waiting: AtomicU64::new(0),
            bodies: Mutex::default(),
            h2,
        })
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    /// A request begins (with its number on the connection, 0, 1, …); it
    /// ends when the returned guard is dropped (with its response body, or
    /// before, if there is none).
    pub(super) fn begin(self: &Arc<Self>) -> (InFlight, u64) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        let seq = self.begun.fetch_add(1, Relaxed);
        (InFlight(self.clone()), seq)
    }

    fn read(&self) {
        if !self.h2 && self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(self.now(), Relaxed);
        }
    }

    /// Which timeout has run out, if one has.
    fn expired(&self, t: Timeouts) -> Option<Expired> {
        let now = self.now();
        let past = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) >= limit.as_millis() as u64
        };
        if past(self.write_waiting.load(Relaxed), t.send) {
            return Some(Expired::Send);
        }
        {
            let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
            bodies.retain(|b| b.strong_count() > 0);
            let stalled = bodies
                .iter()
                .filter_map(Weak::upgrade)
                .any(|b| past(b.load(Relaxed), t.send));
            if stalled {
                return Some(Expired::Send);
            }
        }
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        let head = self.head_since.load(Relaxed);
        if head != 0 {
            return past(head, t.head).then_some(Expired::Head);
        }
        let idle = self.idle_since.load(Relaxed).max(1);
        past(idle, t.idle).then_some(Expired::Idle)
    }

    /// Resolves when a timeout runs out.
    pub(super) async fn expiry(&self, t: Timeouts) -> Expired {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(e) = self.expired(t) {
                return e;
            }
        }
    }
}

/// A request on the connection, until dropped.
pub(super) struct InFlight(Arc<Watch>);

impl InFlight {
    /// The response body, watched: while it waits to be asked for its next
    /// piece, it counts towards the send timeout.
    pub(super) fn watch(self, inner: Body) -> Body {
        let clock = Arc::new(AtomicU64::new(0));
        self.0
            .bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&clock));
        http_body_util::BodyExt::boxed(Watched {
            inner,
            clock,
            _request: self,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now(), Relaxed);
        w.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that notes when it gave a piece and has not been asked
/// for the next: an HTTP/2 stream whose window stays shut never asks.
struct Watched {
    inner: Body,
    clock: Arc<AtomicU64>,
    _request: InFlight,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.clock.store(0, Relaxed);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.clock.store(self._request.0.now(), Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's IO, reporting reads and writes that wait.
pub(super) struct WatchedIo<I> {
    pub(super) io: I,
    pub(super) watch: Arc<Watch>,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> WatchedIo<I> {
    fn note<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        let w = &self.watch.write_waiting;
        match &polled {
            Poll::Pending => {
                if w.load(Relaxed) == 0 {
                    w.store(self.watch.now(), Relaxed);
                }
            }
            Poll::Ready(_) => w.store(0, Relaxed),
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.note(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(5),
        head: Duration::from_secs(3),
        send: Duration::from_secs(2),
    };

    #[tokio::test(start_paused = true)]
    async fn idle_head_and_send_each_run_out_on_their_own() {
        let w = Watch::new(false);
        assert_eq!(w.expired(T), None);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(w.expired(T), Some(Expired::Idle));

        // Bytes while idle: a head is coming, held to its own timeout.
        let w = Watch::new(false);
        w.read();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(w.expired(T), Some(Expired::Head));

        // A request in flight is not idle, however long it takes.
        let w = Watch::new(false);
        let (req, _) = w.begin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(w.expired(T), None);
        drop(req);
        assert_eq!(w.expired(T), None, "idle only from the request's end");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(w.expired(T), Some(Expired::Idle));

        // HTTP/2: pings between requests are no head.
        let w = Watch::new(true);
        w.read();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(w.expired(T), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_asks_for_runs_out_the_send_timeout() {
        use http_body_util::BodyExt as _;
        let w = Watch::new(true);
        let pieces = futures_util::stream::iter(std::iter::repeat_with(|| {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
        }));
        let mut body = w
            .begin()
            .0
            .watch(http_body_util::StreamBody::new(pieces).boxed());
        body.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.expired(T), None);
        // Asked again: the clock starts over.
        body.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.expired(T), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(w.expired(T), Some(Expired::Send));
        drop(body);
        assert_eq!(w.expired(T), None, "gone with its request");
    }
}
