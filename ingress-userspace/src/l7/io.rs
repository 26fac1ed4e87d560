//! Small pieces of IO plumbing the layers share: a write-through wrapper,
//! and two streams spliced together until one closes or both go quiet.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `AsyncWrite` for a wrapper whose writes all go to its field `io`
/// unchanged (the wrappers that only watch or shape reads).
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}

pub(crate) use write_through;

/// Copies both ways between `a` and `b` until either side closes, or
/// until neither has sent anything for `idle`; true when it was `idle`.
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(Clock {
        born: tokio::time::Instant::now(),
        last: AtomicU64::new(0),
    });
    let mut a = Active {
        io: a,
        clock: clock.clone(),
    };
    let mut b = Active {
        io: b,
        clock: clock.clone(),
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
        () = clock.quiet_for(idle) => true,
    }
}

/// When either side last sent something.
struct Clock {
    born: tokio::time::Instant,
    /// Milliseconds since `born`.
    last: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        self.last
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    /// Resolves once nothing was sent for `idle`: one timer, moved on to
    /// the last activity each time it fires early.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let last = self.born + Duration::from_millis(self.last.load(Relaxed));
            let deadline = last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side's IO, noting what it reads on the clock.
struct Active<I> {
    io: I,
    clock: Arc<Clock>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Active<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

write_through!(Active);
