//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: a
//! size line or trailer with a bare LF or another control character is
//! refused, never guessed at.
use bytes::{Buf, BytesMut};

/// Chunk-size lines and trailer lines are bounded like a head.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What the chunked decoder got out of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(bytes::Bytes),
    NeedMore,
    Done,
}

/// The length of the CRLF-ended line at the start of `buf`, CRLF
/// included; `None` while it is incomplete. A bare LF or another control
/// character in it (HTAB aside) is refused: lenient chunk lines are how
/// requests and responses get smuggled past a proxy.
fn line(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() < MAX_CHUNK_LINE {
            Ok(None)
        } else {
            Err("chunk line too long")
        };
    };
    let Some(text) = buf[..lf].strip_suffix(b"\r") else {
        return Err("chunk line not ended by CRLF");
    };
    if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("control character in a chunk line");
    }
    Ok(Some(lf + 1))
}

/// Takes the next piece of a chunked body off `buf`.
pub fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                match httparse::parse_chunk_size(&buf[..end]) {
                    Ok(httparse::Status::Complete((used, size))) if used == end => {
                        buf.advance(end);
                        *state = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    _ => return Err("invalid chunk size"),
                }
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = left.min(buf.len() as u64);
                let rest = left - take;
                *state = if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                };
                return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk not followed by CRLF");
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            // Trailer fields are read and dropped: they would reach the
            // client only if it asked for them (TE: trailers).
            Chunk::Trailers => match line(buf)? {
                Some(2) => {
                    buf.advance(2);
                    *state = Chunk::Done;
                }
                Some(end) => buf.advance(end),
                None => return Ok(Decoded::NeedMore),
            },
            Chunk::Done => return Ok(Decoded::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..wire.len() {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::from(&wire[..split]);
            let mut rest = &wire[split..];
            let mut out = Vec::new();
            for _ in 0..100 {
                match decode_chunked(&mut state, &mut buf).expect("valid") {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => {
                        assert!(!rest.is_empty(), "split {split}: stuck");
                        buf.extend_from_slice(&rest[..1]);
                        rest = &rest[1..];
                    }
                    Decoded::Done => break,
                }
            }
            assert_eq!(out, b"hello world", "split {split}");
            assert_eq!(state, Chunk::Done);
            assert!(buf.is_empty() && rest.is_empty(), "split {split}");
        }
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"ffffffffffffffffff\r\n",
            // Bare LF and other controls in a size line or a trailer.
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5\n",
            b"5;a\x00b\r\nhello\r\n",
            b"0\r\nX-T: a\nb\r\n\r\n",
        ] {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::from(bad);
            let mut result = Ok(Decoded::NeedMore);
            for _ in 0..10 {
                result = decode_chunked(&mut state, &mut buf);
                if !matches!(result, Ok(Decoded::Data(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{bad:?}: {result:?}");
        }
    }
}
