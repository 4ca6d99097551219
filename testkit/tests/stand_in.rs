//! The MongoDB stand-in through the real driver: the commands the proxy
//! answers for the in-memory server, and the serialisation that makes its
//! claims exclusive. Against a real server (`TEST_MONGODB_URI`) the same
//! answers hold, so these run there too.

use bson::{doc, Document};
use futures::future::join_all;
use mongodb::Client;

async fn database(test: &str) -> Option<mongodb::Database> {
    let target = renderfarm_testkit::mongodb_for_tests(test)?;
    let client = Client::with_uri_str(target.uri())
        .await
        .expect("the driver takes the URI");
    let suffix = uuid_like();
    Some(client.database(&format!("testkit_{suffix}")))
}

/// A database name no other run uses.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_created_listed_and_dropped() {
    let Some(db) = database("collections_are_created_listed_and_dropped").await else {
        return;
    };
    db.create_collection("renders").await.expect("created");
    let again = db.create_collection("renders").await.unwrap_err();
    assert!(
        matches!(*again.kind, mongodb::error::ErrorKind::Command(ref e) if e.code == 48),
        "a second create is NamespaceExists: {again}"
    );
    db.run_command(
        doc! { "collMod": "renders", "validator": { "$jsonSchema": { "bsonType": "object" } } },
    )
    .await
    .expect("an existing collection takes a validator");
    db.collection::<Document>("tasks")
        .insert_many([doc! { "n": 1 }, doc! { "n": 2 }])
        .await
        .expect("inserted");
    let mut names = db.list_collection_names().await.expect("listed");
    names.sort();
    assert_eq!(names, ["renders", "tasks"]);

    db.drop().await.expect("the database drops");
    assert_eq!(
        db.collection::<Document>("tasks")
            .count_documents(doc! {})
            .await
            .expect("counted"),
        0,
        "its documents are gone"
    );
    assert!(db.list_collection_names().await.expect("listed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_find_one_and_updates_each_take_a_different_document() {
    let Some(db) = database("concurrent_find_one_and_updates_each_take_a_different_document").await
    else {
        return;
    };
    let jobs = db.collection::<Document>("jobs");
    let total = 300;
    jobs.insert_many((0..total).map(|n| doc! { "_id": n, "taken_by": null }))
        .await
        .expect("inserted");
    // 16 claimers at once, on the driver's pool of connections, each taking
    // until none is left.
    let claimers = (0..16).map(|claimer| {
        let jobs = jobs.clone();
        async move {
            let mut taken = Vec::new();
            while let Some(job) = jobs
                .find_one_and_update(
                    doc! { "taken_by": null },
                    doc! { "$set": { "taken_by": claimer } },
                )
                .await
                .expect("a claim")
            {
                taken.push(job.get_i32("_id").expect("an id"));
            }
            taken
        }
    });
    let mut all: Vec<i32> = join_all(claimers).await.into_iter().flatten().collect();
    all.sort_unstable();
    let expected: Vec<i32> = (0..total).collect();
    assert_eq!(all, expected, "every document taken exactly once");
    db.drop().await.expect("cleaned up");
}
