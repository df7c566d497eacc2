//! MQTT credential routes: issue (or rotate) and revoke the credentials of a device, a type or
//! an observer, and list them. A password is in the answer that created it and nowhere else.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::acon::unexpected;
use super::{ApiError, ApiResult, AppState, ErrorBody, body, ok};
use crate::clock::{now_ms, rfc3339};
use crate::core::access::{self, CredentialView, Subject};
use crate::core::{Command, Outcome};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_device, revoke_device))
        .routes(routes!(issue_type, revoke_type))
        .routes(routes!(issue_observer, revoke_observer))
        .routes(routes!(list))
}

/// The body of a credential request. A device's and an observer's credential are always
/// generated; a type's may carry the username and password its devices already have.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    /// The username (a type's only; default: the subject's own).
    username: Option<String>,
    /// The password (a type's only; default: a generated one, shown once).
    password: Option<String>,
}

fn view_json(v: &CredentialView) -> Value {
    json!({
        "username": v.username,
        "subject": v.subject,
        "created_at": rfc3339(v.created_at),
        "generated": v.generated,
    })
}

fn device_subject(ty: &str, id: &str) -> Result<Subject, ApiError> {
    let ty =
        skaben::validate_device_type(ty).map_err(|e| ApiError::field("type", e.to_string()))?;
    let id = skaben::validate_device_id(id).map_err(|e| ApiError::field("id", e.to_string()))?;
    Ok(Subject::Device { r#type: ty, id })
}

fn type_subject(ty: &str) -> Result<Subject, ApiError> {
    let ty =
        skaben::validate_device_type(ty).map_err(|e| ApiError::field("type", e.to_string()))?;
    Ok(Subject::Type { r#type: ty })
}

fn observer_subject(name: &str) -> Result<Subject, ApiError> {
    access::check_observer_name(name).map_err(|r| ApiError::field("name", format!("name: {r}")))?;
    Ok(Subject::Observer {
        name: name.to_string(),
    })
}

async fn issue(s: &AppState, subject: Subject, req: IssueBody, may_choose: bool) -> ApiResult {
    if !may_choose && (req.username.is_some() || req.password.is_some()) {
        return Err(ApiError::field(
            "body",
            "this credential is always generated: send no username or password",
        ));
    }
    let username = match req.username {
        Some(u) => {
            access::check_username(&u)
                .map_err(|r| ApiError::field("username", format!("username: {r}")))?;
            u
        }
        None => subject.default_username(),
    };
    let (password, hash) = match req.password {
        None => {
            let (pw, hash) = access::generate_password();
            (Some(pw), hash)
        }
        Some(pw) => {
            access::check_chosen_password(&pw)
                .map_err(|r| ApiError::field("password", format!("password: {r}")))?;
            // Argon2id: tens of milliseconds, off the runtime's threads.
            let hash = tokio::task::spawn_blocking(move || access::hash_chosen(&pw))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            (None, hash)
        }
    };
    let cmd = Command::IssueCredential {
        subject,
        username,
        hash,
    };
    match s.hub.execute(cmd, &super::auth::actor(), now_ms()).await? {
        Outcome::Credential { view, rotated } => {
            let mut v = view_json(&view);
            v["rotated"] = json!(rotated);
            if let Some(pw) = password {
                // Shown once: only its hash is kept.
                v["password"] = json!(pw);
            }
            let status = if rotated {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, axum::Json(v)).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

async fn revoke(s: &AppState, subject: Subject) -> ApiResult {
    match s
        .hub
        .execute(
            Command::RevokeCredential { subject },
            &super::auth::actor(),
            now_ms(),
        )
        .await?
    {
        Outcome::Revoked => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&other)),
    }
}

/// Issue or rotate a device's MQTT credential.
///
/// Always generated: the password is in this answer and nowhere else.
#[utoipa::path(
    post,
    path = "/api/devices/{type}/{id}/credentials",
    tag = "credentials",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
    ),
    request_body(content = IssueBody, description = "Empty: a device's credential is always generated", content_type = "application/json"),
    responses(
        (status = 200, description = "Rotated: the credential (`password` if generated, shown once)", body = Object),
        (status = 201, description = "Issued: the credential (`password` if generated, shown once)", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
        (status = 409, description = "The username belongs to another subject", body = ErrorBody),
    )
)]
async fn issue_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let subject = device_subject(&ty, &id)?;
    issue(&s, subject, body(&bytes)?, false).await
}

/// Revoke a device's MQTT credential.
#[utoipa::path(
    delete,
    path = "/api/devices/{type}/{id}/credentials",
    tag = "credentials",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
    )
)]
async fn revoke_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    revoke(&s, device_subject(&ty, &id)?).await
}

/// Issue or rotate a device type's MQTT credential.
///
/// Shared by the type's devices; may carry the username and password they already have.
#[utoipa::path(
    post,
    path = "/api/types/{type}/credentials",
    tag = "credentials",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
    ),
    request_body(content = IssueBody, description = "The username and password its devices already have, or nothing (generated)", content_type = "application/json"),
    responses(
        (status = 200, description = "Rotated: the credential (`password` if generated, shown once)", body = Object),
        (status = 201, description = "Issued: the credential (`password` if generated, shown once)", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
        (status = 409, description = "The username belongs to another subject", body = ErrorBody),
    )
)]
async fn issue_type(State(s): State<AppState>, Path(ty): Path<String>, bytes: Bytes) -> ApiResult {
    let subject = type_subject(&ty)?;
    issue(&s, subject, body(&bytes)?, true).await
}

/// Revoke a device type's MQTT credential.
#[utoipa::path(
    delete,
    path = "/api/types/{type}/credentials",
    tag = "credentials",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
    )
)]
async fn revoke_type(State(s): State<AppState>, Path(ty): Path<String>) -> ApiResult {
    revoke(&s, type_subject(&ty)?).await
}

/// Issue or rotate an observer's MQTT credential.
///
/// An observer reads the devices' topics. Always generated: the password is in this answer only.
#[utoipa::path(
    post,
    path = "/api/observers/{name}/credentials",
    tag = "credentials",
    params(
        ("name" = String, Path, description = "The observer's name, e.g. `dashboard`"),
    ),
    request_body(content = IssueBody, description = "Empty: an observer's credential is always generated", content_type = "application/json"),
    responses(
        (status = 200, description = "Rotated: the credential (`password` if generated, shown once)", body = Object),
        (status = 201, description = "Issued: the credential (`password` if generated, shown once)", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
        (status = 409, description = "The username belongs to another subject", body = ErrorBody),
    )
)]
async fn issue_observer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let subject = observer_subject(&name)?;
    issue(&s, subject, body(&bytes)?, false).await
}

/// Revoke an observer's MQTT credential.
#[utoipa::path(
    delete,
    path = "/api/observers/{name}/credentials",
    tag = "credentials",
    params(
        ("name" = String, Path, description = "The observer's name, e.g. `dashboard`"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No credential, or no such device type", body = ErrorBody),
    )
)]
async fn revoke_observer(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    revoke(&s, observer_subject(&name)?).await
}

/// Every MQTT credential.
#[utoipa::path(
    get,
    path = "/api/credentials",
    tag = "credentials",
    responses(
        (status = 200, description = "The credentials: username, subject, when created, whether generated (no passwords)", body = Vec<Object>),
    )
)]
async fn list(State(s): State<AppState>) -> ApiResult {
    let v: Vec<Value> = s.hub.credentials().iter().map(view_json).collect();
    ok(v)
}
