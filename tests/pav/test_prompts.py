"""PAV's prompt set is the trainer's: the configured synthetic task (data.synthetic_task), in the trainer's order,
and a prompt-set id that names the task (a chain collection is not taken for an arithmetic one)."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from spro_mcore.assets import TINY_BASE_CHAIN_DIR
from spro_mcore.config import load_config
from spro_mcore.data import synthetic_arithmetic, synthetic_chain
from spro_mcore.pav.prompts import load_prompt_set, prompt_set_id

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task, generate", [("arithmetic", synthetic_arithmetic.generate_split),
                                            ("chain", synthetic_chain.generate_split)])
def test_prompt_set_follows_the_synthetic_task(tmp_path, task, generate):
    cfg = load_config(ROOT / "configs" / "pav_chain_example.yaml", [f"data.synthetic_task={task}", "trainer.seed=5"])
    tok = AutoTokenizer.from_pretrained(TINY_BASE_CHAIN_DIR)
    items = load_prompt_set(cfg, tok, tmp_path, split="train", count=12)
    expected = generate("train", cfg.data.synthetic_train_size, 5)[:12]
    assert [i.input_ids for i in items] == [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in expected]


def test_prompt_set_id_names_the_task():
    base = ROOT / "configs" / "pav_chain_example.yaml"
    arith = prompt_set_id(load_config(base, ["data.synthetic_task=arithmetic"]), "train")
    chain = prompt_set_id(load_config(base, []), "train")
    assert arith == "synthetic:train:2000:seed=1234"  # unchanged: collections made before tasks had names
    assert chain == "synthetic:chain:train:2000:seed=1234"
