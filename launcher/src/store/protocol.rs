//! The store's wire format. All integers are big-endian.
//!
//! **Handshake** (fixed sizes, before any frame; nothing else is read or written before it
//! succeeds):
//!
//! ```text
//! server -> client  HELLO    "NBST" | version u8 | server_nonce [32]                       37 bytes
//! client -> server  ANSWER   "NBST" | version u8 | client_proof [32] | client_nonce [32]   69 bytes
//! server -> client  VERDICT  0x01 | server_proof [32]     accepted                         33 bytes
//!                            0x00                         wrong token, then the server closes
//!                            0x02                         too many connections, then it closes
//! client_proof = HMAC-SHA256(token, server_nonce || "nabla-launch store v1: the client holds the job token")
//! server_proof = HMAC-SHA256(token, client_nonce || server_nonce || "nabla-launch store v1: the server holds the job token")
//! ```
//!
//! The client checks `server_proof` before it sends a request (mutual authentication).
//!
//! **Frames** (after an accepted handshake; one request, then its response, in turn):
//!
//! ```text
//! length u32 (bytes after this field, 2 ..= the frame limit) | version u8 | kind u8 | body
//! ```
//!
//! Fields of a body: `key` = length u16 (1..) | UTF-8; `bytes` = length u32 | bytes;
//! `maybe` = 0x00 (none) or 0x01 | `bytes`; `ms` = u64 milliseconds; `i64` two's complement.
//!
//! ```text
//! requests                                        responses
//! 0x01 SET      key bytes                         0x80 DONE
//! 0x02 GET      key ms      (wait up to ms)       0x81 VALUE    bytes
//! 0x03 TRY_GET  key                               0x82 ABSENT
//! 0x04 ADD      key i64                           0x83 INT      i64
//! 0x05 CAS      key maybe(expected) bytes(new)    0x84 SWAP     u8 (1 = swapped) maybe(current)
//! 0x06 WAIT     count u16 | key * count | ms      0x85 DELETED  u8 (1 = the key existed)
//! 0x07 DELETE   key                               0x86 TIMEOUT  count u16 | key * count (missing)
//!                                                 0x87 ERROR    message: length u16 | UTF-8
//! ```
//!
//! SET -> DONE, GET -> VALUE or TIMEOUT, TRY_GET -> VALUE or ABSENT, ADD -> INT, CAS -> SWAP,
//! WAIT -> DONE or TIMEOUT, DELETE -> DELETED; any request may get ERROR. `add` stores its
//! integer as decimal ASCII, so `get` reads it as text. A frame over the limit, an unknown
//! version or kind, or a body that does not parse gets ERROR and the connection closed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::store::error::{Result, StoreError};

/// The protocol version this build speaks (the version byte of the handshake and of every frame).
pub const PROTOCOL_VERSION: u8 = 1;
/// The first bytes of the handshake messages.
pub(crate) const MAGIC: &[u8; 4] = b"NBST";
/// Bytes of the server's HELLO.
pub(crate) const HELLO_LEN: usize = 4 + 1 + 32;
/// Bytes of the client's ANSWER.
pub(crate) const ANSWER_LEN: usize = 4 + 1 + 32 + 32;
/// VERDICT: the client is in; the server's proof follows.
pub(crate) const VERDICT_ACCEPTED: u8 = 1;
/// VERDICT: wrong token.
pub(crate) const VERDICT_WRONG_TOKEN: u8 = 0;
/// VERDICT: the server serves as many connections as it may.
pub(crate) const VERDICT_FULL: u8 = 2;
/// The default frame limit (length field), 4 MiB: far above rendezvous records and NCCL's
/// 128-byte id, far below what could hurt the server.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 4 << 20;
/// Most keys named in a TIMEOUT response.
const MAX_MISSING_LISTED: usize = 16;
/// Bytes read into a frame's buffer before more memory is taken (frames grow as data arrives).
const FIRST_READ: usize = 64 << 10;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Set {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
        wait: Duration,
    },
    TryGet {
        key: String,
    },
    Add {
        key: String,
        delta: i64,
    },
    CompareAndSet {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    Wait {
        keys: Vec<String>,
        wait: Duration,
    },
    Delete {
        key: String,
    },
}

impl Request {
    /// The operation's name, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Request::Set { .. } => "set",
            Request::Get { .. } => "get",
            Request::TryGet { .. } => "try_get",
            Request::Add { .. } => "add",
            Request::CompareAndSet { .. } => "compare_and_set",
            Request::Wait { .. } => "wait",
            Request::Delete { .. } => "delete",
        }
    }
}

/// A response from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    Done,
    Value(Vec<u8>),
    Absent,
    Int(i64),
    Swap { swapped: bool, current: Option<Vec<u8>> },
    Deleted(bool),
    Timeout { missing: Vec<String> },
    Error(String),
}

/// Builds a frame: the length is filled in by [`Writer::finish`].
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(kind: u8) -> Writer {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0, 0, 0, 0, PROTOCOL_VERSION, kind]);
        Writer { buf }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn key(&mut self, k: &str) {
        // Lengths were checked by `check_key`.
        self.u16(k.len() as u16);
        self.buf.extend_from_slice(k.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(b);
    }
    fn maybe(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    fn ms(&mut self, d: Duration) {
        self.u64(d.as_millis().min(u64::MAX as u128) as u64);
    }
    /// The frame, or an error when it is over `max_frame` bytes.
    fn finish(mut self, max_frame: u32) -> Result<Vec<u8>> {
        let len = self.buf.len() - 4;
        if len > max_frame as usize {
            return Err(StoreError::Usage(format!(
                "the message has {len} bytes, over the store's frame limit of {max_frame}; keep large data \
                 out of the store (it is for rendezvous records, ids and notices)"
            )));
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(self.buf)
    }
}

/// Checks a key before it is sent: not empty, at most 65535 bytes.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::Usage("store keys must not be empty".into()));
    }
    if key.len() > u16::MAX as usize {
        return Err(StoreError::Usage(format!(
            "a store key has {} bytes, over the limit of {}",
            key.len(),
            u16::MAX
        )));
    }
    Ok(())
}

/// Encodes a request as a frame.
pub(crate) fn encode_request(req: &Request, max_frame: u32) -> Result<Vec<u8>> {
    let w = match req {
        Request::Set { key, value } => {
            let mut w = Writer::new(0x01);
            w.key(key);
            w.bytes(value);
            w
        }
        Request::Get { key, wait } => {
            let mut w = Writer::new(0x02);
            w.key(key);
            w.ms(*wait);
            w
        }
        Request::TryGet { key } => {
            let mut w = Writer::new(0x03);
            w.key(key);
            w
        }
        Request::Add { key, delta } => {
            let mut w = Writer::new(0x04);
            w.key(key);
            w.u64(*delta as u64);
            w
        }
        Request::CompareAndSet { key, expected, new } => {
            let mut w = Writer::new(0x05);
            w.key(key);
            w.maybe(expected.as_deref());
            w.bytes(new);
            w
        }
        Request::Wait { keys, wait } => {
            if keys.len() > u16::MAX as usize {
                return Err(StoreError::Usage(format!(
                    "wait names {} keys, over the limit of {} per call",
                    keys.len(),
                    u16::MAX
                )));
            }
            let mut w = Writer::new(0x06);
            w.u16(keys.len() as u16);
            for k in keys {
                w.key(k);
            }
            w.ms(*wait);
            w
        }
        Request::Delete { key } => {
            let mut w = Writer::new(0x07);
            w.key(key);
            w
        }
    };
    w.finish(max_frame)
}

/// Most bytes of an ERROR message (a longer one is cut), so that it fits the smallest frame limit.
const MAX_ERROR_MESSAGE: usize = 900;

/// Encodes a response as a frame. One over the frame limit (a TIMEOUT listing long keys under a
/// small limit) goes as a TIMEOUT listing no key, or as an ERROR that says so.
pub(crate) fn encode_response(resp: &Response, max_frame: u32) -> Vec<u8> {
    encode_response_within(resp, max_frame).unwrap_or_else(|_| {
        let fallback = match resp {
            Response::Timeout { .. } => Response::Timeout { missing: Vec::new() },
            _ => Response::Error(format!("the response is over the frame limit of {max_frame} bytes")),
        };
        encode_response_within(&fallback, max_frame).expect("a small response fits any frame limit of 1024 or more")
    })
}

fn encode_response_within(resp: &Response, max_frame: u32) -> Result<Vec<u8>> {
    let w = match resp {
        Response::Done => Writer::new(0x80),
        Response::Value(v) => {
            let mut w = Writer::new(0x81);
            w.bytes(v);
            w
        }
        Response::Absent => Writer::new(0x82),
        Response::Int(i) => {
            let mut w = Writer::new(0x83);
            w.u64(*i as u64);
            w
        }
        Response::Swap { swapped, current } => {
            let mut w = Writer::new(0x84);
            w.u8(*swapped as u8);
            w.maybe(current.as_deref());
            w
        }
        Response::Deleted(existed) => {
            let mut w = Writer::new(0x85);
            w.u8(*existed as u8);
            w
        }
        Response::Timeout { missing } => {
            let listed = &missing[..missing.len().min(MAX_MISSING_LISTED)];
            let mut w = Writer::new(0x86);
            w.u16(listed.len() as u16);
            for k in listed {
                w.key(k);
            }
            w
        }
        Response::Error(message) => {
            let mut end = message.len().min(MAX_ERROR_MESSAGE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            let m = &message[..end];
            let mut w = Writer::new(0x87);
            w.u16(m.len() as u16);
            w.buf.extend_from_slice(m.as_bytes());
            w
        }
    };
    w.finish(max_frame)
}

/// Reads the fields of a frame's body, with errors that name what was cut short.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(StoreError::Protocol(format!(
                "{} frame ends inside its {field} ({} bytes left, {n} needed)",
                self.what,
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2, field)?.try_into().expect("2 bytes")))
    }
    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8, field)?.try_into().expect("8 bytes")))
    }
    fn key(&mut self) -> Result<String> {
        let n = self.u16("key length")? as usize;
        if n == 0 {
            return Err(StoreError::Protocol(format!("{} frame has an empty key", self.what)));
        }
        let raw = self.take(n, "key")?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| StoreError::Protocol(format!("{} frame has a key that is not UTF-8", self.what)))
    }
    fn bytes(&mut self, field: &str) -> Result<Vec<u8>> {
        let n = u32::from_be_bytes(self.take(4, field)?.try_into().expect("4 bytes")) as usize;
        Ok(self.take(n, field)?.to_vec())
    }
    fn maybe(&mut self, field: &str) -> Result<Option<Vec<u8>>> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(field)?)),
            t => Err(StoreError::Protocol(format!(
                "{} frame has {t:#04x} where its {field} says present (1) or absent (0)",
                self.what
            ))),
        }
    }
    fn ms(&mut self, field: &str) -> Result<Duration> {
        Ok(Duration::from_millis(self.u64(field)?))
    }
    fn end(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!(
                "{} frame has {} bytes after its last field",
                self.what,
                self.rest.len()
            )))
        }
    }
}

/// The version and kind bytes of a frame's payload, checked.
fn header(frame: &[u8]) -> Result<(u8, &[u8])> {
    if frame.len() < 2 {
        return Err(StoreError::Protocol(format!(
            "a frame of {} bytes is shorter than its version and kind",
            frame.len()
        )));
    }
    if frame[0] != PROTOCOL_VERSION {
        return Err(StoreError::Protocol(format!(
            "a frame of protocol version {}, but this side speaks version {PROTOCOL_VERSION}; use the same \
             nabla-launch build on every node",
            frame[0]
        )));
    }
    Ok((frame[1], &frame[2..]))
}

/// Decodes a frame's payload (what follows the length field) as a request.
pub(crate) fn decode_request(frame: &[u8]) -> Result<Request> {
    let (kind, body) = header(frame)?;
    let what = match kind {
        0x01 => "a SET",
        0x02 => "a GET",
        0x03 => "a TRY_GET",
        0x04 => "an ADD",
        0x05 => "a CAS",
        0x06 => "a WAIT",
        0x07 => "a DELETE",
        k => return Err(StoreError::Protocol(format!("unknown request kind {k:#04x}"))),
    };
    let mut r = Reader { rest: body, what };
    let req = match kind {
        0x01 => Request::Set {
            key: r.key()?,
            value: r.bytes("value")?,
        },
        0x02 => Request::Get {
            key: r.key()?,
            wait: r.ms("wait")?,
        },
        0x03 => Request::TryGet { key: r.key()? },
        0x04 => Request::Add {
            key: r.key()?,
            delta: r.u64("delta")? as i64,
        },
        0x05 => Request::CompareAndSet {
            key: r.key()?,
            expected: r.maybe("expected value")?,
            new: r.bytes("new value")?,
        },
        0x06 => {
            let n = r.u16("key count")? as usize;
            let mut keys = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                keys.push(r.key()?);
            }
            Request::Wait {
                keys,
                wait: r.ms("wait")?,
            }
        }
        _ => Request::Delete { key: r.key()? },
    };
    r.end()?;
    Ok(req)
}

/// Decodes a frame's payload as a response.
pub(crate) fn decode_response(frame: &[u8]) -> Result<Response> {
    let (kind, body) = header(frame)?;
    let mut r = Reader {
        rest: body,
        what: "a response",
    };
    let resp = match kind {
        0x80 => Response::Done,
        0x81 => Response::Value(r.bytes("value")?),
        0x82 => Response::Absent,
        0x83 => Response::Int(r.u64("integer")? as i64),
        0x84 => Response::Swap {
            swapped: r.u8("swapped flag")? == 1,
            current: r.maybe("current value")?,
        },
        0x85 => Response::Deleted(r.u8("existed flag")? == 1),
        0x86 => {
            let n = r.u16("key count")? as usize;
            let mut missing = Vec::with_capacity(n.min(MAX_MISSING_LISTED));
            for _ in 0..n {
                missing.push(r.key()?);
            }
            Response::Timeout { missing }
        }
        0x87 => {
            let n = r.u16("message length")? as usize;
            Response::Error(String::from_utf8_lossy(r.take(n, "message")?).into_owned())
        }
        k => return Err(StoreError::Protocol(format!("unknown response kind {k:#04x}"))),
    };
    r.end()?;
    Ok(resp)
}

/// Reads one frame's payload (what follows the length field) from `r`.
///
/// Waits up to `idle` for the frame's first byte (forever when `None`); returns `Ok(None)` when
/// the stream ends cleanly before it. Once the frame has started, the rest must arrive within
/// `timeout`. The declared length is checked against `max_frame` before any memory is taken for
/// the payload, and the buffer grows only as bytes arrive.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: u32,
    timeout: Duration,
    idle: Option<Duration>,
) -> Result<Option<Vec<u8>>> {
    let mut first = [0u8; 1];
    let n = match idle {
        None => r.read(&mut first).await,
        Some(t) => tokio::time::timeout(t, r.read(&mut first))
            .await
            .map_err(|_| StoreError::Timeout(format!("no answer within {:.1} s", t.as_secs_f64())))?,
    }
    .map_err(|e| StoreError::Connection(format!("reading a frame failed: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    let rest = async {
        let mut len = [first[0], 0, 0, 0];
        r.read_exact(&mut len[1..])
            .await
            .map_err(|e| StoreError::Connection(format!("the stream ended inside a frame's length: {e}")))?;
        let len = u32::from_be_bytes(len);
        if len > max_frame {
            return Err(StoreError::Protocol(format!(
                "a frame declares {len} bytes, over the limit of {max_frame}"
            )));
        }
        if len < 2 {
            return Err(StoreError::Protocol(format!(
                "a frame declares {len} bytes, fewer than its version and kind"
            )));
        }
        let mut buf = Vec::with_capacity((len as usize).min(FIRST_READ));
        let got = (&mut *r)
            .take(len as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Connection(format!("reading a frame failed: {e}")))?;
        if got < len as usize {
            return Err(StoreError::Connection(format!(
                "the stream ended inside a frame ({got} of {len} bytes)"
            )));
        }
        Ok(buf)
    };
    match tokio::time::timeout(timeout, rest).await {
        Ok(r) => r.map(Some),
        Err(_) => Err(StoreError::Timeout(format!(
            "a frame was started but not finished within {:.1} s",
            timeout.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(req: Request) {
        let frame = encode_request(&req, DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        assert_eq!(decode_request(&frame[4..]).unwrap(), req);
    }

    #[test]
    fn every_request_and_response_roundtrips() {
        let ms = Duration::from_millis(1234);
        roundtrip_request(Request::Set {
            key: "k".into(),
            value: vec![0, 255, 7],
        });
        roundtrip_request(Request::Get {
            key: "ключ".into(),
            wait: ms,
        });
        roundtrip_request(Request::TryGet { key: "k".into() });
        roundtrip_request(Request::Add {
            key: "k".into(),
            delta: -5,
        });
        roundtrip_request(Request::CompareAndSet {
            key: "k".into(),
            expected: None,
            new: vec![1],
        });
        roundtrip_request(Request::CompareAndSet {
            key: "k".into(),
            expected: Some(vec![]),
            new: vec![],
        });
        roundtrip_request(Request::Wait {
            keys: vec!["a".into(), "b".into()],
            wait: ms,
        });
        roundtrip_request(Request::Delete { key: "k".into() });
        for resp in [
            Response::Done,
            Response::Value(vec![9; 300]),
            Response::Absent,
            Response::Int(i64::MIN),
            Response::Swap {
                swapped: true,
                current: Some(vec![1, 2]),
            },
            Response::Swap {
                swapped: false,
                current: None,
            },
            Response::Deleted(true),
            Response::Timeout {
                missing: vec!["x".into()],
            },
            Response::Error("no".into()),
        ] {
            let frame = encode_response(&resp, DEFAULT_MAX_FRAME_BYTES);
            assert_eq!(decode_response(&frame[4..]).unwrap(), resp);
        }
    }

    #[test]
    fn bad_frames_are_errors_that_say_why() {
        let frame = encode_request(&Request::TryGet { key: "key".into() }, 1024).unwrap();
        let mut bad = frame[4..].to_vec();
        bad[0] = 9;
        assert!(
            decode_request(&bad)
                .unwrap_err()
                .to_string()
                .contains("protocol version 9")
        );
        bad[0] = PROTOCOL_VERSION;
        bad[1] = 0x42;
        assert!(
            decode_request(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown request kind 0x42")
        );
        let cut = &frame[4..frame.len() - 1];
        let e = decode_request(cut).unwrap_err().to_string();
        assert!(e.contains("ends inside its key"), "{e}");
        let mut long = frame[4..].to_vec();
        long.push(0);
        assert!(decode_request(&long).unwrap_err().to_string().contains("1 bytes after"));
        // A value whose length field claims more than the frame holds.
        let mut set = encode_request(
            &Request::Set {
                key: "k".into(),
                value: vec![1],
            },
            1024,
        )
        .unwrap();
        let n = set.len();
        set[n - 5..n - 1].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_request(&set[4..]).is_err());
        let big = Request::Set {
            key: "k".into(),
            value: vec![0; 2000],
        };
        assert!(
            encode_request(&big, 1024)
                .unwrap_err()
                .to_string()
                .contains("frame limit of 1024")
        );
    }

    #[test]
    fn responses_over_the_frame_limit_still_decode() {
        let long_keys = Response::Timeout {
            missing: vec!["k".repeat(600), "j".repeat(600)],
        };
        let frame = encode_response(&long_keys, 1024);
        assert_eq!(
            decode_response(&frame[4..]).unwrap(),
            Response::Timeout { missing: vec![] }
        );
        let frame = encode_response(&Response::Value(vec![0; 2000]), 1024);
        match decode_response(&frame[4..]).unwrap() {
            Response::Error(m) => assert!(m.contains("over the frame limit of 1024"), "{m}"),
            r => panic!("{r:?}"),
        }
        let frame = encode_response(&Response::Error("é".repeat(2000)), 1024);
        assert!(frame.len() <= 1028);
        assert!(matches!(decode_response(&frame[4..]).unwrap(), Response::Error(m) if m.len() <= 900));
    }

    #[tokio::test]
    async fn read_frame_checks_the_declared_length_before_reading() {
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 1];
        let e = read_frame(&mut huge, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("declares 4294967295 bytes"), "{e}");
        let mut empty: &[u8] = &[];
        assert!(
            read_frame(&mut empty, 16, Duration::from_secs(1), None)
                .await
                .unwrap()
                .is_none()
        );
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 1, 0];
        let e = read_frame(&mut short, 16, Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("3 of 9 bytes"), "{e}");
    }
}
