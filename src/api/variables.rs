//! `/variables`: the farm's path variables (`domain::validate_variable`),
//! what submits store render paths with and claims translate them by.
//!
//! Claims read the variables through [`VariableCache`], never the store
//! directly: a claim whose paths name no variable reads nothing more, and
//! one whose paths do reads the cache (refreshed after [`CACHE_TTL`], at
//! once on this broker's own changes; another broker's change reaches this
//! one within the TTL, or at once when a claim finds a variable it lacks).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use renderfarm_wire::{Assignment, PathVariable, PathVariableSpec, Platform, Render, TaskKind};
use uuid::Uuid;

use super::auth::{Access, Operator, Viewer};
use super::{resource, ApiError, AppState, JsonBody};
use crate::domain::{
    check_stored_form, for_platform, mappings_for, to_stored, uses_variable, validate_variable,
    validate_variable_name, PathMappingError, TaskReport, ValidRenderSpec, MAX_VARIABLES,
};
use crate::store::{Store, StoreError, StoreResult};

/// How long a broker trusts its copy of the variables.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/variables", "GET").route(web::get().to(list)))
        .service(
            resource("/variables/{name}", "PUT, DELETE")
                .route(web::put().to(put))
                .route(web::delete().to(delete)),
        );
}

/// This broker's copy of the variables, read again once older than the TTL.
#[derive(Default)]
pub struct VariableCache {
    held: Mutex<Option<(Instant, Arc<Vec<PathVariable>>)>>,
}

impl VariableCache {
    /// The variables, from the copy if it is fresh.
    pub async fn get(&self, store: &dyn Store) -> StoreResult<Arc<Vec<PathVariable>>> {
        if let Some((at, vars)) = self.lock().as_ref() {
            if at.elapsed() < CACHE_TTL {
                return Ok(vars.clone());
            }
        }
        self.reload(store).await
    }

    /// The variables as the store has them now, kept as the new copy.
    pub async fn reload(&self, store: &dyn Store) -> StoreResult<Arc<Vec<PathVariable>>> {
        let vars = Arc::new(store.list_path_variables().await?);
        *self.lock() = Some((Instant::now(), vars.clone()));
        Ok(vars)
    }

    /// Forgets the copy (after this broker changed a variable).
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<Vec<PathVariable>>)>> {
        // A panic while holding it leaves nothing half-written.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The render paths a submit stores: each under the variable whose value
/// is its longest prefix (`domain::to_stored`), or as given; a path given
/// in stored form must name a variable that exists. `blend_file` is a path
/// only without `blend_sha256` (else it is the uploaded file's name).
pub async fn store_paths(state: &AppState, spec: &mut ValidRenderSpec) -> Result<(), ApiError> {
    // Read afresh: a variable defined a moment ago, on any broker, counts.
    let vars = state.variables.reload(state.store.as_ref()).await?;
    if spec.blend_sha256.is_none() {
        check_stored_form("blend_file", &spec.blend_file, &vars)?;
        spec.blend_file = to_stored(&spec.blend_file, &vars);
    }
    if let Some(output) = &spec.output {
        check_stored_form("output", output, &vars)?;
        spec.output = Some(to_stored(output, &vars));
    }
    Ok(())
}

/// The assignment in the worker's platform's form: `blend_file` and
/// `output` translated and the in-blend mappings given, when its paths
/// name a variable; as claimed otherwise, with no read at all. `None` when
/// it cannot be given (a variable deleted, or without a value on the
/// worker's platform): the task is failed with a reason that says so.
pub async fn for_worker(
    state: &AppState,
    worker_id: Uuid,
    mut assignment: Assignment,
) -> Result<Option<Assignment>, ApiError> {
    let blend_uses = assignment.blend_sha256.is_none() && uses_variable(&assignment.blend_file);
    if !blend_uses && !uses_variable(&assignment.output) {
        return Ok(Some(assignment));
    }
    let platform = state
        .store
        .get_worker(worker_id, state.clock.now())
        .await?
        .platform;
    let store = state.store.as_ref();
    let mut vars = state.variables.get(store).await?;
    let mut translated = translate(&assignment, blend_uses, platform, &vars);
    if translated.is_err() {
        // Another broker may have just defined what this copy lacks.
        vars = state.variables.reload(store).await?;
        translated = translate(&assignment, blend_uses, platform, &vars);
    }
    match translated {
        Ok((blend_file, output)) => {
            assignment.blend_file = blend_file;
            assignment.output = output;
            if assignment.kind == TaskKind::Blender {
                assignment.path_mappings = mappings_for(platform, &vars);
            }
            Ok(Some(assignment))
        }
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(task_id = %assignment.task_id, worker_id = %worker_id, %reason, "task failed at its claim: its paths cannot be given to the worker");
            let fail = TaskReport::Fail {
                exit_code: None,
                reason: reason.clone(),
            };
            let log = Some(format!("renderfarm broker: {reason}\n"));
            match state
                .store
                .report_task_as(
                    Some(worker_id),
                    assignment.task_id,
                    assignment.lease_id,
                    fail,
                    log,
                    state.clock.now(),
                )
                .await
            {
                // Moved on meanwhile (canceled, say): nothing to hand out.
                Ok(_) | Err(StoreError::StaleLease { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The render with its paths in the broker's own platform's form, for the
/// broker's look at its output folder (frames it serves); a path whose
/// variable has no value here stays in stored form, which no folder has.
pub async fn on_broker(state: &AppState, mut render: Render) -> Result<Render, ApiError> {
    let blend_uses = render.blend_sha256.is_none() && uses_variable(&render.blend_file);
    if !blend_uses && !uses_variable(&render.output) {
        return Ok(render);
    }
    let here = Platform::of_os(std::env::consts::OS).unwrap_or_default();
    let vars = state.variables.get(state.store.as_ref()).await?;
    if let Ok(output) = for_platform(&render.output, here, &vars) {
        render.output = output;
    }
    if blend_uses {
        if let Ok(blend) = for_platform(&render.blend_file, here, &vars) {
            render.blend_file = blend;
        }
    }
    Ok(render)
}

fn translate(
    a: &Assignment,
    blend_uses: bool,
    platform: Platform,
    vars: &[PathVariable],
) -> Result<(String, String), PathMappingError> {
    let blend_file = if blend_uses {
        for_platform(&a.blend_file, platform, vars)?
    } else {
        a.blend_file.clone()
    };
    Ok((blend_file, for_platform(&a.output, platform, vars)?))
}

/// The farm's path variables.
///
/// Each a shared folder's path on every platform that has it. A render
/// path under one of them (`blend_file`, `output`) is stored as
/// `{name}/rest` and given to each worker in its platform's form.
#[utoipa::path(
    get,
    path = "/variables",
    tag = "variables",
    operation_id = "list_variables",
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The variables, by name.", body = Vec<PathVariable>),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_path_variables().await?))
}

/// Define or change a path variable.
///
/// Replaces the variable's values on every platform with those given (a
/// platform left out or null has none). Renders submitted before keep
/// their stored paths: their next claims use the new values. Values are
/// stored in one spelling (Windows separators `\`, no trailing separator,
/// drive letter upper case).
#[utoipa::path(
    put,
    path = "/variables/{name}",
    tag = "variables",
    operation_id = "put_variable",
    params(("name" = String, Path, description = "The variable: 1 to 32 of a-z, 0-9 and `_`, starting with a letter.", pattern = "^[a-z][a-z0-9_]{0,31}$")),
    request_body = PathVariableSpec,
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "Changed: the variable as stored.", body = PathVariable),
        (status = 201, description = "Defined: the variable as stored.", body = PathVariable),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn put(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: JsonBody<PathVariableSpec>,
) -> Result<HttpResponse, ApiError> {
    let variable = validate_variable(&name, body.into_inner())?;
    let existing = state.store.list_path_variables().await?;
    if existing.len() >= MAX_VARIABLES && !existing.iter().any(|v| v.name == variable.name) {
        return Err(ApiError::Invalid(format!(
            "the farm has {MAX_VARIABLES} path variables already, as many as it allows; delete one it no longer needs (DELETE /variables/{{name}})"
        )));
    }
    let created = state
        .store
        .put_path_variable(variable.clone(), state.clock.now())
        .await?;
    state.variables.invalidate();
    tracing::info!(name = %variable.name, created, "path variable set");
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(variable))
}

/// Delete a path variable.
///
/// Renders stored with it keep its name: their tasks fail at their next
/// claim with a reason naming it, until it is defined again.
#[utoipa::path(
    delete,
    path = "/variables/{name}",
    tag = "variables",
    operation_id = "delete_variable",
    params(("name" = String, Path, description = "The variable.", pattern = "^[a-z][a-z0-9_]{0,31}$")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn delete(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = validate_variable_name(&name)?;
    match state.store.delete_path_variable(&name).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!(
                "there is no path variable {name}; see GET /variables for those there are"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    state.variables.invalidate();
    tracing::info!(%name, "path variable deleted");
    Ok(HttpResponse::NoContent().finish())
}
