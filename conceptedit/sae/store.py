"""Activation stores: keep captured activations on disk in shards and read them back shuffled.

Why on disk: a few thousand prompts x 77 tokens x 768 floats already exceeds what a laptop wants in
memory, and UNet blocks give one row per spatial position. Shards are safetensors files
(``activations`` ``[n, d]`` plus int32 ``prompt_id``/``position``/``token_id`` records so plugins
can map rows back to prompts) with an ``index.json`` holding the shard list, the mean and the scalar
norm scale (``sqrt(d / E‖x‖²)``, SAELens' convention). Reading shuffles across shards through a
bounded buffer fed round-robin from several shards (open shards hold no rows, each read is one
``read_rows`` slice), so memory stays at about ``buffer_rows + read_rows`` rows (2.5x the buffer
briefly while it is shuffled) whatever the store size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conceptedit.errors import ConfigError, RequestError
from conceptedit.validate import check_int

INDEX = "index.json"
RECORD_KEYS = ("prompt_id", "position", "token_id")


class _Stats:
    """Streaming float64 sums for the mean and the mean squared norm."""

    def __init__(self, d: int) -> None:
        self.n, self.sum, self.sq = 0, torch.zeros(d, dtype=torch.float64), 0.0

    def add(self, x: torch.Tensor) -> None:
        x64 = x.to(torch.float64)
        self.n += x.shape[0]
        self.sum += x64.sum(0)
        self.sq += float(x64.pow(2).sum())

    def mean(self) -> torch.Tensor:
        return (self.sum / max(1, self.n)).to(torch.float32)

    def norm_scale(self, d: int) -> float:
        msq = self.sq / max(1, self.n)
        return math.sqrt(d / msq) if msq > 0 else 1.0


class _BaseStore:
    """What the trainer and metrics need from a store (in memory or on disk)."""

    d_in: int
    n_rows: int
    mean: torch.Tensor
    norm_scale: float
    meta: dict[str, Any]

    #: parts (shards) read round-robin while shuffling, so one buffer mixes rows from many shards
    open_parts: int = 8

    def _part_chunks(self, part: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _chunks(self, order: list[int] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential over parts (``order=None``), else round-robin over a window of open parts."""
        if order is None:
            for p in range(self._n_parts()):
                yield from self._part_chunks(p)
            return
        pending = list(order)
        window = [self._part_chunks(p) for p in pending[: self.open_parts]]
        pending = pending[self.open_parts :]
        while window:
            for it in list(window):
                chunk = next(it, None)
                if chunk is None:
                    window.remove(it)
                    if pending:
                        window.append(self._part_chunks(pending.pop(0)))
                else:
                    yield chunk

    def iter_rows(self, batch_size: int = 4096, max_rows: int | None = None) -> Iterator[torch.Tensor]:
        """Rows in storage order (no shuffle), for evaluation."""
        seen = 0
        for x, _ in self._chunks(None):
            for s in range(0, x.shape[0], batch_size):
                if max_rows is not None and seen >= max_rows:
                    return
                part = x[s : s + batch_size]
                if max_rows is not None:
                    part = part[: max_rows - seen]
                seen += part.shape[0]
                yield part

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epochs: int | None = None,
        buffer_rows: int | None = None,
        with_rows: bool = False,
    ) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches, deterministic under ``seed``; ``epochs=None`` repeats forever.

        A buffer of at most ``buffer_rows`` rows (default: 32 batches, at least 8192 rows) is filled
        from shards in a random order, shuffled, and its first half emitted; rows left over at the
        end of an epoch carry into the next, so no row is ever dropped. ``with_rows`` also yields
        each row's global index (to look up its prompt/position record).
        """
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        cap = max(buffer_rows or max(32 * batch_size, 8192), 2 * batch_size)
        buf: list[tuple[torch.Tensor, torch.Tensor]] = []
        held, epoch = 0, 0

        def shuffle_out(gen: torch.Generator, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
            """Shuffle the buffer, return the rows to emit, keep the rest (copied, so the emitted
            block is freed once consumed)."""
            nonlocal buf, held
            perm = torch.randperm(held, generator=gen)
            bx, bi = torch.cat([b[0] for b in buf]), torch.cat([b[1] for b in buf])
            buf = []
            bx, bi = bx[perm], bi[perm]
            emit = int(held * fraction) // batch_size * batch_size
            buf = [(bx[emit:].clone(), bi[emit:].clone())] if emit < held else []
            held -= emit
            return bx[:emit], bi[:emit]

        def emit_batches(bx: torch.Tensor, bi: torch.Tensor) -> Iterator:
            for s in range(0, bx.shape[0], batch_size):
                yield ((bx[s : s + batch_size], bi[s : s + batch_size]) if with_rows else bx[s : s + batch_size])

        while epochs is None or epoch < epochs:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(self._n_parts(), generator=gen).tolist()
            for x, rows in self._chunks(order):
                buf.append((x, rows))
                held += x.shape[0]
                if held >= cap:
                    yield from emit_batches(*shuffle_out(gen, 0.5))
            epoch += 1
            if held >= batch_size:  # end of epoch: emit all full batches, carry the remainder
                yield from emit_batches(*shuffle_out(gen, 1.0))
        if held and epochs is not None:
            bx, bi = torch.cat([b[0] for b in buf]), torch.cat([b[1] for b in buf])
            yield (bx, bi) if with_rows else bx

    def _n_parts(self) -> int:
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` rows drawn from the shuffled stream (for initialisation)."""
        out, got = [], 0
        for x in self.batches(min(n, 4096), seed=seed, epochs=1):
            out.append(x)
            got += x.shape[0]
            if got >= n:
                break
        return torch.cat(out)[:n]

    def records(self) -> dict[str, torch.Tensor]:
        """Per-row ``prompt_id``/``position``/``token_id`` (those that were recorded), in row order."""
        raise NotImplementedError


class InMemoryStore(_BaseStore):
    """The small-data path: a tensor (plus optional records) behind the store interface."""

    def __init__(
        self,
        x: torch.Tensor,
        records: dict[str, torch.Tensor] | None = None,
        meta: dict[str, Any] | None = None,
        part_rows: int = 65536,
    ) -> None:
        if x.ndim != 2:
            raise ConfigError(f"activations must be [rows, d], got shape {tuple(x.shape)}")
        self.x = x.detach().to(torch.float32).contiguous()
        self.n_rows, self.d_in = self.x.shape
        self._records = records or {}
        self.meta = dict(meta or {})
        stats = _Stats(self.d_in)
        stats.add(self.x)
        self.mean, self.norm_scale = stats.mean(), stats.norm_scale(self.d_in)
        self.part_rows, self.read_rows = part_rows, 8192

    def _n_parts(self) -> int:
        return max(1, math.ceil(self.n_rows / self.part_rows))

    def _part_chunks(self, part: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        end = min(self.n_rows, (part + 1) * self.part_rows)
        for s in range(part * self.part_rows, end, self.read_rows):
            e = min(end, s + self.read_rows)
            yield self.x[s:e], torch.arange(s, e)

    def records(self) -> dict[str, torch.Tensor]:
        return dict(self._records)

    def save(self, out: str | Path, shard_rows: int = 65536) -> ActivationStore:
        """Write this data as an on-disk store."""
        writer = ShardWriter(out, self.d_in, shard_rows=shard_rows, meta=self.meta)
        writer.add(self.x, **{k: v for k, v in self._records.items() if k in RECORD_KEYS})
        return writer.close()


class ActivationStore(_BaseStore):
    """An on-disk store (folder with ``index.json`` and ``shard-XXXXX.safetensors``)."""

    def __init__(self, path: str | Path, read_rows: int = 8192) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX
        if not index_file.is_file():
            raise RequestError(f"{self.path} is not an activation store (no {INDEX}); create one with collect")
        index = json.loads(index_file.read_text())
        self.shards: list[dict[str, Any]] = index["shards"]
        self.d_in = int(index["d_in"])
        self.n_rows = int(sum(s["rows"] for s in self.shards))
        self.mean = torch.tensor(index["mean"], dtype=torch.float32)
        self.norm_scale = float(index["norm_scale"])
        self.meta = dict(index.get("meta", {}))
        self.record_keys = list(index.get("records", []))
        self.read_rows = read_rows
        self._starts = [0]
        for s in self.shards:
            self._starts.append(self._starts[-1] + int(s["rows"]))

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        return cls(path)

    def _n_parts(self) -> int:
        return len(self.shards)

    def _part_chunks(self, part: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Read a shard piecewise (``read_rows`` at a time) so a big shard never loads whole."""
        info = self.shards[part]
        with safe_open(str(self.path / info["file"]), framework="pt") as f:
            sl = f.get_slice("activations")
            for s in range(0, int(info["rows"]), self.read_rows):
                e = min(int(info["rows"]), s + self.read_rows)
                yield sl[s:e].to(torch.float32), torch.arange(self._starts[part] + s, self._starts[part] + e)

    def records(self) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.record_keys}
        for info in self.shards:
            with safe_open(str(self.path / info["file"]), framework="pt") as f:
                for k in self.record_keys:
                    out[k].append(f.get_tensor(k))
        return {k: torch.cat(v) for k, v in out.items() if v}


class ShardWriter:
    """Append activation rows (and their records); writes a shard every ``shard_rows`` rows."""

    def __init__(
        self,
        out: str | Path,
        d_in: int,
        *,
        shard_rows: int = 65536,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        shard_rows = check_int("shard_rows", shard_rows, 1)  # 0 would write empty shards forever
        if (self.out / INDEX).exists():
            raise RequestError(f"{self.out} already holds an activation store; choose an empty folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.d_in, self.shard_rows, self.dtype = d_in, shard_rows, dtype
        self.meta = dict(meta or {})
        self.stats = _Stats(d_in)
        self.shards: list[dict[str, Any]] = []
        self._buf: list[torch.Tensor] = []
        self._rec: dict[str, list[torch.Tensor]] = {}
        self._held = 0

    def add(self, x: torch.Tensor, **records: torch.Tensor | None) -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ConfigError(f"expected rows of width {self.d_in}, got shape {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float32)
        self.stats.add(x)
        self._buf.append(x)
        for k, v in records.items():
            if v is not None:
                self._rec.setdefault(k, []).append(v.detach().to("cpu", torch.int32).reshape(-1))
        self._held += x.shape[0]
        while self._held >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        x = torch.cat(self._buf)
        recs = {k: torch.cat(v) for k, v in self._rec.items()}
        tensors = {"activations": x[:n].to(self.dtype).contiguous()}
        tensors.update({k: v[:n].contiguous() for k, v in recs.items()})
        name = f"shard-{len(self.shards):05d}.safetensors"
        save_file(tensors, str(self.out / name))
        self.shards.append({"file": name, "rows": n})
        self._buf = [x[n:]] if x.shape[0] > n else []
        self._rec = {k: [v[n:]] for k, v in recs.items()}
        self._held -= n

    def close(self) -> ActivationStore:
        if self._held:
            self._flush(self._held)
        index = {
            "format": "conceptedit.activations",
            "version": 1,
            "d_in": self.d_in,
            "dtype": str(self.dtype).removeprefix("torch."),
            "rows": self.stats.n,
            "mean": self.stats.mean().tolist(),
            "norm_scale": self.stats.norm_scale(self.d_in),
            "records": sorted(self._rec),
            "shards": self.shards,
            "meta": self.meta,
        }
        (self.out / INDEX).write_text(json.dumps(index, indent=1))
        return ActivationStore(self.out)


class _MemoryWriter:
    """Same interface as :class:`ShardWriter`, kept in memory (``out=None``)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta, self._x, self._rec = meta, [], {}

    def add(self, x: torch.Tensor, **records: torch.Tensor | None) -> None:
        self._x.append(x.detach().to("cpu", torch.float32))
        for k, v in records.items():
            if v is not None:
                self._rec.setdefault(k, []).append(v.detach().to("cpu", torch.int32).reshape(-1))

    def close(self) -> InMemoryStore:
        if not self._x:
            raise RequestError("no activations were collected (every position was filtered out?)")
        return InMemoryStore(torch.cat(self._x), {k: torch.cat(v) for k, v in self._rec.items()}, self.meta)
