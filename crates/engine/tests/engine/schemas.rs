//! The Arrow schema of every table caiflow produces is kept in `schemas/*.json`; this test
//! fails when code and schema files drift. Regenerate on purpose with
//! `CAIFLOW_UPDATE_SCHEMAS=1 cargo test --workspace --test engine -- schemas`.

use crate::common::*;
use caiflow_engine::CaiSession;
use datafusion::arrow::datatypes::{DataType, Field};
use serde_json::{Value, json};

fn field_json(f: &Field) -> Value {
    let mut v = type_json(f.data_type());
    let obj = v.as_object_mut().expect("object");
    obj.insert("name".into(), json!(f.name()));
    obj.insert("nullable".into(), json!(f.is_nullable()));
    v
}

fn type_json(t: &DataType) -> Value {
    match t {
        DataType::Struct(fields) => {
            json!({"type": "Struct", "fields": fields.iter().map(|f| field_json(f)).collect::<Vec<_>>()})
        }
        DataType::List(item) | DataType::LargeList(item) => {
            json!({"type": "List", "item": field_json(item)})
        }
        other => json!({"type": other.to_string()}),
    }
}

async fn schema_of(session: &CaiSession, sql: &str) -> Value {
    let df = session
        .ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let fields: Vec<Value> = df
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .map(|f| field_json(f))
        .collect();
    json!({ "fields": fields })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_files_match_the_code() {
    // Planning checks that the endpoint exists; nothing is called.
    let mut config = caiflow_llm::config::Config::default();
    for name in ["policy", "judge"] {
        let endpoint = caiflow_llm::config::EndpointConfig::openai("http://127.0.0.1:9/v1", name);
        config.endpoints.insert(name.into(), endpoint);
    }
    let session = CaiSession::new(caiflow_llm::Endpoints::from_config(&config).unwrap());
    let root = repo_root();
    let prompts = root.join("data/red_team_prompts.jsonl");
    let helpful = root.join("data/helpful_sft.jsonl");
    let setup = [
        format!(
            "CREATE VIEW prompts AS SELECT * FROM red_team_prompts('{}')",
            prompts.display()
        ),
        "CREATE VIEW responses AS SELECT * FROM respond(prompts)".to_string(),
        "CREATE VIEW critiques AS SELECT * FROM critique(responses)".to_string(),
        "CREATE VIEW revisions AS SELECT * FROM revise(critiques)".to_string(),
        format!(
            "CREATE VIEW helpful AS SELECT * FROM helpful_sft('{}')",
            helpful.display()
        ),
        // blend reads stored tables; an empty in-memory copy has the same schema.
        "CREATE TABLE stored_revisions AS SELECT * FROM revisions LIMIT 0".to_string(),
        format!(
            "CREATE VIEW pairs AS SELECT * FROM helpful_pairs('{}')",
            root.join("data/helpful_pairs.jsonl").display()
        ),
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts)".to_string(),
        "CREATE VIEW judgements AS SELECT * FROM judge(candidates)".to_string(),
        "CREATE TABLE stored_judgements AS SELECT * FROM judgements LIMIT 0".to_string(),
    ];
    let tables = [
        (
            "red_team_prompts",
            format!("SELECT * FROM red_team_prompts('{}')", prompts.display()),
        ),
        (
            "red_team_prompts_all_turns",
            format!(
                "SELECT * FROM red_team_prompts('{}', turns => 'all')",
                prompts.display()
            ),
        ),
        ("respond", "SELECT * FROM responses".to_string()),
        ("critique", "SELECT * FROM critiques".to_string()),
        ("revise", "SELECT * FROM revisions".to_string()),
        ("helpful_sft", "SELECT * FROM helpful".to_string()),
        (
            "blend",
            "SELECT * FROM blend(stored_revisions, helpful)".to_string(),
        ),
        ("sample", "SELECT * FROM candidates".to_string()),
        ("judge", "SELECT * FROM judgements".to_string()),
        ("helpful_pairs", "SELECT * FROM pairs".to_string()),
        (
            "blend_pairs",
            "SELECT * FROM blend_pairs(stored_judgements, pairs)".to_string(),
        ),
        (
            "red_team_generate",
            "SELECT * FROM red_team_generate(prompts, n => 10)".to_string(),
        ),
    ];
    // LIMIT 0 on a view over LLM stages calls no endpoint (port 9 has no server).
    for sql in &setup {
        collect(&session, sql).await;
    }
    let update = std::env::var("CAIFLOW_UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    let mut drift = vec![];
    for (name, sql) in tables {
        let actual = schema_of(&session, &sql).await;
        let path = root.join("schemas").join(format!("{name}.json"));
        if update {
            std::fs::write(&path, serde_json::to_string_pretty(&actual).unwrap() + "\n").unwrap();
            continue;
        }
        let expected: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        if expected != actual {
            drift.push(format!(
                "{}:\n  file: {expected}\n  code: {actual}",
                path.display()
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "schemas drifted (CAIFLOW_UPDATE_SCHEMAS=1 regenerates):\n{}",
        drift.join("\n")
    );
}
