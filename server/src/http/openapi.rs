//! The OpenAPI document, generated from the handlers' annotations and served at
//! `/api/v1/openapi.json` (public: it describes, it does not grant).

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    agents, clone, images, installs, jobs, meta, reports, session, settings, sites, targets,
    tokens, users, AppState, SESSION_COOKIE,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Holdfast server API", description = "Users, tokens, agents, storage targets, jobs and reports. See docs/api.md."),
    paths(
        session::login, session::logout, session::me, session::change_password,
        users::list, users::create, users::update, users::remove,
        tokens::list, tokens::create, tokens::revoke,
        meta::healthz, meta::metrics, meta::info, meta::audit,
        agents::create_token, agents::list_tokens, agents::revoke_token,
        agents::list, agents::show, agents::revoke, agents::refresh_inventory, agents::set_bandwidth, clone::clone,
        installs::host_keys, installs::install, installs::list, installs::show,
        targets::list, targets::create, targets::show, targets::update, targets::remove, targets::test, targets::confirm_host_key,
        jobs::list, jobs::create, jobs::show, jobs::update, jobs::remove, jobs::run_now, jobs::cancel, jobs::check, jobs::export, jobs::import, jobs::preview,
        reports::list, reports::show, reports::download, reports::images,
        images::show, images::files, images::download, images::restore_files, images::restore_volume,
        sites::list, sites::create, sites::show, sites::update, sites::remove, sites::move_agent,
        settings::smtp, settings::set_smtp, settings::test_mail, settings::security, settings::outbox, settings::alerts, settings::set_alerts,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail, crate::store::users::User, crate::auth::Role)),
    modifiers(&Security, &OperationIds),
)]
struct ApiDoc;

/// The two ways to authenticate: the console's session cookie and API tokens.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Operation ids are the handlers' names, which repeat across resources (`list`, `show`…):
/// prefixed with the operation's tag (`agents_list`), they are unique.
struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
                if let (Some(tag), Some(id)) = (tag, op.operation_id.as_mut()) {
                    if !id.starts_with(&format!("{tag}_")) {
                        *id = format!("{tag}_{id}");
                    }
                }
            }
        }
    }
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(|| async { Json(document()) }))
}
