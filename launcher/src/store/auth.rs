//! The challenge-response that opens every connection (layout in [`crate::store::protocol`]).
//!
//! The server proves nothing until the client has proven the token, and the client reads
//! nothing of the store until the server has proven it back: it is mutual. Both proofs are
//! HMAC-SHA256 under the token over fresh random nonces with a context string per direction, so
//! a proof cannot be replayed on another connection or reflected back to its sender. MACs are
//! compared in constant time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::error::{Result, StoreError};
use crate::store::token::Token;

/// Bytes of a nonce.
pub(crate) const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
pub(crate) const MAC_LEN: usize = 32;
/// What the client's proof covers after the server's nonce.
pub(crate) const CLIENT_CONTEXT: &[u8] = b"nabla-launch store v1: the client holds the job token";
/// What the server's proof covers after the two nonces.
pub(crate) const SERVER_CONTEXT: &[u8] = b"nabla-launch store v1: the server holds the job token";

type HmacSha256 = Hmac<Sha256>;

/// A fresh nonce from the operating system's CSPRNG.
pub(crate) fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| {
        StoreError::Auth(format!(
            "the operating system's random number generator failed ({e}); cannot make a challenge"
        ))
    })?;
    Ok(n)
}

fn mac_over(token: &Token, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(token.key()).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac
}

/// HMAC-SHA256 under the token over the concatenated `parts` (for other handshakes, such as
/// the ring's in [`crate::peer`]).
pub(crate) fn tag(token: &Token, parts: &[&[u8]]) -> [u8; MAC_LEN] {
    mac_over(token, parts).finalize().into_bytes().into()
}

/// True when `proof` is [`tag`] of `parts` (constant time).
pub(crate) fn tag_ok(token: &Token, parts: &[&[u8]], proof: &[u8]) -> bool {
    mac_over(token, parts).verify_slice(proof).is_ok()
}

/// The client's proof: HMAC(token, server_nonce || CLIENT_CONTEXT).
pub(crate) fn client_proof(token: &Token, server_nonce: &[u8; NONCE_LEN]) -> [u8; MAC_LEN] {
    mac_over(token, &[server_nonce, CLIENT_CONTEXT])
        .finalize()
        .into_bytes()
        .into()
}

/// True when `proof` is the client's proof for `server_nonce` (constant time).
pub(crate) fn client_proof_ok(token: &Token, server_nonce: &[u8; NONCE_LEN], proof: &[u8]) -> bool {
    mac_over(token, &[server_nonce, CLIENT_CONTEXT])
        .verify_slice(proof)
        .is_ok()
}

/// The server's proof: HMAC(token, client_nonce || server_nonce || SERVER_CONTEXT).
pub(crate) fn server_proof(
    token: &Token,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    mac_over(token, &[client_nonce, server_nonce, SERVER_CONTEXT])
        .finalize()
        .into_bytes()
        .into()
}

/// True when `proof` is the server's proof for the two nonces (constant time).
pub(crate) fn server_proof_ok(
    token: &Token,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    proof: &[u8],
) -> bool {
    mac_over(token, &[client_nonce, server_nonce, SERVER_CONTEXT])
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(c: char) -> Token {
        Token::from_text(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn proofs_check_the_token_the_nonce_and_the_direction() {
        let (a, b) = (token('a'), token('b'));
        let (n1, n2) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(n1, n2, "two nonces from the CSPRNG are equal");
        let p = client_proof(&a, &n1);
        assert!(client_proof_ok(&a, &n1, &p));
        assert!(!client_proof_ok(&b, &n1, &p), "another token's proof passed");
        assert!(!client_proof_ok(&a, &n2, &p), "a proof for another nonce passed");
        assert!(!client_proof_ok(&a, &n1, &p[..31]), "a truncated proof passed");
        // A client proof reflected back is not a server proof, whatever the nonces.
        assert!(!server_proof_ok(&a, &n1, &n1, &p));
        let s = server_proof(&a, &n2, &n1);
        assert!(server_proof_ok(&a, &n2, &n1, &s));
        assert!(!server_proof_ok(&a, &n1, &n2, &s), "swapped nonces passed");
        assert!(!server_proof_ok(&b, &n2, &n1, &s));
    }

    #[test]
    fn a_proof_is_hmac_sha256_over_the_concatenated_parts() {
        let key = Token::from_text(&"Jefe".repeat(8)).unwrap();
        let mac = mac_over(&key, &[b"what do ya want ", b"for nothing?"])
            .finalize()
            .into_bytes();
        let direct = {
            let mut m = HmacSha256::new_from_slice(&b"Jefe".repeat(8)).unwrap();
            m.update(b"what do ya want for nothing?");
            m.finalize().into_bytes()
        };
        assert_eq!(mac, direct);
    }
}
