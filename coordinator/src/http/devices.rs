//! Devices (counts only, never identities), invites and the audit table.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use cohort_protocol::Role;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Owner, Reader, unix_now};
use crate::auth::InviteIssuer;
use crate::states::TaskState;

/// `GET /api/v1/devices`: open connections, enrolled accounts, and per running task the
/// clients waiting in its pool and what its loop does.
pub async fn devices(State(state): State<ApiState>, _: Reader) -> Result<Json<Value>, ApiError> {
    let s = state.clone();
    let v = state
        .read(move |store| {
            let tasks: serde_json::Map<String, Value> = store
                .tasks()?
                .into_iter()
                .filter(|t| t.state == TaskState::Running)
                .map(|t| {
                    let live = s.scheduler().live(&t.id);
                    (
                        t.id,
                        json!({
                            "checked_in": live.map(|l| l.1),
                            "status": live.map(|l| l.0),
                        }),
                    )
                })
                .collect();
            Ok(json!({
                "connections": s.metrics().connections(),
                "accounts": {
                    "contributors": store.count_accounts(Role::Contributor)?,
                    "owners": store.count_accounts(Role::Owner)?,
                },
                "tasks": tasks,
            }))
        })
        .await?;
    Ok(Json(v))
}

/// `GET /api/v1/invites`: every invite issued (never the codes, which are not stored).
pub async fn invites(State(state): State<ApiState>, _: Reader) -> Result<Json<Value>, ApiError> {
    let now = unix_now();
    let v = state
        .read(move |store| {
            let list = store.with_conn(|c| {
                let mut stmt = c.prepare(
                    "SELECT hex(code_hash), role, issued_by, created_at, expires_at, used_by, \
                     used_at FROM invites ORDER BY created_at DESC",
                )?;
                let rows = stmt.query_map([], |r| {
                    let expires: Option<i64> = r.get(4)?;
                    let used_by: Option<String> = r.get(5)?;
                    let status = if used_by.is_some() {
                        "used"
                    } else if expires.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "open"
                    };
                    let id: String = r.get(0)?;
                    Ok(json!({
                        "id": id.get(..12).unwrap_or(&id).to_lowercase(),
                        "role": r.get::<_, String>(1)?,
                        "issued_by": r.get::<_, String>(2)?,
                        "created_at": r.get::<_, i64>(3)?,
                        "expires_at": expires,
                        "status": status,
                        "used_by": used_by,
                        "used_at": r.get::<_, Option<i64>>(6)?,
                    }))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })?;
            Ok(json!({ "invites": list }))
        })
        .await?;
    Ok(Json(v))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    /// Validity in hours; forever when absent.
    hours: Option<u32>,
}

/// `POST /api/v1/invites` with `{"hours": N}` (optional): a single-use contributor invite.
pub async fn issue_invite(
    State(state): State<ApiState>,
    Owner(caller): Owner,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = async {
        let request: InviteRequest = if body.iter().all(u8::is_ascii_whitespace) {
            InviteRequest { hours: None }
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(
                    "bad_json",
                    format!("the body is not the JSON this route takes ({e}); send {{\"hours\": 24}} or nothing"),
                )
            })?
        };
        let auth = state.inner.auth.clone();
        let ttl = request.hours.map(|h| i64::from(h) * 3600);
        let code = tokio::task::spawn_blocking(move || {
            auth.issue_invite(&InviteIssuer::Admin, Role::Contributor, ttl)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "code": code,
                "role": "contributor",
                "expires_at": ttl.map(|t| unix_now() + t),
            })),
        ))
    }
    .await;
    state
        .audited(&caller, "invite.issue", "contributor", result)
        .await
}

/// `GET /api/v1/audit?limit=N`: the owners' actions, newest first.
pub async fn audit(
    State(state): State<ApiState>,
    _: Reader,
    query: Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = super::query_u64(&query, "limit")?
        .unwrap_or(100)
        .min(10_000) as i64;
    let v = state
        .read(move |store| {
            let list = store.with_conn(|c| {
                let mut stmt = c.prepare(
                    "SELECT seq, at, actor, action, target, outcome FROM api_audit \
                     ORDER BY seq DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit], |r| {
                    Ok(json!({
                        "seq": r.get::<_, i64>(0)?,
                        "at": r.get::<_, i64>(1)?,
                        "actor": r.get::<_, String>(2)?,
                        "action": r.get::<_, String>(3)?,
                        "target": r.get::<_, String>(4)?,
                        "outcome": r.get::<_, String>(5)?,
                    }))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })?;
            Ok(json!({ "entries": list }))
        })
        .await?;
    Ok(Json(v))
}
