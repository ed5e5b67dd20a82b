//! The HTML pages the binary serves, every asset embedded so that they work with no internet
//! access: Swagger UI at `/docs` (from `utoipa-swagger-ui`), our API reference at `/redoc`, and
//! the live dashboard at `/dashboard`.
//!
//! No crate on our toolchain serves ReDoc without a CDN, so `/redoc` is a small page of ours that
//! renders the same OpenAPI document.

use std::sync::{Arc, LazyLock};

use axum::extract::Path;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use utoipa_swagger_ui::Config;

use crate::http::error::ApiError;

/// Where Swagger UI finds the document.
const OPENAPI_PATH: &str = "/openapi.json";

/// Swagger UI's configuration: one document, ours.
static SWAGGER: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| Arc::new(Config::new([OPENAPI_PATH])));

/// `GET /docs` and `GET /docs/`: Swagger UI's page itself, answered 200 as the original did (the
/// crate's router answers `/docs` with a redirect). The page names its assets relative to
/// itself, so a `<base>` makes them resolve under `/docs/` from either path.
pub async fn swagger_page() -> Result<Response, ApiError> {
    let index = swagger_file("index.html")?.ok_or_else(|| ApiError::Internal("Swagger UI has no index.html".into()))?;
    let html = String::from_utf8_lossy(&index.bytes).replacen("<head>", "<head>\n    <base href=\"/docs/\">", 1);
    Ok(Html(html).into_response())
}

/// `GET /docs/{file}`: Swagger UI's scripts, styles and icons; the usual 404 for a name it does
/// not hold.
pub async fn swagger_asset(Path(file): Path<String>, uri: Uri) -> Result<Response, ApiError> {
    if file.is_empty() || file == "index.html" {
        return swagger_page().await;
    }
    match swagger_file(&file)? {
        Some(asset) => Ok(([(header::CONTENT_TYPE, asset.content_type)], asset.bytes.into_owned()).into_response()),
        None => Ok(super::root::not_found(uri).await),
    }
}

/// One file of the embedded Swagger UI (its initializer pointed at our document), if it holds
/// one of that name.
fn swagger_file(name: &str) -> Result<Option<utoipa_swagger_ui::SwaggerFile<'static>>, ApiError> {
    utoipa_swagger_ui::serve(name, SWAGGER.clone())
        .map_err(|e| ApiError::Internal(format!("Swagger UI file {name}: {e}").into()))
}

/// `GET /openapi.json`: the document, serialised once.
pub async fn openapi_document() -> Response {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        use utoipa::OpenApi;
        crate::http::openapi::ApiDoc::openapi().to_json().unwrap_or_default()
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// The live dashboard served at `/dashboard` (our own page; it loads nothing from another host).
pub async fn dashboard_page() -> Html<&'static str> {
    Html(include_str!("../../assets/dashboard.html"))
}

/// The reference page served at `/redoc`.
pub async fn reference_page() -> Html<&'static str> {
    Html(include_str!("../../assets/reference.html"))
}
