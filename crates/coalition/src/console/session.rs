//! Console sessions: who signed in, their CSRF token, and when they expire.
//!
//! A session is a random 256-bit id in an HttpOnly, SameSite=Strict cookie; the server keeps
//! the open sessions in memory (a restart signs everyone out, which is what a finance team
//! expects of a server that was restarted). Each session has its own CSRF token, which every
//! form carries and every POST must return. The sign-in form, before any session exists,
//! uses a double-submitted token: a random value both in a cookie and in the form.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "coalition_session";
/// The cookie that carries the sign-in form's token.
pub const SIGN_IN_COOKIE: &str = "coalition_sign_in";
/// The cookie that carries the chosen language.
pub const LANGUAGE_COOKIE: &str = "coalition_language";

/// A fresh random token, 32 bytes as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    hex::encode(bytes)
}

/// Compares two secrets without an early exit that would tell an attacker how much of a
/// guess was right: both sides are hashed first, so lengths leak nothing either.
pub fn secrets_equal(left: &str, right: &str) -> bool {
    let left = Sha256::digest(left.as_bytes());
    let right = Sha256::digest(right.as_bytes());
    left.iter()
        .zip(right.iter())
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value for a console cookie: never readable by scripts, never sent by
/// another site's page, for the whole console.
pub fn set_cookie(name: &str, value: &str, max_age_seconds: u64) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}")
}

/// A `Set-Cookie` value that removes a cookie.
pub fn clear_cookie(name: &str) -> String {
    set_cookie(name, "", 0)
}

struct Session {
    csrf_token: String,
    last_seen: Instant,
}

/// What a request learns of its session.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: String,
    pub csrf_token: String,
}

/// Why a sign-in did not open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsFull {
    Full,
}

/// The open sessions, bounded in number and each ended after `timeout` without a request.
pub struct Sessions {
    timeout: Duration,
    sessions_max: usize,
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(timeout: Duration, sessions_max: usize) -> Sessions {
        assert!(sessions_max > 0, "a console needs room for one session");
        assert!(
            !timeout.is_zero(),
            "a session timeout of zero signs nobody in"
        );
        Sessions {
            timeout,
            sessions_max,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens a session. Expired sessions are dropped first; when the console is still full,
    /// the sign-in is refused rather than someone else signed out.
    pub fn open(&self, now: Instant) -> Result<SessionView, SessionsFull> {
        let mut open = self.open.lock().expect("sessions lock");
        let timeout = self.timeout;
        open.retain(|_, session| now.duration_since(session.last_seen) < timeout);
        if open.len() >= self.sessions_max {
            return Err(SessionsFull::Full);
        }
        let view = SessionView {
            id: random_token(),
            csrf_token: random_token(),
        };
        open.insert(
            view.id.clone(),
            Session {
                csrf_token: view.csrf_token.clone(),
                last_seen: now,
            },
        );
        assert!(open.len() <= self.sessions_max);
        Ok(view)
    }

    /// The session with this id if it is open and not expired; touching it extends it.
    pub fn touch(&self, id: &str, now: Instant) -> Option<SessionView> {
        let mut open = self.open.lock().expect("sessions lock");
        let session = open.get_mut(id)?;
        if now.duration_since(session.last_seen) >= self.timeout {
            open.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(SessionView {
            id: id.to_owned(),
            csrf_token: session.csrf_token.clone(),
        })
    }

    /// Ends a session (sign-out).
    pub fn close(&self, id: &str) {
        self.open.lock().expect("sessions lock").remove(id);
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_after_the_timeout_without_requests() {
        let sessions = Sessions::new(Duration::from_secs(60), 4);
        let start = Instant::now();
        let view = sessions.open(start).unwrap();
        assert!(
            sessions
                .touch(&view.id, start + Duration::from_secs(59))
                .is_some()
        );
        // Touched at 59 s: alive until 119 s.
        assert!(
            sessions
                .touch(&view.id, start + Duration::from_secs(118))
                .is_some()
        );
        assert!(
            sessions
                .touch(&view.id, start + Duration::from_secs(178))
                .is_none()
        );
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_full_console_refuses_a_sign_in_until_a_session_expires() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let start = Instant::now();
        sessions.open(start).unwrap();
        sessions.open(start).unwrap();
        assert_eq!(
            sessions.open(start).unwrap_err(),
            SessionsFull::Full,
            "a third session while two are open"
        );
        assert!(sessions.open(start + Duration::from_secs(61)).is_ok());
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn sign_out_ends_the_session_and_ids_are_not_guessable_from_each_other() {
        let sessions = Sessions::new(Duration::from_secs(60), 4);
        let now = Instant::now();
        let first = sessions.open(now).unwrap();
        let second = sessions.open(now).unwrap();
        assert_ne!(first.id, second.id);
        assert_ne!(first.csrf_token, second.csrf_token);
        assert_eq!(first.id.len(), 64);
        sessions.close(&first.id);
        assert!(sessions.touch(&first.id, now).is_none());
        assert!(sessions.touch(&second.id, now).is_some());
    }

    #[test]
    fn cookies_are_found_among_others_and_secrets_compare_exactly() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; coalition_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert!(secrets_equal("token-a", "token-a"));
        assert!(!secrets_equal("token-a", "token-b"));
        assert!(!secrets_equal("token-a", "token-a "));
        let set = set_cookie(SESSION_COOKIE, "abc", 60);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }
}
