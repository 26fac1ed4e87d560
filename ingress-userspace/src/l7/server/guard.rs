//! The guard in front of hyper's HTTP/1 server: every request head hyper
//! reads has passed the same checks (`http1::request::check_head`) as the
//! fast server's, so both servers answer a head the same way, as nginx
//! does (hyper alone would take CL+TE with Transfer-Encoding winning, two
//! Host lines, or CONNECT).
//!
//! It reads ahead of hyper and lets bytes through only once vetted: a head
//! whole and checked, then its body as its framing says (a length, or
//! chunks decoded to find their end). A refused head is never given to
//! hyper: a stand-in `GET` with `Connection: close` takes its place, the
//! request hyper makes of it is answered with the refusal (`refusal`), and
//! the connection ends there. After an upgrade, or a body the decoder does
//! not take (hyper's own decoder then fails it, a 400), the rest passes
//! unread: hyper's framing of it is RFC 9112's, and nothing of it reaches
//! an endpoint unframed.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use crate::l7::{
    error::ProxyError,
    http1::{
        chunked::{Chunk, Decoded, decode_chunked},
        framing::RequestBody,
        request::check_head,
    },
};

/// What hyper reads in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nHost: refused.invalid\r\nConnection: close\r\n\r\n";
/// Header slots for a head being checked.
const MAX_HEADERS: usize = 256;

/// Refusals, by the number of the request (0, 1, …) hyper will make of
/// the stand-in.
#[derive(Default)]
pub(in crate::l7) struct Refusals(Mutex<Option<(u64, ProxyError)>>);

impl Refusals {
    /// The refusal for request `seq`, if its head was refused.
    pub(in crate::l7) fn take(&self, seq: u64) -> Option<ProxyError> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some((at, e)) if at == seq => Some(e),
            other => {
                *slot = other;
                None
            }
        }
    }
}

enum State {
    /// A head is next.
    Head,
    /// This many body bytes are next.
    Body(u64),
    Chunked(Chunk),
    /// Everything passes (after an upgrade, or what hyper decides alone).
    Through,
    /// A refused head was replaced: nothing more after the stand-in.
    Closed,
}

pub(in crate::l7) struct Guarded<I> {
    io: I,
    /// Read from `io`, not yet given to hyper; the first `vetted` of them
    /// may be.
    pending: BytesMut,
    vetted: usize,
    state: State,
    /// Heads let through so far: the next one's request number.
    heads: u64,
    refusals: Arc<Refusals>,
    max_head: usize,
    eof: bool,
}

impl<I> Guarded<I> {
    pub(in crate::l7) fn new(io: I, refusals: Arc<Refusals>, max_head: usize) -> Self {
        Self {
            io,
            pending: BytesMut::new(),
            vetted: 0,
            state: State::Head,
            heads: 0,
            refusals,
            max_head,
            eof: false,
        }
    }

    /// Vets what it can of the pending bytes; false when it needs more.
    fn vet(&mut self) -> bool {
        let unvetted = &self.pending[self.vetted..];
        if unvetted.is_empty() && !matches!(self.state, State::Closed) {
            return false;
        }
        match &mut self.state {
            State::Closed => true,
            State::Through => {
                self.vetted = self.pending.len();
                true
            }
            State::Body(left) => {
                let n = (*left).min(unvetted.len() as u64);
                *left -= n;
                self.vetted += n as usize;
                if *left == 0 {
                    self.state = State::Head;
                }
                true
            }
            State::Chunked(chunk) => {
                let mut scratch = BytesMut::from(unvetted);
                let before = scratch.len();
                let mut state = *chunk;
                let outcome = loop {
                    match decode_chunked(&mut state, &mut scratch) {
                        Ok(Decoded::Data(_)) => continue,
                        other => break other,
                    }
                };
                self.vetted += before - scratch.len();
                match outcome {
                    Ok(Decoded::Done) => self.state = State::Head,
                    Ok(_) => {
                        *chunk = state;
                        if before == scratch.len() {
                            return false;
                        }
                    }
                    // hyper's decoder has the last word on a body ours
                    // does not take (it fails it: 400).
                    Err(_) => self.state = State::Through,
                }
                true
            }
            State::Head => self.vet_head(),
        }
    }

    fn vet_head(&mut self) -> bool {
        let unvetted = &self.pending[self.vetted..];
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let len = match req.parse(unvetted) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if unvetted.len() <= self.max_head => return false,
            // Too large, too many headers, or not HTTP: hyper refuses
            // those itself, with the same statuses.
            _ => {
                self.state = State::Through;
                return true;
            }
        };
        match check_head(&req) {
            Ok(body) => {
                let upgrade = req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
                self.vetted += len;
                self.heads += 1;
                self.state = match body {
                    _ if upgrade => State::Through,
                    RequestBody::None | RequestBody::Length(0) => State::Head,
                    RequestBody::Length(n) => State::Body(n),
                    RequestBody::Chunked => State::Chunked(Chunk::Size),
                };
            }
            Err(refusal) => {
                let at = self.heads;
                *self.refusals.0.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((at, ProxyError::from(refusal)));
                self.pending.truncate(self.vetted);
                self.pending.extend_from_slice(STAND_IN);
                self.vetted = self.pending.len();
                self.state = State::Closed;
            }
        }
        true
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.vetted > 0 {
                let n = this.vetted.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.vetted -= n;
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Closed) {
                // Not an end of input: hyper would take that as the client
                // leaving mid-request and answer nothing. It closes after
                // answering the stand-in (`Connection: close`).
                return Poll::Pending;
            }
            if this.vet() {
                continue;
            }
            if this.eof {
                // What is left goes as it is: hyper ends the message.
                this.state = State::Through;
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.pending.extend_from_slice(read.filled());
            }
        }
    }
}

crate::l7::io::write_through!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// What hyper would read of `wire`, and the refusal it would answer.
    async fn through(wire: &[u8]) -> (Vec<u8>, Option<(u64, u16)>) {
        let refusals = Arc::new(Refusals::default());
        let mut g = Guarded::new(wire, refusals.clone(), 8192);
        let mut out = Vec::new();
        // After a stand-in nothing comes, nor an end: read until it waits.
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(std::time::Duration::from_millis(50), g.read(&mut buf));
            match read.await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        let r = refusals
            .0
            .lock()
            .unwrap()
            .take()
            .map(|(seq, e)| (seq, e.status().as_u16()));
        (out, r)
    }

    #[tokio::test]
    async fn vetted_heads_and_their_bodies_pass_whole() {
        let wire = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                     POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n\
                     GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(through(wire).await, (wire.to_vec(), None));
    }

    #[tokio::test]
    async fn a_refused_head_never_reaches_hyper() {
        let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        for (bad, status) in [
            (&b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..], 400),
            (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        ] {
            let wire = [&first[..], bad, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
            let (out, refusal) = through(&wire).await;
            assert_eq!(out, [&first[..], STAND_IN].concat(), "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(refusal, Some((1, status)));
        }
    }

    #[tokio::test]
    async fn a_body_ours_does_not_take_is_left_to_hyper() {
        let wire = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
        assert_eq!(through(wire).await, (wire.to_vec(), None));
    }
}
