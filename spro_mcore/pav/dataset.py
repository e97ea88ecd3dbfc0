"""The on-disk format of a PAV collection: Parquet shards of (prefix, Q-hat) rows plus a manifest.

    <data_dir>/manifest.json     what made it: policy (path + fingerprint), prover, splitter, seed, sampling
    <data_dir>/part-00000.parquet  one shard per batch of prompts, written atomically (temp file + rename)
    <data_dir>/stats.json        generation cost so far (rewritten after every shard)

A shard is complete once its name exists (the rename is the commit), so a collection killed at any moment
resumes by skipping the shards that exist; they are never rewritten. Every row is one step prefix of one
sampled response; step 0 is the prompt alone (its Q-hat is V(s_1)), step num_steps is the whole response
(its Q-hat is the response's own outcome, n_mc = 0: nothing to sample).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spro_mcore.errors import UserError

MANIFEST = "manifest.json"
STATS = "stats.json"

SCHEMA = pa.schema([
    ("prompt_index", pa.int64()),  # index of the prompt in the prompt set
    ("sample_index", pa.int32()),  # which of the prompt's sampled responses
    ("step", pa.int32()),  # steps completed by the prefix: 0 = prompt only .. num_steps = whole response
    ("num_steps", pa.int32()),  # steps of the whole response
    ("prompt_token_ids", pa.list_(pa.int32())),
    ("prefix_token_ids", pa.list_(pa.int32())),  # response tokens through step `step`
    ("q_hat", pa.float64()),  # Monte-Carlo Q^pi of the prefix (mean outcome of n_mc continuations)
    ("q_prover", pa.float64()),  # the prover's Q: q_hat (prover=policy) or 1 - (1 - q_hat)^K (prover=bok)
    ("n_mc", pa.int32()),  # continuations behind q_hat; 0 = exact (the response's own outcome)
    ("outcome", pa.float64()),  # reward of the whole sampled response
    ("continuation_tokens", pa.int64()),  # tokens generated for this row's estimate
    ("response_tokens", pa.int32()),  # tokens of the whole sampled response
])

# settings that must match for a collection to be continued (num_prompts may grow: more shards)
RESUME_KEYS = ("policy", "policy_fingerprint", "splitter", "seed", "n_mc", "samples_per_prompt",
               "prompts_per_batch", "temperature", "max_new_tokens", "prompt_set", "reward_fn", "prover",
               "prover_k")


def collection_id(manifest: dict) -> str:
    """The identity of a collection's rows: everything that decides them (a grown num_prompts is new data)."""
    keys = {k: manifest.get(k) for k in (*RESUME_KEYS, "num_prompts")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def policy_fingerprint(hf_dir: str | Path) -> str:
    """A cheap identity of an HF checkpoint: config.json plus the head (and size) of every weight file."""
    h = hashlib.sha256()
    root = Path(hf_dir)
    for path in [root / "config.json", *sorted(root.glob("*.safetensors"))]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(str(path.stat().st_size).encode())
            with path.open("rb") as f:
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def shard_path(data_dir: str | Path, index: int) -> Path:
    return Path(data_dir) / f"part-{index:05d}.parquet"


def completed_shards(data_dir: str | Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in Path(data_dir).glob("part-*.parquet"))


def write_shard(data_dir: str | Path, index: int, rows: list[dict]) -> Path:
    """Write one shard atomically; an existing shard is never replaced."""
    final = shard_path(data_dir, index)
    if final.exists():
        raise UserError(f"{final} exists already: shards of a collection are never rewritten")
    tmp = final.with_name(final.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def read_manifest(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a valid manifest ({e.msg}); restore it or start a new pav.data_dir") from None


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_collection(data_dir: str | Path, manifest: dict) -> dict | None:
    """Refuse (writing nothing) a folder that holds another collection; returns its manifest, if any."""
    root = Path(data_dir)
    existing = read_manifest(root)
    if existing is None:
        if completed_shards(root):
            raise UserError(f"pav.data_dir={root} holds Parquet shards but no {MANIFEST}: not a collection this "
                            f"command can continue; use another pav.data_dir")
        return None
    changed = [k for k in RESUME_KEYS if existing.get(k) != manifest.get(k)]
    if changed:
        k = changed[0]
        raise UserError(f"pav.data_dir={root} holds a collection made with {k}={existing.get(k)!r}, not "
                        f"{manifest.get(k)!r}; use another pav.data_dir to collect with new settings")
    return existing


def open_collection(data_dir: str | Path, manifest: dict) -> list[int]:
    """Start or continue the collection in `data_dir` with these settings; returns the completed shards.
    A folder made with other settings is refused (its data is left untouched)."""
    root = Path(data_dir)
    existing = check_collection(root, manifest)
    if existing is None:
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / MANIFEST, manifest)
        return []
    for stale in root.glob("part-*.parquet.tmp"):  # a shard being written when the last run died
        stale.unlink()
    if manifest.get("num_prompts") != existing.get("num_prompts"):
        write_json_atomic(root / MANIFEST, {**existing, "num_prompts": manifest["num_prompts"]})
    return completed_shards(root)


def read_collection(data_dir: str | Path) -> tuple[dict, pa.Table]:
    """The manifest and every complete shard's rows, in shard order."""
    root = Path(data_dir)
    manifest = read_manifest(root)
    if manifest is None:
        raise UserError(f"pav.data_dir={root}: no PAV collection there (no {MANIFEST}); run `spro-mcore pav collect`")
    shards = completed_shards(root)
    if not shards:
        raise UserError(f"pav.data_dir={root}: the collection has no complete shard yet; run `spro-mcore pav collect`")
    tables = [pq.read_table(shard_path(root, i), schema=SCHEMA) for i in shards]
    return manifest, pa.concat_tables(tables)


def generation_cost(table: pa.Table) -> dict[str, float]:
    """Tokens generated for the Q-hat estimates against tokens of the policy's own responses."""
    cont = sum(table.column("continuation_tokens").to_pylist())
    seen, resp = set(), 0
    for p, s, n in zip(table.column("prompt_index").to_pylist(), table.column("sample_index").to_pylist(),
                       table.column("response_tokens").to_pylist()):
        if (p, s) not in seen:
            seen.add((p, s))
            resp += n
    return {"continuation_tokens": cont, "response_tokens": resp, "responses": len(seen), "rows": table.num_rows,
            "cost_ratio": cont / resp if resp else 0.0}
