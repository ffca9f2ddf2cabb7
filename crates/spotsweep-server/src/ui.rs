//! MLflow's own web UI, served from the user's installed `mlflow` package (never vendored
//! here), and signing in from a browser.
//!
//! The UI is a static bundle: `index.html` at `/`, everything else under `/static-files/`, and
//! routing in the URL fragment, so nothing but `/` needs to answer `index.html`. It calls the
//! `ajax-api` twins of the MLflow API, which this daemon already serves.
//!
//! A browser cannot send a bearer token, so `/signin` takes one and sets a session cookie:
//! HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Secure when
//! the daemon is reached over HTTPS, signed with the daemon's secret and naming the API token it
//! stands for (revoking that token ends the session). Requests that change state with a cookie
//! must also come from this origin (see `auth::same_origin`).

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::{Form, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Access, SESSION_COOKIE, bearer, session_cookie, session_token};

/// How long a browser session lasts (also bounded by its token's expiry).
const SESSION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where the built UI is, as `spotsweep serve` found it.
#[derive(Debug, Clone)]
pub enum MlflowUi {
    /// The `js/build` folder of the installed `mlflow` package.
    Found(PathBuf),
    /// Not installed (or `--mlflow-ui off`): `/` says how to get it.
    Missing(String),
}

/// Finds the UI: `off` turns it off, a path is used as given (it must hold `index.html`), and by
/// default the `mlflow` package that `python3` imports is asked where it is (without importing
/// it: `find_spec` only locates the package, in milliseconds).
pub async fn locate(setting: Option<&str>) -> MlflowUi {
    match setting {
        Some("off") => MlflowUi::Missing("the web UI is turned off (--mlflow-ui off)".into()),
        Some(path) => {
            let path = PathBuf::from(path);
            if path.join("index.html").is_file() {
                MlflowUi::Found(path)
            } else {
                MlflowUi::Missing(format!("--mlflow-ui {}: no index.html there", path.display()))
            }
        }
        None => match installed_build().await {
            Ok(path) => MlflowUi::Found(path),
            Err(why) => MlflowUi::Missing(why),
        },
    }
}

async fn installed_build() -> Result<PathBuf, String> {
    let script = "import importlib.util as u; s = u.find_spec('mlflow'); \
                  print(s.submodule_search_locations[0] if s else '')";
    let run = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => out,
        Ok(Ok(out)) => {
            return Err(format!(
                "python3 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot run python3: {e}")),
        Err(_) => return Err("python3 did not answer within 10 s".into()),
    };
    let package = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if package.is_empty() {
        return Err("the mlflow package is not installed for python3".into());
    }
    let build = Path::new(&package).join("server").join("js").join("build");
    if build.join("index.html").is_file() {
        Ok(build)
    } else {
        Err(format!("{} has no built UI (index.html)", build.display()))
    }
}

/// The UI's routes: `/`, `/static-files/...`, sign-in and sign-out, and who is signed in.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/static-files/{*path}", get(static_file))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", get(signout).post(signout))
        .route("/ajax-api/2.0/mlflow/users/current", get(current_user))
}

/// Whether a path is served without any credential: the sign-in page, the UI's static files
/// (the same files as in the public `mlflow` package), the dashboard's files (the same in every
/// copy of spotsweep; its data is behind the API's token check), and `/` and `/dashboard/`,
/// whose handlers send a browser that is not signed in to the sign-in page.
pub fn is_public(path: &str) -> bool {
    path == "/"
        || path == "/signin"
        || path == "/favicon.ico"
        || path.starts_with("/static-files/")
        || path == "/dashboard"
        || path.starts_with("/dashboard/")
}

pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>{title} - spotsweep</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         input[type=password]{{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}}\
         button{{margin-top:.8rem;padding:.5rem 1.2rem;font-size:1rem}}code{{background:#f2f2f2;padding:.1rem .3rem}}\
         .error{{color:#b00020}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    );
    let mut response = (status, Html(html)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_installed(why: &str) -> Response {
    page(
        StatusCode::OK,
        "MLflow's web UI is not installed",
        &format!(
            "<p>spotsweep serves MLflow's own web UI from the <code>mlflow</code> Python package, and could not \
             find it: {}.</p><p>Install it where the daemon runs, then restart the daemon:</p>\
             <pre><code>pip install mlflow</code></pre><p>or point the daemon at a built UI with \
             <code>spotsweep serve --mlflow-ui PATH</code>. The MLflow API works without it, and so does \
             spotsweep's own <a href=\"/dashboard/\">sweep dashboard</a>.</p>",
            html_escape(why)
        ),
    )
}

pub(crate) fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether the request carries a live API token (bearer) or a valid session cookie.
pub(crate) fn signed_in(s: &AppState, headers: &HeaderMap) -> bool {
    if !s.auth.enabled {
        return true;
    }
    if let Some(token) = bearer(headers) {
        return matches!(s.auth.access(token), Some(Access::Api(_)));
    }
    session_token(&s.auth, &s.daemon_secret, headers).is_some()
}

async fn index(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let root = match s.mlflow_ui.as_ref() {
        MlflowUi::Found(root) => root,
        MlflowUi::Missing(why) => return not_installed(why),
    };
    if !signed_in(&s, &headers) {
        return Redirect::to("/signin").into_response();
    }
    match tokio::fs::read(root.join("index.html")).await {
        Ok(bytes) => {
            let mut response = (StatusCode::OK, bytes).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The bundle's file names carry hashes; index.html names the current ones.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => not_installed(&format!("cannot read {}: {e}", root.join("index.html").display())),
    }
}

/// A file of the bundle, with a long cache (its name changes with its content, as mlflow's own
/// server serves them: 28 days).
async fn static_file(State(s): State<AppState>, UrlPath(path): UrlPath<String>) -> Response {
    let MlflowUi::Found(root) = s.mlflow_ui.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Only plain names: no `..`, no absolute paths, nothing outside the bundle.
    let safe = !path.is_empty()
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(['\\', '\0']));
    if !safe {
        return StatusCode::NOT_FOUND.into_response();
    }
    let file = root.join(&path);
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&file).first_or_octet_stream();
            let mut response = (StatusCode::OK, bytes).into_response();
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
                h.insert(header::CONTENT_TYPE, v);
            }
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=2419200"),
            );
            response
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Where to go after signing in: a path of this daemon only (never another site).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains(['\\', '\r', '\n']) => p,
        _ => "/",
    }
}

fn signin_form(message: Option<&str>, next: &str) -> String {
    let error = message.map_or(String::new(), |m| {
        format!("<p class=\"error\">{}</p>", html_escape(m))
    });
    let next = html_escape(next);
    format!(
        "{error}<form method=\"post\" action=\"/signin\"><label for=\"token\">API token</label>\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" autofocus required>\
         <button type=\"submit\">Sign in</button></form><p>The admin token is in \
         <code>&lt;data-dir&gt;/admin.token</code> on the daemon's machine; more tokens with \
         <code>POST /api/v1/tokens</code>.</p>"
    )
}

/// `/signin?next=/dashboard/`: where to go once signed in.
#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

async fn signin_page(axum::extract::Query(q): axum::extract::Query<Next>) -> Response {
    let next = local_path(q.next.as_deref());
    page(StatusCode::OK, "Sign in to spotsweep", &signin_form(None, next))
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn signin(State(s): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let next = local_path(form.next.as_deref());
    let Some(Access::Api(token)) = s.auth.access(form.token.trim()) else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in to spotsweep",
            &signin_form(
                Some("That token is not valid (unknown, revoked or expired)."),
                next,
            ),
        );
    };
    let now = spotsweep_store::now_ms();
    let expires = token
        .expires_at
        .map_or(now + SESSION_MS, |at| at.min(now + SESSION_MS));
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session_cookie(&s.daemon_secret, &token.id, expires),
        (expires - now).max(0) / 1000,
        if s.secure_cookies { "; Secure" } else { "" }
    );
    tracing::info!(token = %token.name, "signed in from a browser");
    let mut response = Redirect::to(next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn signout(State(s): State<AppState>) -> Response {
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if s.secure_cookies { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Who is signed in, as MLflow's auth app answers it (the UI shows the name).
async fn current_user(State(s): State<AppState>, request: Request) -> Response {
    let headers = request.headers();
    let token = bearer(headers)
        .and_then(|t| match s.auth.access(t) {
            Some(Access::Api(token)) => Some(token),
            _ => None,
        })
        .or_else(|| session_token(&s.auth, &s.daemon_secret, headers));
    let Some(token) = token else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no signed-in user"}),
            ),
        )
            .into_response();
    };
    axum::Json(serde_json::json!({
        "user": {
            "id": token.id,
            "username": token.name,
            "is_admin": token.role == spotsweep_store::TokenRole::Admin,
        },
        "is_basic_auth": false,
    }))
    .into_response()
}
