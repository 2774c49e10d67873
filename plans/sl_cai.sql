-- SL-CAI: red-team prompts -> respond -> critique -> revise -> blend with helpful data -> split.
--
-- The three LLM stages are views over each other, so they stream: a row's critique is sent
-- as soon as its response is back. `CREATE TABLE … AS` materializes a table in the run
-- (Parquet; partitioned by `split` when it has that column); running the plan again reuses
-- tables that did not change, and journalled requests are never sent twice.
--
-- Variables (override with: caiflow run plans/sl_cai.sql --set name=value):
-- @var prompts = data/red_team_prompts.jsonl
-- @var prompt_column = auto
-- @var limit = 1000000
-- @var policy = policy
-- @var max_tokens = 256
-- @var temperature = 0.7
-- @var revise_max_tokens = ${max_tokens}
-- @var rounds = 1
-- @var constitution = default
-- @var few_shot = default
-- @var helpful = data/helpful_sft.jsonl
-- @var helpful_ratio = 0.25
-- @var splits = train=0.9,test=0.1
-- @var seed = 42

CREATE VIEW prompts AS
  SELECT * FROM red_team_prompts('${prompts}', column => '${prompt_column}') LIMIT ${limit};

CREATE VIEW responses AS
  SELECT * FROM respond(prompts, endpoint => '${policy}', max_tokens => ${max_tokens},
                        temperature => ${temperature}, seed => ${seed}, few_shot => '${few_shot}');

CREATE VIEW critiques AS
  SELECT * FROM critique(responses, endpoint => '${policy}', max_tokens => ${max_tokens},
                         temperature => ${temperature}, seed => ${seed},
                         constitution => '${constitution}', few_shot => '${few_shot}');

CREATE TABLE revisions AS
  SELECT * FROM revise(critiques, rounds => ${rounds}, endpoint => '${policy}',
                       max_tokens => ${revise_max_tokens}, temperature => ${temperature},
                       seed => ${seed}, constitution => '${constitution}',
                       few_shot => '${few_shot}');

CREATE VIEW helpful AS SELECT * FROM helpful_sft('${helpful}');

CREATE TABLE sft AS
  SELECT *, split_of(sample_id, ${seed}, '${splits}') AS split
  FROM blend(revisions, helpful, ratio => ${helpful_ratio}, seed => ${seed});

-- What landed, per split and source.
SELECT split, source, count(*) AS rows, count(error) AS errors
FROM sft GROUP BY split, source ORDER BY split, source;
