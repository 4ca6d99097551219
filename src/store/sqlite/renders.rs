//! Renders: submit, read, list, delete, and operator commands.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use renderfarm_wire::TaskStatus;
use renderfarm_wire::{Page, Render};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::*;
use super::{counters::*, rows::*, tasks::*, *};
use crate::domain::{check_deletable, render_transition, tasks_affected, NewRender, RenderCommand};
use crate::store::{PageRequest, RenderFilter, StoreError, StoreResult};

pub(super) fn load_render(conn: &Connection, id: Uuid) -> StoreResult<Render> {
    conn.prepare_cached(&format!(
        "SELECT {RENDER_COLUMNS} FROM renders r WHERE r.id = ?1"
    ))?
    .query_row([id.to_string()], render_from_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("render", id))
}

pub(super) fn load_render_by_seq(conn: &Connection, seq: i64) -> StoreResult<Render> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RENDER_COLUMNS} FROM renders r WHERE r.seq = ?1"
        ))?
        .query_row([seq], render_from_row)?)
}

/// The render's row key; not found when no render has that id.
pub(super) fn render_seq(conn: &Connection, id: Uuid) -> StoreResult<i64> {
    conn.prepare_cached("SELECT seq FROM renders WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("render", id))
}

pub(super) async fn create_render(store: &SqliteStore, new: NewRender) -> StoreResult<Render> {
    store.write(move |conn| {
        let r = &new.render;
        conn.prepare_cached(
            "INSERT INTO renders (id, name, status, priority, blend_file, frame_start, frame_end, \
             chunk_size, max_retries, output, engine, tags, tasks_total, tasks_pending, \
             tasks_running, tasks_completed, tasks_failed, tasks_canceled, frames_total, \
             frames_done, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 0, 0, 0, 0, ?15, 0, ?16)",
        )?
        .execute(params![
            r.id.to_string(),
            r.name,
            r.status.as_str(),
            r.priority.rank(),
            r.blend_file,
            r.frame_start,
            r.frame_end,
            r.chunk_size,
            r.max_retries,
            r.output,
            r.engine,
            tags_json(&r.tags),
            r.progress.tasks_total,
            r.progress.tasks_pending,
            r.progress.frames_total,
            ts(r.created_at),
        ])?;
        let render_seq = conn.last_insert_rowid();
        let mut insert = conn.prepare_cached(&INSERT_TASK)?;
        let queued_at = ts(r.created_at);
        for frames in new.chunks() {
            insert.execute(params![
                Uuid::now_v7().to_string(),
                render_seq,
                r.priority.rank(),
                frames.start(),
                frames.end(),
                queued_at,
            ])?;
        }
        load_render_by_seq(conn, render_seq)
    })
    .await
}

pub(super) async fn get_render(store: &SqliteStore, id: Uuid) -> StoreResult<Render> {
    store.read(move |conn| load_render(conn, id)).await
}

pub(super) async fn list_renders(
    store: &SqliteStore,
    filter: &RenderFilter,
    page: PageRequest,
) -> StoreResult<Page<Render>> {
    let filter = filter.clone();
    store.read(move |conn| {
        let mut clauses = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(status) = filter.status {
            args.push(status.as_str().to_string().into());
            clauses.push(format!("r.status = ?{}", args.len()));
        }
        if let Some(priority) = filter.priority {
            args.push(priority.rank().into());
            clauses.push(format!("r.priority = ?{}", args.len()));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let total: i64 = conn
            .prepare_cached(&format!("SELECT COUNT(*) FROM renders r {filter_sql}"))?
            .query_row(params_from_iter(args.iter()), |row| row.get(0))?;
        let (limit, offset) = page_bounds(page);
        args.push(limit.into());
        args.push(offset.into());
        let n = args.len();
        let items = conn
            .prepare_cached(&format!(
                "SELECT {RENDER_COLUMNS} FROM renders r {filter_sql} ORDER BY r.seq DESC LIMIT ?{} OFFSET ?{}",
                n - 1,
                n
            ))?
            .query_map(params_from_iter(args.iter()), render_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Page {
            items,
            total,
            limit,
            offset,
        })
    })
    .await
}

pub(super) async fn delete_render(store: &SqliteStore, id: Uuid) -> StoreResult<()> {
    store.write(move |conn| {
        let seq = render_seq(conn, id)?;
        let state = load_tally(conn, seq)?;
        check_deletable(state.status, state.progress.tasks_running)?;
        for statement in [
            "DELETE FROM task_logs WHERE task_seq IN (SELECT seq FROM tasks WHERE render_seq = ?1)",
            "DELETE FROM task_history WHERE task_seq IN (SELECT seq FROM tasks WHERE render_seq = ?1)",
            "DELETE FROM tasks WHERE render_seq = ?1",
            "DELETE FROM renders WHERE seq = ?1",
        ] {
            conn.prepare_cached(statement)?.execute([seq])?;
        }
        tracing::info!(render_id = %id, "render deleted");
        Ok(())
    })
    .await
}

pub(super) async fn change_render(
    store: &SqliteStore,
    id: Uuid,
    command: RenderCommand,
    now: DateTime<Utc>,
) -> StoreResult<Render> {
    store
        .write(move |conn| {
            let seq = render_seq(conn, id)?;
            let mut state = load_tally(conn, seq)?;
            let before = state.status;
            let to = render_transition(before, command)?;
            if let Some((event, from)) = tasks_affected(command, &state.progress) {
                bulk_task_change(conn, seq, event, &from, now)?;
                state.progress = count_tally(conn, seq, state.progress.frames_total)?;
            }
            if command == RenderCommand::Requeue {
                state.started_at = None;
                state.failed_for_good = false;
            }
            state.status = to;
            save_tally(conn, state, before, false, now)?;
            tracing::info!(render_id = %id, ?command, "operator changed render");
            load_render_by_seq(conn, seq)
        })
        .await
}

/// A new task of a render, ready to be claimed.
static INSERT_TASK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, queued_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, {}, ?6)",
        lit(TaskStatus::Pending)
    )
});
