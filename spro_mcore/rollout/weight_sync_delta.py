"""Delta weight sync (`rollout.weight_sync_delta`): send only the tensors that changed since the last sync,
with a manifest the receiving side checks, so a missed or partial update fails loudly instead of serving
stale weights.

Sender (`DeltaSender`, one per engine): digests every tensor of the export stream (`tensor_digest`), passes on
only those whose digest differs from what it last sent, and describes the sync in a `Manifest`: its version
(1, 2, ...), the version it builds on (`base`; None = a full sync), the digest of EVERY tensor after this sync
and the names sent. It adopts the new state only on `commit()`, after the transport succeeded, so a failed
sync is retried against the old base.

Receiver: `DeltaReceiver` (the in-memory state of a broadcast receiver) and
`weight_sync_folder_delta.verify_delta_folder`
refuse, with one line, a delta whose base is not the version held (missed update), a set of received tensors
other than the manifest's (partial update), a received tensor whose digest is not the manifest's (corrupt or
tampered), and an unchanged tensor whose held digest is not the manifest's (diverged state).

Cost: the sender hashes the whole model every sync (xxh3, about one memory copy's time): delta pays where
bytes are dear (a shared filesystem, a network broadcast) and when a step leaves tensors unchanged (frozen
layers); a full fine-tuning step changes every tensor, and the delta then sends everything plus the hashing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional

import torch
import xxhash


class DeltaError(RuntimeError):
    """The receiving side's state and a delta disagree: the update is refused, nothing is served from it."""


def tensor_digest(t: torch.Tensor) -> str:
    """xxh3-128 of dtype, shape and bytes (a dtype or shape change counts as a change). A checksum against
    lost, stale and corrupted updates, not against an adversary; xxh3 hashes at memory speed (blake2b: ~15x
    slower here, which made the sender's pass dominate the sync)."""
    t = t.detach().to("cpu").contiguous()
    h = xxhash.xxh3_128()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


@dataclass
class Manifest:
    version: int  # this sync's number, 1 for the first
    base: Optional[int]  # the version the receiver must hold to apply it; None = full sync
    digests: dict[str, str] = field(default_factory=dict)  # every tensor after this sync
    sent: list[str] = field(default_factory=list)  # the tensors this sync carries

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(int(d["version"]), None if d["base"] is None else int(d["base"]), dict(d["digests"]),
                   list(d["sent"]))


class DeltaSender:
    """The trainer's side, one per receiver (engine): which tensors to send, and the manifest of the sync."""

    def __init__(self):
        self.version = 0
        self.digests: dict[str, str] = {}
        self.pending: Optional[Manifest] = None
        self.running: dict[str, str] = {}

    @property
    def base(self) -> Optional[int]:
        """The version the next sync builds on (None: it is full)."""
        return self.version if self.digests else None

    def reset(self) -> None:
        """Forget what was sent: the next sync is full (a receiver that lost its weights)."""
        self.digests, self.pending = {}, None

    def select(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The changed tensors of the stream; once it is exhausted, `self.pending` is the sync's manifest."""
        self.pending = None
        digests: dict[str, str] = {}
        self.running = digests  # this sync's digests so far (a folder shard records those of its tensors)
        sent: list[str] = []
        for name, t in named_tensors:
            d = tensor_digest(t)
            digests[name] = d
            if self.digests.get(name) != d:
                sent.append(name)
                yield name, t
        self.pending = Manifest(self.version + 1, self.base, digests, sent)

    def manifest(self) -> Manifest:
        if self.pending is None:
            raise RuntimeError("weight sync delta: the stream was not read to the end; no manifest")
        return self.pending

    def commit(self) -> Manifest:
        """The receiver has the sync: adopt its state as the base of the next one."""
        m = self.manifest()
        self.version, self.digests, self.pending = m.version, dict(m.digests), None
        return m


def check_delta(manifest: Manifest, held_version: Optional[int], held_digests: dict[str, str],
                received: dict[str, str]) -> None:
    """Raise DeltaError unless `received` (name -> digest of what arrived) applied on the held state gives
    exactly the manifest's state."""
    if manifest.base is not None and manifest.base != held_version:
        raise DeltaError(f"weight sync delta: version {manifest.version} builds on version {manifest.base}, the "
                         f"receiver holds {held_version}: an update was missed; sync in full")
    if set(received) != set(manifest.sent):
        lost = sorted(set(manifest.sent) - set(received))
        extra = sorted(set(received) - set(manifest.sent))
        raise DeltaError(f"weight sync delta: version {manifest.version} arrived partially ({len(lost)} tensors "
                         f"missing, e.g. {lost[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})")
    for name, d in received.items():
        if manifest.digests.get(name) != d:
            raise DeltaError(f"weight sync delta: tensor {name!r} of version {manifest.version} does not match "
                             "its checksum (corrupt or altered in transit)")
    held = held_digests if manifest.base is not None else {}
    stale = [n for n in manifest.digests if n not in received and held.get(n) != manifest.digests[n]]
    if stale:
        raise DeltaError(f"weight sync delta: {len(stale)} unchanged tensors (e.g. {stale[:3]}) differ from what the "
                         f"receiver holds at version {held_version}; sync in full")


class DeltaReceiver:
    """A receiver's record of what it holds (digests per tensor and version): checks each delta before use."""

    def __init__(self):
        self.version: Optional[int] = None
        self.digests: dict[str, str] = {}

    def check(self, manifest: Manifest, received: dict[str, torch.Tensor]) -> None:
        check_delta(manifest, self.version, self.digests, {n: tensor_digest(t) for n, t in received.items()})

    def commit(self, manifest: Manifest) -> None:
        self.version, self.digests = manifest.version, dict(manifest.digests)
