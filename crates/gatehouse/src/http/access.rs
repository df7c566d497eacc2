//! MQTT credential routes: issue (or rotate) and revoke the credentials of a device, a type or
//! an observer, and list them. A password is in the answer that created it and nowhere else.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::acon::unexpected;
use super::{ApiError, ApiResult, AppState, body, ok};
use crate::clock::{now_ms, rfc3339};
use crate::core::access::{self, CredentialView, Subject};
use crate::core::{Command, Outcome};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/devices/{type}/{id}/credentials",
            post(issue_device).delete(revoke_device),
        )
        .route(
            "/api/types/{type}/credentials",
            post(issue_type).delete(revoke_type),
        )
        .route(
            "/api/observers/{name}/credentials",
            post(issue_observer).delete(revoke_observer),
        )
        .route("/api/credentials", get(list))
}

/// The body of a credential request. A device's and an observer's credential are always
/// generated; a type's may carry the username and password its devices already have.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    username: Option<String>,
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

async fn issue_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let subject = device_subject(&ty, &id)?;
    issue(&s, subject, body(&bytes)?, false).await
}

async fn revoke_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    revoke(&s, device_subject(&ty, &id)?).await
}

async fn issue_type(State(s): State<AppState>, Path(ty): Path<String>, bytes: Bytes) -> ApiResult {
    let subject = type_subject(&ty)?;
    issue(&s, subject, body(&bytes)?, true).await
}

async fn revoke_type(State(s): State<AppState>, Path(ty): Path<String>) -> ApiResult {
    revoke(&s, type_subject(&ty)?).await
}

async fn issue_observer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let subject = observer_subject(&name)?;
    issue(&s, subject, body(&bytes)?, false).await
}

async fn revoke_observer(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    revoke(&s, observer_subject(&name)?).await
}

async fn list(State(s): State<AppState>) -> ApiResult {
    let v: Vec<Value> = s.hub.credentials().iter().map(view_json).collect();
    ok(v)
}
