//! A response body that adds what it streams to its route's byte counter.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::log::Pending;
use crate::l7::{body::Body, error::BoxError};

/// A response body on hyper's server: its bytes are counted as they go,
/// and its log line written when it is done (dropped).
pub struct Counted {
    inner: Body,
    pending: Pending,
}

impl Counted {
    pub fn new(inner: Body, pending: Pending) -> Self {
        Self { inner, pending }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len();
            self.pending.sent(n);
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
