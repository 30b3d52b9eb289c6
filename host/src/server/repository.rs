//! The model repository extension of the Open Inference Protocol: `index`,
//! `load` and `unload`. A load admits the model's directory again, under
//! the same trust policy and rollback marks as at start, and swaps the new
//! version in only once it runs in the sandbox: a refused load leaves the
//! version being served untouched. Loading and unloading are management:
//! they need a token marked `repository = true` for that model.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Failure, Server, drift_monitor};
use crate::guard::{Admission, Readiness};

/// `POST /v2/repository/index` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IndexRequest {
    /// Only the models ready for inference.
    ready: bool,
}

/// The models this caller may use: served ones `READY` with their version,
/// unloaded ones `UNAVAILABLE`.
pub(super) async fn index(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Vec<Value>>, Failure> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("not a repository index request: {e}"),
            )
        })?
    };
    // An unknown caller learns nothing, not even which models exist.
    server.known_caller(&headers)?;
    let served = server.served();
    let mut names: Vec<&String> = served.keys().chain(server.repository.keys()).collect();
    names.sort();
    names.dedup();
    let mut entries = Vec::new();
    for name in names {
        if server.caller(&headers, name).is_err() {
            continue;
        }
        match served.get(name.as_str()) {
            Some(versions) => entries.extend(versions.iter().map(|m| {
                json!({"name": name, "version": m.manifest().version.to_string(), "state": "READY"})
            })),
            None if !request.ready => {
                entries.push(json!({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}));
            }
            None => {}
        }
    }
    Ok(Json(entries))
}

/// Admits the model's directory again and serves what it holds now.
pub(super) async fn load(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, Failure> {
    server.manager(&headers, &name)?;
    let directory = server.repository.get(&name).cloned().ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no model {name:?} in the repository"),
        )
    })?;
    // Owned and moved into the worker, which also puts the model in
    // service: a client that hangs up drops this handler, but the load it
    // started runs to its end under the lock, so loads never run side by side.
    let one_at_a_time = server.loading.clone().lock_owned().await;
    let worker = server.clone();
    let wanted = name.clone();
    let version = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let _one_at_a_time = one_at_a_time;
        let (server, guard) = (&worker, &worker.guard);
        let refused = |why: String| Failure::new(StatusCode::BAD_REQUEST, why);
        let model = match guard.admit(&directory) {
            Ok(Admission::Admitted { model, .. }) => *model,
            Ok(Admission::Refused { error, .. }) => {
                return Err(refused(format!(
                    "load of {wanted} refused: {}",
                    crate::cli::printable(&error.to_string())
                )));
            }
            Err(e) => return Err(guard_failed(&wanted, &e)),
        };
        if model.manifest().name != wanted {
            return Err(refused(format!(
                "the directory of {wanted} now holds model {:?}",
                model.manifest().name
            )));
        }
        match guard.prepare(&model) {
            Ok(Ok(Readiness::Prepared(_))) => {}
            Ok(Ok(Readiness::LoadedPerSession(why))) => {
                tracing::warn!(model = %wanted, "no snapshot ({why}); each request loads the model");
            }
            Ok(Err(why)) => {
                return Err(refused(format!(
                    "{wanted} {} does not run in the sandbox: {why}",
                    model.manifest().version
                )));
            }
            Err(e) => return Err(guard_failed(&wanted, &e)),
        }
        let version = model.manifest().version.to_string();
        {
            // The served version's monitors go with it.
            let watch = drift_monitor(server.drift_config, &model);
            let mut monitors = server.drift.lock().unwrap_or_else(|e| e.into_inner());
            monitors.retain(|(n, _), _| n != &wanted);
            monitors.extend(watch);
        }
        let mut models = server.models.write().unwrap_or_else(|e| e.into_inner());
        models.insert(wanted, vec![model]);
        server.retain_prepared(&models);
        Ok(version)
    })
    .await
    .map_err(|_| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the load worker panicked".into(),
        )
    })?
    .inspect_err(|f| {
        tracing::warn!("{}; the version served is unchanged", f.body.error);
    })?;
    tracing::info!(model = %name, %version, "loaded");
    Ok(Json(json!({})))
}

/// The guard itself failed (its ledger) while loading `model`: the detail,
/// with host paths, goes to the operator's log, not to the client.
fn guard_failed(model: &str, e: &crate::guard::GuardError) -> Failure {
    tracing::error!("load of {model}: {e}");
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the guard failed while loading; the operator's log says why".into(),
    )
}

/// Stops serving the model (requests in flight finish on the version they
/// started with).
pub(super) async fn unload(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, Failure> {
    server.manager(&headers, &name)?;
    let _one_at_a_time = server.loading.lock().await;
    let removed = {
        let mut models = server.models.write().unwrap_or_else(|e| e.into_inner());
        let removed = models.remove(&name);
        server.retain_prepared(&models);
        removed
    };
    if removed.is_none() {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("model {name:?} is not loaded"),
        ));
    }
    server
        .drift
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(n, _), _| n != &name);
    tracing::info!(model = %name, "unloaded");
    Ok(Json(json!({})))
}
