"""The evaluation config (YAML), read strictly: an unknown key is an error naming the valid ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conceptedit.config import config_from_dict, config_to_dict
from conceptedit.errors import ConceptEditError, ConfigError
from conceptedit.toolkit import payload_hash
from conceptedit.validate import check_float, check_int, read_text, short

BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class EditSpec:
    """An edit to evaluate: an existing artifact folder, or a plugin to fit (cached by config hash)."""

    name: str
    path: str | None = None
    plugin: str | None = None
    concepts: list[str] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("every edit needs a name")
        if (self.path is None) == (self.plugin is None):
            raise ConfigError(f"edit {self.name!r}: give exactly one of 'path' (artifact folder) or 'plugin'")
        if self.plugin is not None and not self.concepts:
            raise ConfigError(f"edit {self.name!r}: a plugin to fit needs 'concepts'")

    def fit_key(self, model: str) -> str:
        payload = {
            "model": model,
            "plugin": self.plugin,
            "concepts": self.concepts,
            "preserve": self.preserve,
            "config": self.config,
        }
        return payload_hash(payload)


@dataclass
class PromptSetSpec:
    """A prompt set: a CSV (``prompt, evaluation_seed, case_number`` + optional label columns) or a
    built-in generator (``shapes-erasure``: rows made for each edit's target concepts)."""

    name: str
    csv: str | None = None
    builtin: str | None = None
    per_role: int = 8
    limit: int | None = None
    attack: bool = False  # rows are attack prompts: the attack-success metric reads them

    def __post_init__(self) -> None:
        if (self.csv is None) == (self.builtin is None):
            raise ConfigError(f"prompt set {self.name!r}: give exactly one of 'csv' or 'builtin'")
        check_int(f"prompt set {self.name!r}: per_role", self.per_role, 1)
        if self.limit is not None:
            check_int(f"prompt set {self.name!r}: limit", self.limit, 1)


@dataclass
class AttackSpec:
    """An attack plugin run against edits (default: every edit): its prompts are found per edit (white-box)
    or once on the unedited model (black-box), cached, generated on the edit and on the base model with
    the same seeds, and read by the label metrics as ``attack_success_rate``."""

    name: str
    plugin: str
    config: dict[str, Any] = field(default_factory=dict)
    edits: list[str] = field(default_factory=list)  # edit names to attack; empty: all
    images: int = 8  # images of the concept made by the unedited model, for attacks that fit images
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ConfigError(f"every attack needs a plain name, got {short(self.name)}")
        if not isinstance(self.plugin, str) or not self.plugin.strip():
            raise ConfigError(f"attack {self.name!r}: 'plugin' must name an attack plugin")
        if not isinstance(self.edits, list) or not all(isinstance(e, str) for e in self.edits):
            raise ConfigError(f"attack {self.name!r}: 'edits' must be a list of edit names")
        check_int(f"attack {self.name!r}: images", self.images, 1)
        check_int(f"attack {self.name!r}: seed", self.seed, 0)


@dataclass
class ImageEditSpec:
    """An image-edit benchmark (``conceptedit.eval.image_edits``): an edit plugin on ``n`` rendered cases
    of a case set (built in: ``shapes``), with baselines on the same backbone."""

    name: str
    plugin: str
    config: dict[str, Any] = field(default_factory=dict)
    cases: str = "shapes"
    n: int = 24
    seed: int = 0
    families: list[str] = field(default_factory=list)  # edited families, in turn; empty: the case set's
    baselines: list[str] = field(default_factory=list)  # swap, direction (plugins with colan's backbone)
    direction_strength: float = 1.0
    instruction: str = "edit"  # what edit_image gets: "SRC -> TGT" (edit) or the target prompt
    chunk: int = 40  # images per batched inversion

    def __post_init__(self) -> None:
        from conceptedit.eval.image_edits import BASELINES, INSTRUCTIONS

        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ConfigError(f"every image edit needs a plain name, got {short(self.name)}")
        if not isinstance(self.plugin, str) or not self.plugin.strip():
            raise ConfigError(f"image edit {self.name!r}: 'plugin' must name an edit plugin")
        if not isinstance(self.cases, str):
            raise ConfigError(f"image edit {self.name!r}: 'cases' must name a case set, got {short(self.cases)}")
        check_int(f"image edit {self.name!r}: n", self.n, 1)
        check_int(f"image edit {self.name!r}: seed", self.seed, 0)
        check_int(f"image edit {self.name!r}: chunk", self.chunk, 1)
        check_float(f"image edit {self.name!r}: direction_strength", self.direction_strength)
        for key, valid in (("baselines", BASELINES), ("families", None)):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"image edit {self.name!r}: '{key}' must be a list of names, got {short(value)}")
            bad = [v for v in value if valid is not None and v not in valid]
            if bad:
                raise ConfigError(f"image edit {self.name!r}: unknown baseline(s) {bad}; valid: {list(valid)}")
        if self.instruction not in INSTRUCTIONS:
            raise ConfigError(
                f"image edit {self.name!r}: instruction must be one of {', '.join(INSTRUCTIONS)}, "
                f"got {short(self.instruction)}"
            )


@dataclass
class GenerationSpec:
    num_inference_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    batch_size: int = 16
    # honour a CSV row's own evaluation_guidance / sd_image_width / sd_image_height (I2P protocol) over the
    # values above; rows without them use the values above
    per_row_settings: bool = True

    def __post_init__(self) -> None:
        for key in ("num_inference_steps", "height", "width"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key), 1)
        if self.guidance_scale is not None:
            check_float("guidance_scale", self.guidance_scale)
        check_int("batch_size", self.batch_size, 1)

    def settings(self) -> dict[str, Any]:
        keys = ("num_inference_steps", "guidance_scale", "height", "width")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    name: str
    models: list[str]
    edits: list[EditSpec]
    prompt_sets: list[PromptSetSpec]
    metrics: list[MetricSpec]
    seeds_per_prompt: int = 1
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    output: str | None = None  # default: runs/eval/<name>
    cache_dir: str | None = None  # default: <output>/../cache (shared by runs in the same folder)
    device: str | None = None
    grid_cases: int = 6  # base-vs-edited pairs shown per edit in the report
    attacks: list[AttackSpec] = field(default_factory=list)  # attack plugins x edits (attack success rate)
    image_edits: list[ImageEditSpec] = field(default_factory=list)  # edit plugins on rendered images

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if not isinstance(self.models, list) or not all(isinstance(m, str) and m.strip() for m in self.models):
            raise ConfigError(f"'models' must be a list of model names or paths, got {short(self.models)}")
        if not self.models:
            raise ConfigError("config needs at least one model under 'models'")
        check_int("seeds_per_prompt", self.seeds_per_prompt, 1)
        check_int("grid_cases", self.grid_cases, 0)
        for key in ("output", "cache_dir", "device"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ConfigError(f"'{key}' must be text, got {short(getattr(self, key))}")
        if self.device is not None:
            from conceptedit.devices import check_device

            check_device(self.device)
        if not self.prompt_sets and not self.image_edits:
            raise ConfigError("config needs at least one prompt set under 'prompt_sets' (or an 'image_edits' entry)")
        edit_names = {e.name for e in self.edits}
        for attack in self.attacks:
            unknown = [e for e in attack.edits if e not in edit_names]
            if unknown:
                known = sorted(edit_names)
                raise ConfigError(f"attack {attack.name!r} names unknown edit(s) {unknown}; edits: {known}")
        kinds = (("edit", self.edits), ("prompt set", self.prompt_sets), ("attack", self.attacks))
        for kind, items in (*kinds, ("image edit", self.image_edits)):
            names = [i.name for i in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind} names must be unique, got {names}")

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/eval/{self.name}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.output_dir.parent / "cache"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def check_run_name(name: Any) -> str:
    """A run name is one folder name under the runs folder: no separators, no '..', nothing hidden."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"'name' must be a non-empty text, got {short(name)}")
    if "/" in name or "\\" in name or name.startswith(".") or len(name) > 100 or name != name.strip():
        raise ConfigError(
            f"'name' {short(name, 60)} must be a plain folder name (no '/', '\\', leading '.', at most 100 "
            "characters): the run is written to runs/eval/<name>; use 'output' for another folder"
        )
    return name


def _check_edit(spec: EditSpec, where: str) -> None:
    """A plugin to fit: its config and request are checked now, not after the models are loaded."""
    if spec.plugin is None:
        return
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    try:
        get_plugin(spec.plugin)(spec.config)
        Request(targets=spec.concepts, preserve=spec.preserve)
    except ConceptEditError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_attack(spec: AttackSpec, where: str) -> None:
    """The attack's plugin exists, is of kind ``attack`` and accepts its config, before any model loads."""
    from conceptedit.registry import get_plugin

    try:
        cls = get_plugin(spec.plugin)
        if cls.kind != "attack":
            raise ConfigError(f"plugin {spec.plugin!r} is of kind {cls.kind!r}, not an attack")
        cls(spec.config)
    except ConceptEditError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_image_edit(spec: ImageEditSpec, where: str) -> None:
    """The plugin exists, is of kind ``edit`` and accepts its config; baselines need colan's backbone;
    the case set and its families exist — all before any model loads."""
    from conceptedit.eval.image_edits import case_set, has_backbone
    from conceptedit.registry import get_plugin

    try:
        cls = get_plugin(spec.plugin)
        if cls.kind != "edit":
            raise ConfigError(f"plugin {spec.plugin!r} is of kind {cls.kind!r}, not an image edit")
        plugin = cls(spec.config)
        if spec.baselines and not has_backbone(plugin):
            raise ConfigError(
                f"baselines {spec.baselines} need a plugin with colan's backbone; {spec.plugin!r} has none"
            )
        known = case_set(spec.cases).families
        bad = [f for f in spec.families if f not in known]
        if bad:
            raise ConfigError(f"unknown famil(ies) {bad} for case set {spec.cases!r}; valid: {list(known)}")
    except ConceptEditError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _items(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {short(value)}")
    return value


def _section(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {short(value)}")
    try:
        return config_from_dict(cls, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: dict[str, Any], where: str = "config") -> EvalConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    data = dict(data)
    models = data.get("models", data.pop("model", None))
    if isinstance(models, str):
        models = [models]
    data["models"] = models or []
    data["edits"] = [
        _section(EditSpec, e, f"{where}: edits[{i}]")
        for i, e in enumerate(_items(data.get("edits"), f"{where}: edits"))
    ]
    for i, spec in enumerate(data["edits"]):
        _check_edit(spec, f"{where}: edits[{i}]")
    data["attacks"] = [
        _section(AttackSpec, a, f"{where}: attacks[{i}]")
        for i, a in enumerate(_items(data.get("attacks"), f"{where}: attacks"))
    ]
    for i, spec in enumerate(data["attacks"]):
        _check_attack(spec, f"{where}: attacks[{i}]")
    data["image_edits"] = [
        _section(ImageEditSpec, a, f"{where}: image_edits[{i}]")
        for i, a in enumerate(_items(data.get("image_edits"), f"{where}: image_edits"))
    ]
    for i, spec in enumerate(data["image_edits"]):
        _check_image_edit(spec, f"{where}: image_edits[{i}]")
    data["prompt_sets"] = [
        _section(PromptSetSpec, p, f"{where}: prompt_sets[{i}]")
        for i, p in enumerate(_items(data.get("prompt_sets"), f"{where}: prompt_sets"))
    ]
    metrics = []
    for i, m in enumerate(_items(data.get("metrics"), f"{where}: metrics")):
        metrics.append(MetricSpec(name=m) if isinstance(m, str) else _section(MetricSpec, m, f"{where}: metrics[{i}]"))
    data["metrics"] = metrics
    if "generation" in data:
        data["generation"] = _section(GenerationSpec, data["generation"], f"{where}: generation")
    known = set(EvalConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    try:
        return EvalConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml"))


def load_config(source: str | Path) -> EvalConfig:
    """Read a YAML file, or a built-in config by name (``shapes-quick``)."""
    path = Path(source)
    if not path.is_file():
        builtin = BUILTIN_CONFIG_DIR / f"{source}.yaml"
        if not builtin.is_file():
            raise ConfigError(
                f"config {source!r} is neither a file nor a built-in config ({', '.join(builtin_configs())})"
            )
        path = builtin
    return parse_config(read_yaml(read_text(path, "config"), str(path)), str(path))


#: a config expands to at most this many values once aliases are followed (a real one has hundreds)
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], visiting: set[int], where: str) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in visiting:
        raise ConfigError(f"{where}: a YAML alias refers to itself")
    visiting.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    size = 1
    for child in children:
        size += _expanded_size(child, memo, visiting, where)
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: the YAML expands to more than {MAX_YAML_NODES:,} values through aliases (&anchor/*alias); "
                "write the values out"
            )
    visiting.discard(key)
    memo[key] = size
    return size


def read_yaml(text: str, where: str) -> Any:
    """Safe YAML (no tags that build objects) with a budget: a "billion laughs" document (aliases of
    aliases) or absurd nesting fails at once with one line, before anything expands it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()
