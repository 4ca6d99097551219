//! Renders: submit, read, list, delete, and operator commands.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use renderfarm_wire::TaskStatus;
use renderfarm_wire::{Page, Render};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use uuid::Uuid;

use super::dependencies::{insert_dependencies, settle_dependents, states_of};
use super::rules::*;
use super::{counters::*, rows::*, tasks::*, *};
use crate::domain::{
    check_deletable, initial_status, render_transition, tasks_affected, waiting_reason, BulkCause,
    NewRender, RenderCommand, RenderOrder,
};
use crate::store::{PageRequest, RenderFilter, StoreError, StoreResult};

pub(super) fn load_render(conn: &Connection, id: Uuid) -> StoreResult<Render> {
    conn.prepare_cached(&format!(
        "SELECT {RENDER_COLUMNS} FROM renders r WHERE r.id = ?1 AND r.hidden = 0"
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
    conn.prepare_cached("SELECT seq FROM renders WHERE id = ?1 AND hidden = 0")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("render", id))
}

/// Tasks written (or deleted) per transaction when a big render is created
/// (or deleted): a claim that waits behind one batch waits a few
/// milliseconds, where a whole render of 1,000,000 tasks held the writer for
/// six seconds.
const TASK_WRITE_BATCH: usize = 1_000;

pub(super) async fn create_render(store: &SqliteStore, new: NewRender) -> StoreResult<Render> {
    // Batches that commit separately, so that a render of a million tasks
    // does not hold the writer (and every claim behind it) for seconds. The
    // render stays hidden until its last batch is in.
    let render = Arc::new(new.render.clone());
    let chunks: Arc<Vec<(i64, i64, i64)>> = Arc::new(
        new.tasks()
            .map(|t| (t.frames.start(), t.frames.end(), t.rank))
            .collect(),
    );
    let batches = chunks.len().div_ceil(TASK_WRITE_BATCH);
    let mut render_seq = None;
    for i in 0..batches {
        let (render, chunks) = (render.clone(), chunks.clone());
        let written = store
            .write(move |conn| {
                let seq = match render_seq {
                    Some(seq) => seq,
                    None => {
                        let seq = insert_hidden_render(conn, &render)?;
                        insert_dependencies(conn, seq, &render.depends_on)?;
                        seq
                    }
                };
                let end = ((i + 1) * TASK_WRITE_BATCH).min(chunks.len());
                insert_tasks(conn, seq, &render, &chunks[i * TASK_WRITE_BATCH..end])?;
                if i + 1 < batches {
                    return Ok((seq, None));
                }
                // What it waits for, as it stands in this transaction: a
                // dependency may have moved since the submit looked.
                let reason = waiting_reason(&states_of(conn, &render.depends_on)?);
                conn.prepare_cached(
                    "UPDATE renders SET hidden = 0, tasks_pending = ?2, status = ?3, \
                     waiting_reason = ?4 WHERE seq = ?1",
                )?
                .execute(params![
                    seq,
                    render.progress.tasks_pending,
                    initial_status(&reason).as_str(),
                    reason
                ])?;
                Ok((seq, Some(load_render_by_seq(conn, seq)?)))
            })
            .await;
        match written {
            Ok((_, Some(stored))) => return Ok(stored),
            Ok((seq, None)) => render_seq = Some(seq),
            Err(e) => {
                if let Some(seq) = render_seq {
                    // What is written stays hidden; the next start removes
                    // it if this cannot.
                    let _ = remove_hidden_render(store, seq).await;
                }
                return Err(e);
            }
        }
    }
    Err(StoreError::Unexpected(anyhow::anyhow!(
        "a render planned without tasks"
    )))
}

/// Inserts the render's row, hidden and with no pending task to claim yet;
/// its row key.
fn insert_hidden_render(conn: &Connection, r: &Render) -> StoreResult<i64> {
    conn.prepare_cached(
        "INSERT INTO renders (id, name, status, priority, blend_file, frame_start, frame_end, \
         chunk_size, max_retries, output, engine, tags, tasks_total, tasks_pending, \
         tasks_running, tasks_completed, tasks_failed, tasks_canceled, frames_total, \
         frames_done, created_at, owner, blend_sha256, upload_frames, hidden, video, frame_order, \
         blocklist_after, target_chunk_seconds) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, 0, 0, 0, 0, ?14, 0, ?15, ?16, \
         ?17, ?18, 1, ?19, ?20, ?21, ?22)",
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
        r.progress.frames_total,
        ts(r.created_at),
        r.owner,
        r.blend_sha256,
        r.upload_frames,
        video_json(r.video.as_ref()),
        r.frame_order.as_str(),
        r.blocklist_after,
        r.target_chunk_seconds,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Inserts pending tasks of frames `chunks` for the render at `render_seq`.
fn insert_tasks(
    conn: &Connection,
    render_seq: i64,
    r: &Render,
    chunks: &[(i64, i64, i64)],
) -> StoreResult<()> {
    let mut insert = conn.prepare_cached(&INSERT_TASK)?;
    let queued_at = ts(r.created_at);
    for (start, end, rank) in chunks {
        insert.execute(params![
            Uuid::now_v7().to_string(),
            render_seq,
            r.priority.rank(),
            start,
            end,
            queued_at,
            rank,
        ])?;
    }
    Ok(())
}

/// Deletes up to one batch of a hidden render's tasks (with their logs and
/// history), or the render itself once none is left; true while there is
/// more to delete.
fn delete_hidden_batch(conn: &Connection, render_seq: i64) -> StoreResult<bool> {
    // The same batch each time: the render's first tasks by row key.
    const BATCH: &str = "SELECT seq FROM tasks WHERE render_seq = ?1 ORDER BY seq LIMIT ?2";
    let args = params![render_seq, TASK_WRITE_BATCH as i64];
    conn.prepare_cached(&format!(
        "DELETE FROM task_logs WHERE task_seq IN ({BATCH})"
    ))?
    .execute(args)?;
    conn.prepare_cached(&format!(
        "DELETE FROM task_history WHERE task_seq IN ({BATCH})"
    ))?
    .execute(args)?;
    let deleted = conn
        .prepare_cached(&format!("DELETE FROM tasks WHERE seq IN ({BATCH})"))?
        .execute(args)?;
    if deleted > 0 {
        return Ok(true);
    }
    // Its frames' records go with it; their files are then unreferenced,
    // and the collector frees them after the grace.
    conn.prepare_cached("DELETE FROM frame_files WHERE render_seq = ?1")?
        .execute([render_seq])?;
    conn.prepare_cached("DELETE FROM previews WHERE render_seq = ?1")?
        .execute([render_seq])?;
    conn.prepare_cached("DELETE FROM render_dependencies WHERE render_seq = ?1")?
        .execute([render_seq])?;
    conn.prepare_cached("DELETE FROM blocklist WHERE render_seq = ?1")?
        .execute([render_seq])?;
    conn.prepare_cached("DELETE FROM renders WHERE seq = ?1 AND hidden = 1")?
        .execute([render_seq])?;
    Ok(false)
}

/// Deletes a hidden render batch by batch, each its own write.
async fn remove_hidden_render(store: &SqliteStore, render_seq: i64) -> StoreResult<()> {
    while store
        .write(move |conn| delete_hidden_batch(conn, render_seq))
        .await?
    {}
    Ok(())
}

/// Removes every hidden render: what a broker that died half-way through a
/// big submit or delete left. Runs at start, before anything is served.
pub(super) fn remove_hidden_renders(conn: &Connection) -> StoreResult<()> {
    let hidden: Vec<i64> = conn
        .prepare("SELECT seq FROM renders WHERE hidden = 1")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for seq in hidden {
        tracing::warn!(
            render_seq = seq,
            "removing a render left half-written or half-deleted by the last run"
        );
        loop {
            let tx = conn.unchecked_transaction()?;
            let more = delete_hidden_batch(&tx, seq)?;
            tx.commit()?;
            if !more {
                break;
            }
        }
    }
    Ok(())
}

pub(super) async fn get_render(store: &SqliteStore, id: Uuid) -> StoreResult<Render> {
    store.read(move |conn| load_render(conn, id)).await
}

pub(super) async fn list_renders(
    store: &SqliteStore,
    filter: &RenderFilter,
    order: RenderOrder,
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
        if let Some(owner) = filter.owner {
            args.push(owner.into());
            clauses.push(format!("r.owner = ?{}", args.len()));
        }
        if let Some(search) = filter.search {
            args.push(name_search_pattern(&search).into());
            clauses.push(name_search("r.name", &format!("?{}", args.len())));
        }
        clauses.push("r.hidden = 0".to_string());
        let filter_sql = format!("WHERE {}", clauses.join(" AND "));
        let total: i64 = conn
            .prepare_cached(&format!("SELECT COUNT(*) FROM renders r {filter_sql}"))?
            .query_row(params_from_iter(args.iter()), |row| row.get(0))?;
        let (limit, offset) = page_bounds(page);
        args.push(limit.into());
        args.push(offset.into());
        let n = args.len();
        let items = conn
            .prepare_cached(&format!(
                "SELECT {RENDER_COLUMNS} FROM renders r {filter_sql} ORDER BY {} LIMIT ?{} OFFSET ?{}",
                render_order(order),
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

pub(super) async fn dependency_states(
    store: &SqliteStore,
    ids: &[Uuid],
) -> StoreResult<Vec<crate::domain::DependencyState>> {
    let ids = ids.to_vec();
    store.read(move |conn| states_of(conn, &ids)).await
}

pub(super) async fn delete_render(store: &SqliteStore, id: Uuid) -> StoreResult<()> {
    // Hidden first (gone for every reader from here on), then removed in
    // batches like a big submit is written.
    let seq = store
        .write(move |conn| {
            let seq = render_seq(conn, id)?;
            let state = load_tally(conn, seq)?;
            check_deletable(state.status, state.progress.tasks_running)?;
            conn.prepare_cached("UPDATE renders SET hidden = 1 WHERE seq = ?1")?
                .execute([seq])?;
            Ok(seq)
        })
        .await?;
    remove_hidden_render(store, seq).await?;
    // Renders that wait for it now wait for a render that is gone.
    store
        .write(move |conn| settle_dependents(conn, &id.to_string(), Utc::now()))
        .await?;
    tracing::info!(render_id = %id, "render deleted");
    Ok(())
}

pub(super) async fn change_render(
    store: &SqliteStore,
    id: Uuid,
    command: RenderCommand,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Render> {
    let actor = actor.map(str::to_string);
    store
        .write(move |conn| {
            let seq = render_seq(conn, id)?;
            let mut state = load_tally(conn, seq)?;
            let before = state.status;
            let to = render_transition(before, command)?;
            if let Some((event, from)) = tasks_affected(command, &state.progress) {
                let cause = BulkCause::Command(command);
                bulk_task_change(conn, seq, event, &from, cause, actor.as_deref(), now)?;
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
        "INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, queued_at, \
         claim_rank) VALUES (?1, ?2, ?3, ?4, ?5, {}, ?6, ?7)",
        lit(TaskStatus::Pending)
    )
});
