-- SL-CAI as the CAI paper ran it (Bai et al. 2022, arXiv 2212.08073, §3):
-- red-team prompts -> respond (few-shot, §3) -> 4 independent critique-revision sequences
-- per prompt (`sequences`, each with its own principle draws and seeds) of 4 rounds each
-- (`rounds`, §3: a new principle per round, the latest revision critiqued) -> every
-- revision as SFT data, blended with helpful data -> split; and every revision as a
-- preference pair over the initial response (`sl_pairs`, as the Hugging Face CAI recipe
-- ships them) for `caiflow export RUN --format trl-dpo`.
--
-- The §3.5 ablation (revision without a critique) is revise over the responses:
--   revise(responses, critique => false, sequences => 4, rounds => 4, …)
-- one request per row and round, no critique (README "Direct revision").
--
-- Variables (override with: caiflow run plans/sl_cai_paper.sql --set name=value):
-- @var prompts = data/red_team_prompts.jsonl
-- @var prompt_column = auto
-- @var limit = 1000000
-- @var policy = policy
-- @var max_tokens = 256
-- @var temperature = 0.7
-- @var revise_max_tokens = ${max_tokens}
-- @var rounds = 4
-- @var sequences = 4
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
                         sequences => ${sequences}, constitution => '${constitution}',
                         few_shot => '${few_shot}');

CREATE TABLE revisions AS
  SELECT * FROM revise(critiques, rounds => ${rounds}, endpoint => '${policy}',
                       max_tokens => ${revise_max_tokens}, temperature => ${temperature},
                       seed => ${seed}, constitution => '${constitution}',
                       few_shot => '${few_shot}');

CREATE VIEW helpful AS SELECT * FROM helpful_sft('${helpful}');

CREATE TABLE sft AS
  SELECT *, split_of(sample_id, ${seed}, '${splits}') AS split
  FROM blend(revisions, helpful, ratio => ${helpful_ratio}, seed => ${seed});

-- Each revision chosen over the initial response, with its round, sequence and principle.
-- A revision identical to the response is no preference and is left out; failed rows stay
-- (label 'error') so the export counts them.
CREATE TABLE sl_pairs AS
  SELECT concat(prompt_id, '-s', CAST(sequence AS VARCHAR), '-r', CAST(round AS VARCHAR)) AS pair_id,
         prompt, revision AS chosen, response AS rejected, round, sequence, principle_id,
         CASE WHEN error IS NULL THEN 'ok' ELSE 'error' END AS label, error,
         split_of(prompt_id, ${seed}, '${splits}') AS split
  FROM revisions
  WHERE error IS NOT NULL OR revision <> response;

-- What landed: revisions per round, then pairs per split.
SELECT round, count(*) AS revisions, count(error) AS errors
FROM revisions GROUP BY round ORDER BY round;

SELECT split, count(*) AS pairs, count(error) AS errors
FROM sl_pairs GROUP BY split ORDER BY split;
