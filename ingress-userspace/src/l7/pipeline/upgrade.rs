//! Upgraded connections (WebSocket and others): bytes copied both ways
//! between the client and the endpoint until either side closes, or until
//! neither has sent anything for the route's read timeout (nginx applies
//! `proxy_read_timeout` to upgraded connections too, 60 s by default).
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};

/// Splices the client's and the endpoint's upgraded connections.
pub(super) async fn splice(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    let (d, u) = match tokio::try_join!(down, up) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let clock = Arc::new(Clock {
        born: tokio::time::Instant::now(),
        last: AtomicU64::new(0),
    });
    let mut d = Active {
        io: TokioIo::new(d),
        clock: clock.clone(),
    };
    let mut u = Active {
        io: TokioIo::new(u),
        clock: clock.clone(),
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut d, &mut u) => {}
        () = clock.quiet_for(idle) => {
            tracing::debug!(idle_secs = idle.as_secs(), "upgraded connection idle: closed");
        }
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

crate::l7::io::write_through!(Active);
