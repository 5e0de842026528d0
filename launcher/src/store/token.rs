//! The job's secret token: made by node 0's launcher, handed to every node (a file named by
//! `--rdzv-token-file`, or the environment of the ranks), and proven by every connection to the
//! store before anything else is read.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::store::error::{Result, StoreError};

/// Bytes of randomness in a generated token (written as twice as many hex characters).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// The shortest token accepted: a hex token of 16 random bytes. Shorter ones are refused as
/// guessable.
pub const MIN_TOKEN_CHARS: usize = 32;
/// The longest token accepted, and the largest token file read.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// The job's secret: the HMAC key of the store's challenge-response. Its `Debug` output hides
/// the secret, so a token can sit in structs that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    text: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<secret, {} characters>)", self.text.len())
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl Token {
    /// A new token: 32 bytes from the operating system's CSPRNG, as 64 hex characters.
    pub fn generate() -> Result<Token> {
        let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            StoreError::Token(format!(
                "the operating system's random number generator failed ({e}); cannot make a token"
            ))
        })?;
        Ok(Token { text: hex(&bytes) })
    }

    /// A token from its text (surrounding whitespace, such as a file's final newline, is
    /// dropped). It must be 32 to 4096 printable ASCII characters without spaces.
    pub fn from_text(text: &str) -> Result<Token> {
        let t = text.trim();
        if t.is_empty() {
            return Err(StoreError::Token(
                "the token is empty; make one with `Token::generate` (or `openssl rand -hex 32`)".into(),
            ));
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(StoreError::Token(format!(
                "the token contains {c:?}; a token is printable ASCII without spaces, such as the 64 hex \
                 characters `Token::generate` (or `openssl rand -hex 32`) makes"
            )));
        }
        if t.len() < MIN_TOKEN_CHARS {
            return Err(StoreError::Token(format!(
                "the token has {} characters, fewer than the {MIN_TOKEN_CHARS} required to be hard to guess; \
                 make one with `Token::generate` (or `openssl rand -hex 32`)",
                t.len()
            )));
        }
        if t.len() > MAX_TOKEN_CHARS {
            return Err(StoreError::Token(format!(
                "the token has {} characters, more than {MAX_TOKEN_CHARS}; is this the right text?",
                t.len()
            )));
        }
        Ok(Token { text: t.to_string() })
    }

    /// The token in the file at `path` (what `--rdzv-token-file` names). On Unix the file must
    /// not be readable or writable by group or others (`chmod 600`), as ssh asks of its keys.
    pub fn from_file(path: &Path) -> Result<Token> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            StoreError::Token(format!(
                "cannot read the token file {shown}: {e}; check the path given to --rdzv-token-file"
            ))
        })?;
        if !meta.is_file() {
            return Err(StoreError::Token(format!(
                "the token file {shown} is not a regular file"
            )));
        }
        if meta.len() > MAX_TOKEN_CHARS as u64 + 2 {
            return Err(StoreError::Token(format!(
                "the token file {shown} has {} bytes, more than a token ({MAX_TOKEN_CHARS} characters at most); \
                 is this the right file?",
                meta.len()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(StoreError::Token(format!(
                    "the token file {shown} has mode {mode:03o}: other users can read or change the job's secret; \
                     run `chmod 600 {shown}`"
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            StoreError::Token(format!(
                "cannot read the token file {shown}: {e} (a token is ASCII text)"
            ))
        })?;
        Token::from_text(&text).map_err(|e| match e {
            StoreError::Token(m) => StoreError::Token(format!("in {shown}: {m}")),
            other => other,
        })
    }

    /// Writes the token to a new file at `path`, readable and writable by this user only
    /// (mode 600 on Unix). Refuses to replace an existing file.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let shown = path.display();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            StoreError::Token(format!(
                "cannot create the token file {shown}: {e} (an existing file is never replaced; \
                 delete it, or read it with `Token::from_file`)"
            ))
        })?;
        writeln!(file, "{}", self.text)
            .and_then(|_| file.sync_all())
            .map_err(|e| StoreError::Token(format!("cannot write the token file {shown}: {e}")))
    }

    /// The token's text, to hand to the ranks (an environment variable, a file). Keep it out of
    /// logs and command lines, where other users of the machine can read it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key.
    pub(crate) fn key(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nabla-token-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_tokens_are_64_hex_characters_and_differ() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.expose().len(), 64);
        assert!(
            a.expose()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert!(!shown.contains(a.expose()) && shown.contains("secret"), "{shown}");
        assert_eq!(hex(&[0, 15, 16, 255]), "000f10ff");
    }

    #[test]
    fn bad_token_texts_are_errors_that_say_what_to_do() {
        let e = Token::from_text("  \n").unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("openssl rand -hex 32"), "{e}");
        let e = Token::from_text("short").unwrap_err().to_string();
        assert!(e.contains("5 characters, fewer than the 32"), "{e}");
        let e = Token::from_text(&format!("{} {}", "a".repeat(20), "b".repeat(20)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains ' '"), "{e}");
        let e = Token::from_text(&"x".repeat(MAX_TOKEN_CHARS + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 4096"), "{e}");
        assert_eq!(
            Token::from_text(&format!("  {}\n", "k".repeat(32))).unwrap().expose(),
            "k".repeat(32)
        );
    }

    #[test]
    fn token_files_round_trip_and_are_private() {
        let dir = scratch("files");
        let path = dir.join("token");
        let t = Token::generate().unwrap();
        t.write_file(&path).unwrap();
        assert_eq!(Token::from_file(&path).unwrap(), t);
        let e = t.write_file(&path).unwrap_err().to_string();
        assert!(e.contains("never replaced"), "{e}");
        let e = Token::from_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("--rdzv-token-file"), "{e}");
        let e = Token::from_file(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Token::from_file(&path).unwrap_err().to_string();
            assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        }
        let short = dir.join("short");
        Token::generate().unwrap().write_file(&short).unwrap();
        std::fs::write(&short, "abc\n").unwrap();
        let e = Token::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("in ") && e.contains("3 characters"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
