//! Bearer-token authentication: the token file, the interceptor that checks the
//! `authorization` header, and the per-journal rights of each token.
//!
//! The token file has one token per line; `#` starts a comment. After the token, optional
//! `rights=` (`read`, `append` or `read,append`; default both) and `journals=` (a comma
//! list of journal names, or `*`; default all):
//!
//! ```text
//! # who            token                      what it may do
//! 4f1c9e0b6a7d2e83  rights=append journals=orders,payments
//! 9a8b7c6d5e4f3a2b  rights=read
//! 0123456789abcdef
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::error::ServerError;

/// Shortest token accepted: shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;

/// What a request may do, attached to it by [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    read: bool,
    append: bool,
    /// `None`: every journal.
    journals: Option<HashSet<String>>,
}

/// An operation on a journal, as far as rights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Replay, Stream, Info, and ListJournals (which shows what Info shows, of the
    /// journals the token covers).
    Read,
    /// Append, AppendBatch.
    Append,
}

impl Grant {
    /// Everything: what requests carry when authentication is off.
    pub fn all() -> Grant {
        Grant {
            read: true,
            append: true,
            journals: None,
        }
    }

    /// Whether this grant allows `right` on `journal`.
    pub fn check(&self, right: Right, journal: &str) -> Result<(), ServerError> {
        self.check_right(right)?;
        if !self.covers(journal) {
            return Err(ServerError::PermissionDenied(format!(
                "this token has no rights on journal {journal:?}"
            )));
        }
        Ok(())
    }

    /// Whether this grant allows `right` on some journals (which: [`covers`](Self::covers)).
    pub fn check_right(&self, right: Right) -> Result<(), ServerError> {
        let allowed = match right {
            Right::Read => self.read,
            Right::Append => self.append,
        };
        if !allowed {
            return Err(ServerError::PermissionDenied(format!(
                "this token may not {} journals",
                match right {
                    Right::Read => "read",
                    Right::Append => "append to",
                }
            )));
        }
        Ok(())
    }

    /// Whether `journal` is among the journals this grant's rights apply to.
    ///
    /// ```
    /// use ministore_server::auth::{Authenticator, Right};
    /// let auth = Authenticator::parse("reader-token-0123456 rights=read journals=orders\n").unwrap();
    /// let grant = auth.verify("reader-token-0123456").unwrap();
    /// assert!(grant.check_right(Right::Read).is_ok() && grant.covers("orders"));
    /// assert!(!grant.covers("payments"));
    /// ```
    pub fn covers(&self, journal: &str) -> bool {
        self.journals
            .as_ref()
            .is_none_or(|journals| journals.contains(journal))
    }
}

/// The rights of a request: from the authenticator, or everything without one.
pub fn grant_of<T>(request: &Request<T>) -> Grant {
    request
        .extensions()
        .get::<Grant>()
        .cloned()
        .unwrap_or_else(Grant::all)
}

/// The tokens of a token file, each with its grant.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<Vec<(Vec<u8>, Grant)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// Reads the token file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or a line is malformed ([`ServerError::Startup`] naming the
    /// file and line; the token itself is never shown).
    pub fn from_file(path: &Path) -> Result<Authenticator, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Startup {
            op: "reading token file",
            path: path.display().to_string(),
            source: Arc::new(e),
        })?;
        Authenticator::parse(&text).map_err(|(line, reason)| ServerError::Startup {
            op: "reading token file",
            path: format!("{}:{line}", path.display()),
            source: Arc::new(std::io::Error::other(reason)),
        })
    }

    /// Parses token-file text; an error is (line number, reason).
    ///
    /// ```
    /// use ministore_server::auth::{Authenticator, Right};
    /// let auth = Authenticator::parse("writer-token-0123456 rights=append journals=orders\n").unwrap();
    /// let grant = auth.verify("writer-token-0123456").unwrap();
    /// assert!(grant.check(Right::Append, "orders").is_ok());
    /// assert!(grant.check(Right::Read, "orders").is_err());
    /// assert!(grant.check(Right::Append, "audit").is_err());
    /// assert!(auth.verify("wrong").is_none());
    /// ```
    pub fn parse(text: &str) -> Result<Authenticator, (usize, String)> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let token = fields.next().expect("non-empty line");
            if token.len() < MIN_TOKEN_LEN {
                return Err((
                    i + 1,
                    format!("tokens must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            let mut grant = Grant::all();
            for field in fields {
                if let Some(rights) = field.strip_prefix("rights=") {
                    grant.read = false;
                    grant.append = false;
                    for right in rights.split(',') {
                        match right {
                            "read" => grant.read = true,
                            "append" => grant.append = true,
                            other => {
                                return Err((
                                    i + 1,
                                    format!(
                                        "unknown right {other:?}: use read, append or read,append"
                                    ),
                                ));
                            }
                        }
                    }
                } else if let Some(journals) = field.strip_prefix("journals=") {
                    if journals != "*" {
                        grant.journals = Some(journals.split(',').map(str::to_owned).collect());
                    }
                } else {
                    return Err((
                        i + 1,
                        "expected rights=... or journals=... after the token".into(),
                    ));
                }
            }
            tokens.push((token.as_bytes().to_vec(), grant));
        }
        if tokens.is_empty() {
            return Err((0, "the file holds no tokens".into()));
        }
        Ok(Authenticator {
            tokens: Arc::new(tokens),
        })
    }

    /// The grant of `token`, if it is one of ours. Compares against every token in
    /// constant time for tokens of equal length, so response times do not reveal how much
    /// of a guess was right.
    pub fn verify(&self, token: &str) -> Option<Grant> {
        let mut found = None;
        for (known, grant) in self.tokens.iter() {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(grant.clone());
            }
        }
        found
    }

    /// Checks the request's `authorization: Bearer <token>` header and attaches the
    /// token's [`Grant`]; a missing or unknown token is UNAUTHENTICATED.
    pub fn intercept(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header =
            request
                .metadata()
                .get("authorization")
                .ok_or(ServerError::Unauthenticated(
                    "missing token: send the header `authorization: Bearer <token>`",
                ))?;
        let token =
            header
                .to_str()
                .ok()
                .and_then(bearer_token)
                .ok_or(ServerError::Unauthenticated(
                    "malformed authorization header: expected `Bearer <token>`",
                ))?;
        let grant = self
            .verify(token.trim())
            .ok_or(ServerError::Unauthenticated("unknown token"))?;
        request.extensions_mut().insert(grant);
        Ok(request)
    }
}

/// The token of an `authorization` header value `Bearer <token>`. The scheme is
/// case-insensitive (RFC 7235 section 2.1), and any run of spaces may follow it.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, line) in [
            ("short\n", 1),
            ("# c\n0123456789abcdef rights=write\n", 2),
            ("0123456789abcdef owner=me\n", 1),
            ("# only comments\n", 0),
        ] {
            assert_eq!(
                Authenticator::parse(text).err().map(|e| e.0),
                Some(line),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bare_token_may_do_everything() {
        let auth = Authenticator::parse("0123456789abcdef # admin\n").unwrap();
        assert_eq!(auth.verify("0123456789abcdef"), Some(Grant::all()));
        assert_eq!(auth.verify("0123456789abcdeF"), None);
        assert_eq!(auth.verify("0123456789abcde"), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "BeArEr  t0k"] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header}");
        }
        for header in ["Basic t0k", "Bearert0k", "t0k", ""] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let auth = Authenticator::parse("0123456789abcdef\n").unwrap();
        assert!(!format!("{auth:?}").contains("0123456789abcdef"));
    }
}
