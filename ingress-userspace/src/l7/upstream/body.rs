//! Bodies on their way through: the client's request body going up (cut
//! off at the size limit, when the client stalls, or when it is not framed
//! as its head said), and the endpoint's response body coming down, which
//! must keep coming (nginx's proxy_read_timeout between two reads).
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::l7::{body::Body, error::BoxError, error::ProxyError};

/// What goes upstream: the client's body, maybe cut off.
pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

const TRIP_NONE: u8 = 0;
const TRIP_TOO_LARGE: u8 = 1;
const TRIP_TIMEOUT: u8 = 2;
const TRIP_BAD: u8 = 3;
const TRIP_LEFT: u8 = 4;

/// What the proxy learns from a request body on its way upstream.
pub struct BodyWatch {
    /// Why the body was cut off (`TRIP_*`).
    tripped: AtomicU8,
    /// Told once the whole body has been read (starts the response timeout).
    pub done: tokio::sync::Notify,
    /// When the endpoint last took a piece (ms after `born`; 0: none yet).
    took_ms: AtomicU64,
    /// The body's reader waits on the client, not on the endpoint.
    on_client: AtomicBool,
    born: tokio::time::Instant,
}

impl Default for BodyWatch {
    fn default() -> Self {
        Self {
            tripped: AtomicU8::new(TRIP_NONE),
            done: tokio::sync::Notify::new(),
            took_ms: AtomicU64::new(0),
            on_client: AtomicBool::new(false),
            born: tokio::time::Instant::now(),
        }
    }
}

impl BodyWatch {
    /// The client's failure, if the body was cut off for one: it is the
    /// answer, whatever the endpoint made of the cut-off request.
    pub fn failure(&self) -> Option<ProxyError> {
        match self.tripped.load(Ordering::Relaxed) {
            TRIP_TOO_LARGE => Some(ProxyError::BodyTooLarge),
            TRIP_TIMEOUT => Some(ProxyError::ClientBodyTimeout),
            TRIP_BAD => Some(ProxyError::BadBody),
            TRIP_LEFT => Some(ProxyError::ClientLeft),
            _ => None,
        }
    }

    /// Waits until the whole body has been read: false if the endpoint
    /// took none of it for `limit` meanwhile, while the client had more
    /// to give (`connect` more before its first piece: connecting comes
    /// first).
    pub async fn sent(&self, limit: Duration, connect: Duration) -> bool {
        loop {
            let stalled = self.stalled(limit, connect);
            if stalled.is_zero() {
                return false;
            }
            tokio::select! {
                () = self.done.notified() => return true,
                () = tokio::time::sleep(stalled) => {}
            }
        }
    }

    /// How long until the endpoint has stalled the body for `limit`
    /// (zero: it has; a full `limit` while the client is the one waited on).
    fn stalled(&self, limit: Duration, connect: Duration) -> Duration {
        if self.on_client.load(Ordering::Relaxed) {
            return limit;
        }
        let now = self.born.elapsed();
        let took = self.took_ms.load(Ordering::Relaxed);
        let (since, allowed) = if took == 0 {
            (Duration::ZERO, limit + connect)
        } else {
            (Duration::from_millis(took), limit)
        };
        (since + allowed).saturating_sub(now)
    }

    /// A piece went to the endpoint's connection.
    fn took(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.took_ms.store(ms.max(1), Ordering::Relaxed);
        self.on_client.store(false, Ordering::Relaxed);
    }

    fn trip(&self, why: u8) {
        let _ = self
            .tripped
            .compare_exchange(TRIP_NONE, why, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The client's request body on its way upstream: cut off past `left`
/// bytes (bodies without a declared length) or when the client stops
/// sending for `timeout`. The upstream request then fails and the watch
/// says why; after a 413 what the client still sends is drained so it can
/// read the answer.
pub struct ClientBody {
    inner: Option<Incoming>,
    left: u64,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    watch: Arc<BodyWatch>,
}

impl ClientBody {
    pub fn new(inner: Incoming, left: u64, timeout: Duration) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        let body = ClientBody {
            inner: Some(inner),
            left,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            watch: watch.clone(),
        };
        (body, watch)
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Some(Err("request body refused".into())));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > self.left {
                    self.watch.trip(TRIP_TOO_LARGE);
                    if let Some(rest) = self.inner.take() {
                        tokio::spawn(drain(rest));
                    }
                    return Poll::Ready(Some(Err("request body too large".into())));
                }
                self.left -= n;
                self.watch.took();
                let next = tokio::time::Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                if self
                    .inner
                    .as_ref()
                    .is_some_and(hyper::body::Body::is_end_stream)
                {
                    self.watch.done.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Not framed as its head said (a bad chunk): the client's
                // fault, a 400; the endpoint sees a request cut off, never
                // a whole one. A client that left mid-body: 499.
                let why = if e.is_incomplete_message() {
                    TRIP_LEFT
                } else {
                    TRIP_BAD
                };
                self.watch.trip(why);
                self.inner = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.watch.done.notify_one();
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.watch.on_client.store(true, Ordering::Relaxed);
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.watch.trip(TRIP_TIMEOUT);
                    self.inner = None;
                    return Poll::Ready(Some(Err("request body timed out".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self
            .inner
            .as_ref()
            .is_some_and(hyper::body::Body::is_end_stream);
        if end {
            self.watch.done.notify_one();
        }
        end
    }
}

/// Discards a request body: at most 64 MiB, for at most 10 s.
pub async fn drain(body: Incoming) {
    let mut body = body;
    let mut left: u64 = 64 << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len() as u64));
            }
            _ => return,
        }
    }
}

/// nginx's proxy_read_timeout for a body: the time between two reads, not
/// for the whole body. The timer is made only once a read has to wait.
pub struct ReadGap {
    limit: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReadGap {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            waiting: None,
        }
    }

    /// Something was read: the next gap starts afresh.
    pub fn read(&mut self) {
        self.waiting = None;
    }

    /// A read has to wait: whether the gap has gone on too long.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }
}

/// What a body's reader is told when its endpoint went quiet.
pub const READ_GAP_EXPIRED: &str = "endpoint sent nothing within the read timeout";

/// A response body from hyper's clients that must keep coming (the fast
/// client's body keeps the same timeout itself).
pub struct ReadTimeout {
    inner: Body,
    gap: ReadGap,
}

impl ReadTimeout {
    pub fn wrap(inner: Body, limit: Duration) -> Body {
        ReadTimeout {
            inner,
            gap: ReadGap::new(limit),
        }
        .boxed()
    }
}

impl hyper::body::Body for ReadTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.gap.poll_expired(cx) => {
                Poll::Ready(Some(Err(READ_GAP_EXPIRED.into())))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                this.gap.read();
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
