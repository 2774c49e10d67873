-- RL-CAI as the CAI paper ran it (Bai et al. 2022, arXiv 2212.08073, §4):
-- red-team prompts -> a pair of responses per prompt -> a feedback model that sees worked
-- examples, thinks step by step (§4.1 "chain-of-thought") and then chooses (A) or (B) under a
-- principle drawn per comparison from 16 -> soft labels from the choice's log-probabilities,
-- clamped to 40-60 % (§4.1: CoT labels are overconfident) -> blend with helpful pairs -> split.
--
-- Differences from plans/rl_cai.sql (NeMo-Aligner's recipe): principle mode instead of one
-- whole-constitution verdict, few-shot CoT, soft labels, the whole conversation shown.
-- The judge needs an endpoint that returns log-probabilities (the embedded default, llama.cpp
-- server, vLLM, OpenAI). Train on the soft labels with:
--   caiflow export RUN --format trl-reward   (margin = log-odds of chosen_prob)
--   caiflow export RUN --format pm-soft      (probability targets)
--   caiflow export RUN --format trl-dpo      (chosen_prob kept)
-- `audit => true` asks every comparison in both orders: the report then shows each
-- principle's position consistency and the dataset card flags noisy principles.
--
-- Variables (override with: caiflow run plans/rl_cai_paper.sql --set name=value):
-- @var prompts = data/red_team_prompts.jsonl
-- @var prompt_column = auto
-- @var turns = all
-- @var limit = 1000000
-- @var policy = policy
-- @var judge = judge
-- @var temperatures = 0.7,1.0
-- @var max_tokens = 256
-- @var judge_max_tokens = 256
-- @var principles = rl16
-- @var few_shot = default
-- @var clamp = 0.4,0.6
-- @var samples_per_comparison = 1
-- @var audit = false
-- @var helpful_pairs = data/helpful_pairs.jsonl
-- @var helpful_ratio = 0.2
-- @var splits = train=0.9,test=0.1
-- @var seed = 42

CREATE VIEW prompts AS
  SELECT * FROM red_team_prompts('${prompts}', column => '${prompt_column}', turns => '${turns}')
  LIMIT ${limit};

CREATE VIEW candidates AS
  SELECT * FROM sample(prompts, endpoint => '${policy}', temperatures => '${temperatures}',
                       max_tokens => ${max_tokens}, seed => ${seed});

CREATE TABLE judgements AS
  SELECT * FROM judge(candidates, endpoint => '${judge}', mode => 'principle', cot => true,
                      few_shot => '${few_shot}', principles => '${principles}',
                      clamp => '${clamp}', turns => 'all', audit => ${audit},
                      samples_per_comparison => ${samples_per_comparison},
                      max_tokens => ${judge_max_tokens}, seed => ${seed});

CREATE VIEW helpful AS SELECT * FROM helpful_pairs('${helpful_pairs}');

CREATE TABLE preferences AS
  SELECT *, split_of(pair_id, ${seed}, '${splits}') AS split
  FROM blend_pairs(judgements, helpful, ratio => ${helpful_ratio}, seed => ${seed});

-- The judge's verdicts and how sure it was.
SELECT label, count(*) AS prompts, round(avg(chosen_prob), 3) AS mean_chosen_prob
FROM judgements GROUP BY label ORDER BY label;
