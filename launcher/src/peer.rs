//! The challenge-response that opens every connection between two ranks (the TCP ring of
//! `nabla-dist`), so that no one without the job's [`Token`] can join a ring or feed it data.
//!
//! Blocking, over any `Read + Write` stream (the caller sets the socket's timeouts first). The
//! acceptor is the side that called `accept`:
//!
//! 1. acceptor -> connector: `MAGIC (8) | nonce_b (32)`
//! 2. connector -> acceptor: `MAGIC (8) | nonce_a (32) | hello (HELLO_LEN) |
//!    HMAC(token, CONNECTOR_CONTEXT | nonce_b | nonce_a | hello) (32)`
//! 3. acceptor -> connector: `HMAC(token, ACCEPTOR_CONTEXT | nonce_a | nonce_b | hello) (32)`
//!
//! Both proofs cover fresh nonces from both sides and a context string per direction, so a proof
//! cannot be replayed on another connection or reflected to its sender; the connector's `hello`
//! (who it is and which ring it joins) is covered too, so it cannot be altered on the way. The
//! acceptor reads a fixed 40 + [`HELLO_LEN`] + 32 bytes before it has checked anything, and
//! answers nothing but its nonce to a peer that has not proven the token.

use std::io::{Read, Write};

use crate::store::Token;
use crate::store::auth::{MAC_LEN, NONCE_LEN, nonce, tag, tag_ok};
use crate::store::{Result, StoreError};

/// Where `nabla-dist` puts the shared-memory mailboxes of ring neighbours on one host:
/// `{MAILBOX_DIR}/{MAILBOX_PREFIX}{pid}-{random}`. A rank unlinks its own as soon as its
/// neighbours have mapped it; the launcher removes those of a rank that died before that.
pub const MAILBOX_DIR: &str = "/dev/shm";
/// See [`MAILBOX_DIR`].
pub const MAILBOX_PREFIX: &str = "nabla-ring-";

/// The first bytes each side sends: the protocol and its version.
pub const MAGIC: [u8; 8] = *b"NBRING1\0";
/// Bytes of the connector's hello (opaque here: the ring's caller packs who it is in it).
pub const HELLO_LEN: usize = 64;
const CONNECTOR_CONTEXT: &[u8] = b"nabla ring v1: the connecting rank holds the job token";
const ACCEPTOR_CONTEXT: &[u8] = b"nabla ring v1: the accepting rank holds the job token";

fn io_error(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Connection(format!("ring handshake: {what}: {e}"))
}

fn check_magic(got: &[u8]) -> Result<()> {
    if got != MAGIC {
        return Err(StoreError::Auth(format!(
            "ring handshake: the peer is not a nabla ring peer of this version (it sent {:02x?} instead of {:02x?})",
            got, MAGIC
        )));
    }
    Ok(())
}

/// The connecting side: proves the token, sends `hello`, and checks the acceptor's proof.
pub fn connect<S: Read + Write>(stream: &mut S, token: &Token, hello: &[u8; HELLO_LEN]) -> Result<()> {
    let mut first = [0u8; 8 + NONCE_LEN];
    stream
        .read_exact(&mut first)
        .map_err(|e| io_error("reading the acceptor's challenge", e))?;
    check_magic(&first[..8])?;
    let nonce_b: [u8; NONCE_LEN] = first[8..].try_into().expect("fixed length");
    let nonce_a = nonce()?;
    let proof = tag(token, &[CONNECTOR_CONTEXT, &nonce_b, &nonce_a, hello]);
    let mut msg = Vec::with_capacity(8 + NONCE_LEN + HELLO_LEN + MAC_LEN);
    msg.extend_from_slice(&MAGIC);
    msg.extend_from_slice(&nonce_a);
    msg.extend_from_slice(hello);
    msg.extend_from_slice(&proof);
    stream
        .write_all(&msg)
        .and_then(|_| stream.flush())
        .map_err(|e| io_error("sending the proof", e))?;
    let mut answer = [0u8; MAC_LEN];
    stream.read_exact(&mut answer).map_err(|e| {
        io_error(
            "reading the acceptor's proof (a peer that closes here usually holds another token)",
            e,
        )
    })?;
    if !tag_ok(token, &[ACCEPTOR_CONTEXT, &nonce_a, &nonce_b, hello], &answer) {
        return Err(StoreError::Auth(
            "ring handshake: the accepting peer does not hold this job's token".into(),
        ));
    }
    Ok(())
}

/// The accepting side: challenges, checks the connector's proof, answers with its own, and
/// returns the connector's hello. An error means the peer must be dropped unheard.
pub fn accept<S: Read + Write>(stream: &mut S, token: &Token) -> Result<[u8; HELLO_LEN]> {
    let nonce_b = nonce()?;
    let mut first = Vec::with_capacity(8 + NONCE_LEN);
    first.extend_from_slice(&MAGIC);
    first.extend_from_slice(&nonce_b);
    stream
        .write_all(&first)
        .and_then(|_| stream.flush())
        .map_err(|e| io_error("sending the challenge", e))?;
    let mut msg = [0u8; 8 + NONCE_LEN + HELLO_LEN + MAC_LEN];
    stream
        .read_exact(&mut msg)
        .map_err(|e| io_error("reading the connector's proof", e))?;
    check_magic(&msg[..8])?;
    let nonce_a: [u8; NONCE_LEN] = msg[8..8 + NONCE_LEN].try_into().expect("fixed length");
    let hello: [u8; HELLO_LEN] = msg[8 + NONCE_LEN..8 + NONCE_LEN + HELLO_LEN]
        .try_into()
        .expect("fixed length");
    let proof = &msg[8 + NONCE_LEN + HELLO_LEN..];
    if !tag_ok(token, &[CONNECTOR_CONTEXT, &nonce_b, &nonce_a, &hello], proof) {
        return Err(StoreError::Auth(
            "ring handshake: the connecting peer does not hold this job's token".into(),
        ));
    }
    let answer = tag(token, &[ACCEPTOR_CONTEXT, &nonce_a, &nonce_b, &hello]);
    stream
        .write_all(&answer)
        .and_then(|_| stream.flush())
        .map_err(|e| io_error("sending the proof", e))?;
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn token(c: char) -> Token {
        Token::from_text(&c.to_string().repeat(40)).unwrap()
    }

    fn run(connector_token: Token, acceptor_token: Token) -> (Result<()>, Result<[u8; HELLO_LEN]>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let r = accept(&mut s, &acceptor_token);
            drop(s);
            r
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let c = connect(&mut s, &connector_token, &[7u8; HELLO_LEN]);
        (c, acceptor.join().unwrap())
    }

    #[test]
    fn peers_with_the_same_token_meet_and_the_hello_arrives() {
        let (c, a) = run(token('x'), token('x'));
        c.unwrap();
        assert_eq!(a.unwrap(), [7u8; HELLO_LEN]);
    }

    #[test]
    fn a_connector_with_another_token_is_refused_on_both_sides() {
        let (c, a) = run(token('x'), token('y'));
        assert!(matches!(a, Err(StoreError::Auth(_))), "{a:?}");
        assert!(c.is_err(), "the connector believed it had joined: {c:?}");
    }

    #[test]
    fn garbage_instead_of_a_handshake_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            accept(&mut s, &token('x'))
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[0x47u8; 8 + NONCE_LEN + HELLO_LEN + MAC_LEN]).unwrap();
        let r = acceptor.join().unwrap();
        assert!(
            matches!(r, Err(StoreError::Auth(ref m)) if m.contains("not a nabla ring peer")),
            "{r:?}"
        );
    }
}
