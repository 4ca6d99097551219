//! Path mapping: the farm's path variables kept, replaced and deleted
//! whole; each worker's platform kept as it registered; a render stored
//! with variable paths (`domain::to_stored`) handed out in that form, for
//! the broker to give each worker in its platform's form
//! (`domain::for_platform`).

use renderfarm_wire::{PathVariable, PathVariableSpec, Platform, TaskKind, WorkerSpec};

use super::*;
use crate::domain::{for_platform, to_stored, validate_variable};
use crate::store::StoreError;

fn variable(name: &str, linux: Option<&str>, windows: Option<&str>) -> PathVariable {
    validate_variable(
        name,
        PathVariableSpec {
            linux: linux.map(Into::into),
            windows: windows.map(Into::into),
            macos: None,
        },
    )
    .expect("a valid test variable")
}

pub async fn path_variables_are_kept_by_name_replaced_whole_and_deleted(store: &dyn Store) {
    assert!(store.list_path_variables().await.unwrap().is_empty());
    let projects = variable("projects", Some("/mnt/projects"), Some("P:\\projects"));
    let assets = variable("assets", None, Some("\\\\nas\\assets"));
    assert!(store
        .put_path_variable(projects.clone(), t0())
        .await
        .unwrap());
    assert!(store.put_path_variable(assets.clone(), t0()).await.unwrap());
    assert_eq!(
        store.list_path_variables().await.unwrap(),
        [assets.clone(), projects.clone()],
        "listed by name, with every value as put"
    );
    // Putting again replaces every value: one left out is gone.
    let moved = variable("projects", Some("/srv/projects"), None);
    assert!(!store.put_path_variable(moved.clone(), t0()).await.unwrap());
    assert_eq!(
        store.list_path_variables().await.unwrap(),
        [assets.clone(), moved]
    );
    store.delete_path_variable("projects").await.unwrap();
    assert_eq!(store.list_path_variables().await.unwrap(), [assets]);
    assert!(matches!(
        store.delete_path_variable("projects").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn a_worker_keeps_the_platform_it_registered_with(store: &dyn Store) {
    let mut ids = Vec::new();
    for (name, platform) in [
        ("lin", Platform::Linux),
        ("win", Platform::Windows),
        ("mac", Platform::Macos),
    ] {
        let spec = validate_worker_spec(WorkerSpec {
            name: name.into(),
            tags: vec![],
            kinds: vec![TaskKind::Blender],
            time_zone: None,
            available: None,
            strict_hours: false,
            platform,
        })
        .unwrap();
        let w = store.register_worker(spec, t0()).await.unwrap();
        assert_eq!(w.platform, platform, "as registered");
        assert_eq!(
            store.get_worker(w.id, t0()).await.unwrap().platform,
            platform
        );
        ids.push((w.id, platform));
    }
    let listed: Vec<(Uuid, Platform)> = store
        .list_workers(t0())
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.platform))
        .collect();
    assert_eq!(listed, ids);
}

pub async fn a_render_stored_with_variables_is_handed_out_in_that_form(store: &dyn Store) {
    let projects = variable("projects", Some("/mnt/projects"), Some("P:\\projects"));
    store.put_path_variable(projects, t0()).await.unwrap();
    let vars = store.list_path_variables().await.unwrap();
    let blend = to_stored("p:/Projects/shots/a.blend", &vars);
    let output = to_stored("P:\\projects\\out\\f_####", &vars);
    assert_eq!(
        (blend.as_str(), output.as_str()),
        ("{projects}/shots/a.blend", "{projects}/out/f_####")
    );
    let r = store
        .create_render(plan_with("r", 1, 1, 1, Priority::Normal, t0(), |s| {
            s.blend_file = blend.clone();
            s.output = Some(output.clone());
        }))
        .await
        .unwrap();
    let read = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (read.blend_file.as_str(), read.output.as_str()),
        (blend.as_str(), output.as_str())
    );
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.expect("its task");
    assert_eq!(
        (a.blend_file.as_str(), a.output.as_str()),
        (blend.as_str(), output.as_str())
    );
    assert!(
        a.path_mappings.is_empty(),
        "the broker adds them, not the store"
    );
    assert_eq!(
        for_platform(&a.blend_file, Platform::Linux, &vars).unwrap(),
        "/mnt/projects/shots/a.blend"
    );
    assert_eq!(
        for_platform(&a.output, Platform::Windows, &vars).unwrap(),
        "P:\\projects\\out\\f_####"
    );
}
