//! The finance team's web console, served by `coalition serve` on its own address
//! (`console_address`): settlement, reconciliation, merchants, members and exports in the
//! browser, in Chinese or English.
//!
//! Pages are rendered on the server from askama templates (checked when the crate compiles)
//! and use no JavaScript; the stylesheet is built into the binary. Every page and action
//! needs a session opened with the admin token (`session.rs`), and every form carries the
//! session's CSRF token. The console calls the same engine and storage functions as the gRPC
//! admin service, the CLI and the exports, so it shows the same figures.

mod directory;
mod files;
mod format;
mod pages;
pub mod session;
pub mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coalition_domain::settlement::Cutoff;
use coalition_engine::Engine;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use session::{
    LANGUAGE_COOKIE, SESSION_COOKIE, SIGN_IN_COOKIE, SessionView, Sessions, clear_cookie, cookie,
    random_token, secrets_equal, set_cookie,
};
use text::{Language, Texts};

/// What the console needs from `coalition serve`.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub address: String,
    pub admin_token: Option<String>,
    pub session_timeout: Duration,
    pub sessions_max: usize,
    pub currency: coalition_domain::CurrencyCode,
    pub exports_dir: std::path::PathBuf,
    pub operator_keys_dir: std::path::PathBuf,
    pub upload_bytes_max: usize,
    pub database_url: String,
}

pub struct ConsoleState {
    engine: Engine,
    sessions: Sessions,
    admin_token: Option<String>,
    cutoff: Cutoff,
    currency: coalition_domain::CurrencyCode,
    files: files::Files,
}

/// A console listening on its address.
pub struct RunningConsole {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningConsole {
    /// Binds `config.address` (port 0 picks a free port) and serves the console.
    pub async fn start(engine: Engine, config: ConsoleConfig) -> anyhow::Result<RunningConsole> {
        let listener = TcpListener::bind(&config.address)
            .await
            .with_context(|| format!("cannot listen on console_address {}", config.address))?;
        let address = listener.local_addr()?;
        let state = Arc::new(ConsoleState {
            cutoff: engine.settlement_cutoff(),
            engine,
            sessions: Sessions::new(config.session_timeout, config.sessions_max),
            files: files::Files::new(&config),
            admin_token: config.admin_token,
            currency: config.currency,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%address, "console at http://{address}/");
        Ok(RunningConsole {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// Stops accepting and lets requests in flight finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(5), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "console stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "console task failed"),
            Err(_) => self.task.abort(),
        }
    }
}

fn router(state: Arc<ConsoleState>) -> Router {
    let upload_bytes_max = state.files.upload_bytes_max;
    Router::new()
        .route("/assets/console.css", get(stylesheet))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/language", get(switch_language))
        .merge(pages::routes())
        .merge(directory::routes())
        .merge(files::routes(upload_bytes_max))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every answer: no framing, no sniffing, nothing from elsewhere, nothing cached
/// (pages show money and member balances).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../assets/console.css"),
    )
        .into_response()
}

/// The language of a request.
pub struct Lang(pub Language);

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Lang(Language::of_request(
            cookie(&parts.headers, LANGUAGE_COOKIE),
            parts
                .headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|value| value.to_str().ok()),
        )))
    }
}

/// A request from a signed-in session; any other request is sent to the sign-in page and
/// does nothing.
pub struct Signed {
    pub session: SessionView,
    pub language: Language,
    /// The path and query of the request, for the language switch to come back to.
    pub here: String,
}

impl Signed {
    /// The common part of every page.
    pub fn page(&self, active: &'static str) -> Page {
        Page::new(
            self.language,
            Some(self.session.csrf_token.clone()),
            active,
            &self.here,
        )
    }

    /// A page that says what went wrong, with a link back.
    pub fn refuse(
        &self,
        active: &'static str,
        status: StatusCode,
        error: impl Into<String>,
        back: &str,
    ) -> Response {
        message(
            self.page(active),
            status,
            self.language.texts().error,
            error,
            back,
        )
    }

    /// Whether a form's CSRF token is this session's.
    pub fn form_is_genuine(&self, csrf_token: &str) -> bool {
        secrets_equal(csrf_token, &self.session.csrf_token)
    }
}

impl FromRequestParts<Arc<ConsoleState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let Lang(language) = Lang::from_request_parts(parts, state)
            .await
            .unwrap_or(Lang(Language::Chinese));
        let session = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| state.sessions.touch(id, Instant::now()));
        match session {
            Some(session) => Ok(Signed {
                session,
                language,
                here: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned()),
            }),
            None => {
                let had_cookie = cookie(&parts.headers, SESSION_COOKIE).is_some();
                let target = if had_cookie {
                    "/sign-in?ended=1"
                } else {
                    "/sign-in"
                };
                Err(Redirect::to(target).into_response())
            }
        }
    }
}

/// What every page's frame needs: the words, the language switch, the navigation and the
/// session's CSRF token for its forms.
pub struct Page {
    pub t: &'static Texts,
    pub language: &'static str,
    pub switch_to: &'static str,
    pub switch_name: &'static str,
    pub switch_link: String,
    pub csrf: String,
    pub active: &'static str,
    pub signed_in: bool,
}

impl Page {
    pub fn new(language: Language, csrf: Option<String>, active: &'static str, here: &str) -> Page {
        let other = language.other();
        Page {
            t: language.texts(),
            language: language.tag(),
            switch_to: other.tag(),
            switch_name: other.texts().language_name,
            switch_link: format!("/language?to={}&next={}", other.tag(), percent_encode(here)),
            signed_in: csrf.is_some(),
            csrf: csrf.unwrap_or_default(),
            active,
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Renders a template into a page, or a plain error if a template fails (a bug).
pub fn render(template: &impl askama::Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "a console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be drawn",
            )
                .into_response()
        }
    }
}

#[derive(askama::Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    pub page: Page,
    pub title: String,
    pub message: String,
    pub back: String,
}

/// A page that says one thing, with a link back, and the given status.
pub fn message(
    page: Page,
    status: StatusCode,
    title: impl Into<String>,
    message: impl Into<String>,
    back: &str,
) -> Response {
    let mut response = render(&MessagePage {
        page,
        title: title.into(),
        message: message.into(),
        back: back.to_owned(),
    });
    *response.status_mut() = status;
    response
}

/// The answer to a POST whose CSRF token is missing or wrong: refused, nothing done.
pub fn forged_form(signed: &Signed) -> Response {
    let t = signed.language.texts();
    message(
        signed.page(""),
        StatusCode::FORBIDDEN,
        t.error,
        t.form_expired,
        "/",
    )
}

async fn not_found(Lang(language): Lang) -> Response {
    let t = language.texts();
    message(
        Page::new(language, None, "", "/"),
        StatusCode::NOT_FOUND,
        t.not_found,
        t.not_found,
        "/",
    )
}

#[derive(askama::Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    page: Page,
    sign_in_token: String,
    notice: Option<&'static str>,
}

#[derive(Deserialize)]
struct SignInQuery {
    ended: Option<String>,
}

fn sign_in_form(language: Language, notice: Option<&'static str>, status: StatusCode) -> Response {
    // A fresh double-submitted token with every form drawn.
    let sign_in_token = random_token();
    let mut response = render(&SignInPage {
        page: Page::new(language, None, "", "/sign-in"),
        sign_in_token: sign_in_token.clone(),
        notice,
    });
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&set_cookie(SIGN_IN_COOKIE, &sign_in_token, 3600)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn sign_in_page(
    State(state): State<Arc<ConsoleState>>,
    Lang(language): Lang,
    Query(query): Query<SignInQuery>,
) -> Response {
    let t = language.texts();
    let notice = if state.admin_token.is_none() {
        Some(t.sign_in_not_configured)
    } else if query.ended.is_some() {
        Some(t.session_ended)
    } else {
        None
    };
    sign_in_form(language, notice, StatusCode::OK)
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn sign_in(
    State(state): State<Arc<ConsoleState>>,
    Lang(language): Lang,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    let t = language.texts();
    let genuine = cookie(&headers, SIGN_IN_COOKIE)
        .is_some_and(|expected| !form.csrf.is_empty() && secrets_equal(&form.csrf, expected));
    if !genuine {
        return sign_in_form(language, Some(t.form_expired), StatusCode::FORBIDDEN);
    }
    let Some(admin_token) = &state.admin_token else {
        return sign_in_form(
            language,
            Some(t.sign_in_not_configured),
            StatusCode::FORBIDDEN,
        );
    };
    if !secrets_equal(form.token.trim(), admin_token) {
        tracing::warn!("console sign-in refused: wrong admin token");
        return sign_in_form(language, Some(t.sign_in_refused), StatusCode::UNAUTHORIZED);
    }
    let Ok(session) = state.sessions.open(Instant::now()) else {
        return sign_in_form(
            language,
            Some(t.sign_in_full),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    tracing::info!("console session opened");
    let mut response = Redirect::to("/").into_response();
    let cookies = [
        set_cookie(
            SESSION_COOKIE,
            &session.id,
            state.sessions.timeout().as_secs().max(1),
        ),
        clear_cookie(SIGN_IN_COOKIE),
    ];
    for value in cookies {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if !signed.form_is_genuine(&form.csrf) {
        return forged_form(&signed);
    }
    state.sessions.close(&signed.session.id);
    let mut response = Redirect::to("/sign-in").into_response();
    if let Ok(value) = HeaderValue::from_str(&clear_cookie(SESSION_COOKIE)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Where the language switch may send the browser back to: a path on this console, never
/// another site (`//host`, `/\\host`, or one that a browser's removal of tabs and line
/// breaks would turn into `//host`), and never a value that is no valid header.
fn place_to_return_to(next: Option<String>) -> String {
    next.filter(|next| {
        next.starts_with('/')
            && !next.starts_with("//")
            && !next.contains('\\')
            && next.chars().all(|c| c.is_ascii_graphic())
    })
    .unwrap_or_else(|| "/".to_owned())
}

#[derive(Deserialize)]
struct LanguageQuery {
    to: String,
    next: Option<String>,
}

/// The language switch: remembers the choice in a cookie and goes back to the page. Only a
/// path on this console is a place to go back to.
async fn switch_language(Query(query): Query<LanguageQuery>) -> Response {
    let language = Language::from_tag(&query.to).unwrap_or(Language::Chinese);
    let mut response = Redirect::to(&place_to_return_to(query.next)).into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie(
        LANGUAGE_COOKIE,
        language.tag(),
        365 * 24 * 3600,
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_switch_returns_only_to_a_path_of_the_console() {
        let check = |next: &str, expected: &str| {
            assert_eq!(
                place_to_return_to(Some(next.to_owned())),
                expected,
                "{next:?}"
            );
        };
        check(
            "/settlement?period=2026-12-04",
            "/settlement?period=2026-12-04",
        );
        check("/", "/");
        check("//evil.example", "/");
        check("/\\evil.example", "/");
        check("/\t/evil.example", "/");
        check("/\n/evil.example", "/");
        check("https://evil.example/", "/");
        check("/caf\u{e9}", "/");
        assert_eq!(place_to_return_to(None), "/");
        // Whatever it returns is a valid Location header.
        for next in ["/a b", "/\r\nSet-Cookie: x=1"] {
            let place = place_to_return_to(Some(next.to_owned()));
            assert!(HeaderValue::from_str(&place).is_ok(), "{next:?}");
        }
    }
}
