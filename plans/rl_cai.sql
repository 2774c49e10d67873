-- RL-CAI (RLAIF): red-team prompts -> several candidates per prompt -> an AI judge picks the
-- most harmless (chosen) and most harmful (rejected) -> blend with helpful pairs -> split.
--
-- sample and judge stream: a prompt is judged as soon as its candidates are in. Every prompt
-- gets exactly one judgement row (label ok, tie or error), stored in judgements/; the
-- blended, split pairs land in preferences/split=*/.
--
-- Variables (override with: caiflow run plans/rl_cai.sql --set name=value):
-- @var prompts = data/red_team_prompts.jsonl
-- @var prompt_column = auto
-- @var limit = 1000000
-- @var policy = policy
-- @var judge = judge
-- @var temperatures = 0.01,0.51,1.01,1.51
-- @var max_tokens = 256
-- @var mode = constitution
-- @var judge_max_tokens = 512
-- @var structured = false
-- @var judge_constitution = default
-- @var attempts = 3
-- @var helpful_pairs = data/helpful_pairs.jsonl
-- @var helpful_ratio = 0.2
-- @var splits = train=0.9,test=0.1
-- @var seed = 42

CREATE VIEW prompts AS
  SELECT * FROM red_team_prompts('${prompts}', column => '${prompt_column}') LIMIT ${limit};

CREATE VIEW candidates AS
  SELECT * FROM sample(prompts, endpoint => '${policy}', temperatures => '${temperatures}',
                       max_tokens => ${max_tokens}, seed => ${seed});

CREATE TABLE judgements AS
  SELECT * FROM judge(candidates, endpoint => '${judge}', mode => '${mode}',
                      max_tokens => ${judge_max_tokens}, structured => ${structured},
                      constitution => '${judge_constitution}', attempts => ${attempts},
                      seed => ${seed});

CREATE VIEW helpful AS SELECT * FROM helpful_pairs('${helpful_pairs}');

CREATE TABLE preferences AS
  SELECT *, split_of(pair_id, ${seed}, '${splits}') AS split
  FROM blend_pairs(judgements, helpful, ratio => ${helpful_ratio}, seed => ${seed});

-- The judge's verdicts, all accounted for.
SELECT label, count(*) AS prompts FROM judgements GROUP BY label ORDER BY label;
