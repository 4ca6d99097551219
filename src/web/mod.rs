//! The dashboard: one HTML shell at `/` and its files under `/ui/<version>/`,
//! embedded in the binary (plain HTML, CSS and ES modules: no build step, no
//! Node.js to build the broker). The page talks to the API as any client
//! does, with the session cookie `POST /session` sets.
//!
//! These routes are not API operations: like Swagger UI under `/api-docs/`,
//! they are open (the shell holds no data; every fetch it makes needs the
//! role its route needs) and stay out of the spec and of
//! [`crate::api::registered_routes`], which the auth test compares with it.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// Where the dashboard's files are served, followed by their version.
pub const ASSETS_PATH: &str = "/ui";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("ui.js", JS),
    asset!("farm.js", JS),
    asset!("renders.js", JS),
    asset!("render.js", JS),
    asset!("workers.js", JS),
    asset!("variables.js", JS),
    asset!("submit.js", JS),
];

/// A digest of every file: their URLs change whenever one does, so browsers
/// may keep them forever and still never run a stale mix after an upgrade.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut digest = Sha256::new();
    for asset in ASSETS {
        digest.update(asset.name.as_bytes());
        digest.update([0]);
        digest.update(asset.body.as_bytes());
    }
    hex::encode(&digest.finalize()[..6])
});

static SHELL: LazyLock<String> = LazyLock::new(|| {
    include_str!("assets/index.html").replace("{{ASSETS}}", &format!("{ASSETS_PATH}/{}", *VERSION))
});

/// Scripts, styles and images from this origin only, no inline script, no
/// framing: what the page needs and nothing an injected string could use.
/// Images also from `blob:` URLs, which only the page's own script makes: the
/// live preview is fetched (to learn its frame, and whether there is one)
/// and shown from the bytes fetched.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Serves the dashboard's shell and files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/")
            .route(web::get().to(shell))
            .default_service(web::to(only_get)),
    )
    .service(
        web::resource(format!("{ASSETS_PATH}/{{version}}/{{file}}"))
            .route(web::get().to(asset))
            .default_service(web::to(only_get)),
    );
}

fn page_headers(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

async fn shell() -> HttpResponse {
    let mut response = HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        // The shell names the current files' version: always ask again.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(SHELL.as_str());
    page_headers(&mut response);
    response
}

async fn asset(path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (version, file) = path.into_inner();
    let found = ASSETS.iter().find(|a| a.name == file);
    let Some(found) = found.filter(|_| version == *VERSION) else {
        return Err(ApiError::NotFound(format!(
            "the dashboard has no file {ASSETS_PATH}/{version}/{file} (this broker serves version {}); reload the dashboard at /",
            *VERSION
        )));
    };
    let mut response = HttpResponse::Ok()
        .content_type(found.content_type)
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ))
        .body(found.body);
    page_headers(&mut response);
    Ok(response)
}

async fn only_get(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(
        format!(
            "{} is not allowed on {}: the dashboard's pages and files are read with GET",
            req.method(),
            req.path()
        ),
        "GET",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_names_every_script_and_style_by_the_current_version() {
        let prefix = format!("{ASSETS_PATH}/{}/", *VERSION);
        assert!(!SHELL.contains("{{"), "a placeholder was left in the shell");
        for name in ["app.js", "style.css", "icon.svg"] {
            assert!(
                SHELL.contains(&format!("{prefix}{name}")),
                "{name} is not linked"
            );
        }
        // The modules import each other by relative paths, so they share the
        // version; every import names a file that is served.
        let mut imports = 0;
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for target in asset.body.split(" from '").skip(1) {
                imports += 1;
                let target = target.split('\'').next().unwrap_or_default();
                let target = target.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|a| a.name == target),
                    "{} imports {target:?}, which is not served",
                    asset.name
                );
            }
        }
        assert!(imports > 10, "only {imports} imports were found to check");
    }

    #[test]
    fn the_page_runs_no_inline_script() {
        assert!(!SHELL.contains("<script>"), "inline scripts break the CSP");
        assert!(
            !SHELL
                .split_whitespace()
                .any(|w| w.starts_with("on") && w.contains('=')),
            "inline event handlers break the CSP"
        );
    }
}
