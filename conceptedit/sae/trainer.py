"""Train an SAE on a store: Adam with linear warm-up, a token budget, checkpoint and exact resume.

Why exact resume: SAE runs are long and machines are shared; a resumed run must end with the same
weights as an uninterrupted one (tested), so a checkpoint holds the SAE, Adam's moments and step
counts, the dead-latent counters, the RNG state and the number of batches consumed (the shuffled
stream is deterministic under the seed and is fast-forwarded on resume).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from conceptedit.devices import pick_device
from conceptedit.errors import ConfigError, RequestError
from conceptedit.sae.base import SAE, SAE_ARCHITECTURES
from conceptedit.sae.io import load_sae, save_sae
from conceptedit.sae.store import InMemoryStore, _BaseStore
from conceptedit.validate import check_float, check_int, check_seed, short

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "trainer_state.safetensors"


@dataclass
class TrainConfig:
    """Training hyper-parameters (Gao et al.'s recipe where it applies)."""

    token_budget: int = 2_000_000
    batch_size: int = 1024
    lr: float = 4e-4
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    seed: int = 0
    normalize: bool = True  # multiply inputs by the store's norm scale (E‖x‖² = d_in)
    b_pre_init: str = "geometric_median"  # or "mean" or "zeros"
    init_rows: int = 8192
    dead_after_tokens: int = 1_000_000
    buffer_rows: int | None = None
    checkpoint_every: int = 0  # steps; 0 = only when stopped early and at the end
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("token_budget", "batch_size", "init_rows", "dead_after_tokens", "log_every"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "checkpoint_every"):
            check_int(name, getattr(self, name), 0)
        if self.buffer_rows is not None:
            check_int("buffer_rows", self.buffer_rows, 1)
        check_seed(self.seed)
        check_float("lr", self.lr, above=0.0)
        check_float("adam_eps", self.adam_eps, above=0.0)
        for name in ("beta1", "beta2"):
            if not 0.0 <= check_float(name, getattr(self, name)) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.batch_size <= 0 or self.token_budget < self.batch_size:
            raise ConfigError(
                f"need batch_size > 0 and token_budget >= batch_size, got {self.batch_size}, {self.token_budget}"
            )
        if self.b_pre_init not in ("geometric_median", "mean", "zeros"):
            raise ConfigError(f"b_pre_init must be geometric_median, mean or zeros, got {self.b_pre_init!r}")

    @property
    def total_steps(self) -> int:
        return self.token_budget // self.batch_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"training options must be a mapping, got {type(data).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid: {sorted(valid)}")
        return cls(**data)


def _adam(sae: SAE, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam; the fused kernel where this torch build has it for the device (same maths, fewer passes)."""
    kw = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.adam_eps}
    try:
        opt = torch.optim.Adam(sae.parameters(), fused=True, **kw)
        return opt
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(sae.parameters(), **kw)


class SAETrainer:
    """Owns the optimisation loop; ``train()`` may stop early (``max_steps``) and resume later."""

    def __init__(
        self,
        sae: SAE,
        store: _BaseStore | torch.Tensor,
        config: TrainConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.store = InMemoryStore(store) if isinstance(store, torch.Tensor) else store
        if self.store.d_in != sae.d_in:
            raise ConfigError(f"store rows have d={self.store.d_in} but the SAE expects d_in={sae.d_in}")
        self.config = config or TrainConfig()
        self.device = pick_device(device)
        self.sae = sae.to(self.device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.step = 0
        self.since_fired = torch.zeros(sae.width, dtype=torch.long, device=self.device)
        self.history: list[dict[str, float]] = []
        self.optimizer = _adam(self.sae, self.config)
        self._initialised = False

    # -- setup ----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Set the input scale and b_pre (and archetypes) from a data sample; done once per run."""
        if self._initialised:
            return
        cfg = self.config
        torch.manual_seed(cfg.seed)
        if cfg.normalize:
            self.sae.input_scale.fill_(self.store.norm_scale)
        sample = self.store.sample(cfg.init_rows, seed=cfg.seed + 7).to(self.device)
        if cfg.b_pre_init == "geometric_median":
            self.sae.init_from_data(sample)
        elif cfg.b_pre_init == "mean":
            with torch.no_grad():
                self.sae.b_pre.copy_(self.sae._scale(sample).mean(0))
        meta = self.store.meta
        self.sae.source = {"model": meta.get("model"), "module": meta.get("module")}
        self._initialised = True

    def _lr(self) -> float:
        return self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup_steps))

    # -- loop -------------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None) -> SAE:
        """Train until the token budget is spent (or ``max_steps`` more steps, then checkpoint)."""
        cfg = self.config
        if not self._initialised:
            self.prepare()
        total = cfg.total_steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        stream = self.store.batches(cfg.batch_size, seed=cfg.seed, buffer_rows=cfg.buffer_rows)
        for _ in range(self.step):  # fast-forward the deterministic stream on resume
            next(stream)
        self.sae.train()
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=f"sae {self.sae.architecture}",
            unit="step",
            disable=not cfg.progress,
        )
        stats: dict[str, float] = {}
        while self.step < stop:
            x = next(stream).to(self.device)
            stats = self.train_step(x)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == stop:
                self.history.append(dict(stats))
                bar.set_postfix(fvu=f"{stats['fvu']:.4f}", l0=f"{stats['l0']:.1f}", dead=f"{stats['dead']:.3f}")
            if self.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(self.checkpoint_dir)
        bar.close()
        self.sae.eval()
        if self.checkpoint_dir:
            self.save_checkpoint(self.checkpoint_dir)
        return self.sae

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimisation step on batch ``x`` (raw activations); returns its statistics."""
        dead = self.since_fired >= self.config.dead_after_tokens
        loss, stats, fired = self.sae.training_loss(x, dead)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.sae.before_step()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.optimizer.step()
        self.sae.after_step()
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        self.step += 1
        stats["dead"] = float(dead.float().mean())
        stats["step"] = self.step
        return stats

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """SAE (safetensors + cfg.json), Adam moments, counters and RNG, written atomically per file."""
        path = Path(path)
        save_sae(self.sae, path)
        names = {id(p): n for n, p in self.sae.named_parameters()}
        tensors: dict[str, torch.Tensor] = {
            "since_fired": self.since_fired.cpu(),
            "rng": torch.get_rng_state(),
        }
        steps: dict[str, float] = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if not state:
                    continue
                name = names[id(p)]
                tensors[f"adam.{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
                tensors[f"adam.{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
                steps[name] = float(state["step"])
        tmp = path / (TENSORS_FILE + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path / TENSORS_FILE)
        state_json = {
            "step": self.step,
            "config": asdict(self.config),
            "adam_steps": steps,
            "history": self.history,
            "initialised": self._initialised,
        }
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state_json, indent=1))
        tmp.replace(path / STATE_FILE)
        return path

    @classmethod
    def resume(
        cls, path: str | Path, store: _BaseStore | torch.Tensor, *, device: str | torch.device | None = None
    ) -> SAETrainer:
        """Rebuild a trainer from :meth:`save_checkpoint`; ``train()`` then continues where it stopped."""
        path = Path(path)
        state = _read_state(path)
        sae = load_sae(path, device="cpu")
        try:
            config = TrainConfig.from_dict(state["config"])
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path / STATE_FILE}: config: {exc}") from None
        if state["step"] > config.total_steps:
            raise ConfigError(
                f"{path / STATE_FILE}: step {state['step']} is past the run's {config.total_steps} steps "
                "(corrupted checkpoint?)"
            )
        trainer = cls(sae, store, config, checkpoint_dir=path, device=device)
        if not (path / TENSORS_FILE).is_file():
            raise RequestError(f"{path} holds no {TENSORS_FILE}; the checkpoint is incomplete")
        tensors = load_file(str(path / TENSORS_FILE))
        trainer.step = state["step"]
        trainer.history = list(state["history"])
        trainer._initialised = bool(state["initialised"])
        trainer.since_fired = tensors["since_fired"].to(trainer.device)
        torch.set_rng_state(tensors["rng"])
        for name, p in trainer.sae.named_parameters():
            if name in state["adam_steps"]:
                trainer.optimizer.state[p] = {
                    "step": torch.tensor(state["adam_steps"][name]),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].to(trainer.device),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(trainer.device),
                }
        return trainer


def _read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json``, checked: a corrupted or absurd file is one line, not a hang or garbage."""
    file = path / STATE_FILE
    if not file.is_file():
        raise RequestError(f"{path} holds no trainer checkpoint ({STATE_FILE} missing)")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{file} is not valid JSON ({' '.join(str(exc).split())[:120]}); the checkpoint is corrupted"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"{file} must be a JSON object; the checkpoint is corrupted")
    missing = sorted({"step", "config", "adam_steps", "history", "initialised"} - set(state))
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)}; the checkpoint is corrupted")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"{file}: step must be a non-negative integer, got {short(step)}")
    if not isinstance(state["history"], list) or not isinstance(state["adam_steps"], dict):
        raise ConfigError(f"{file}: history must be a list and adam_steps a mapping")
    return state


def train_sae(
    data: _BaseStore | torch.Tensor,
    arch: str = "topk",
    width: int = 4096,
    *,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    **arch_kw: Any,
) -> SAE:
    """One call: build ``arch`` at ``width`` for the data's d_in and train it under ``config``."""
    from conceptedit.sae import create_sae

    if arch not in SAE_ARCHITECTURES:
        raise ConfigError(f"unknown SAE architecture {arch!r}; choose one of {sorted(SAE_ARCHITECTURES)}")
    store = InMemoryStore(data) if isinstance(data, torch.Tensor) else data
    cfg = config or TrainConfig()
    arch_kw.setdefault("seed", cfg.seed)
    sae = create_sae(arch, store.d_in, width, **arch_kw)
    return SAETrainer(sae, store, cfg, checkpoint_dir=checkpoint_dir, device=device).train()
