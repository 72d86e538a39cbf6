"""Which models this server serves: ``NAME=FAMILY:PATH`` specs, loaded once at start-up."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from scstrata_service.contract import ModelBackend, ModelCard
from scstrata_service.families import FAMILIES, load

MODELS_ENV = "SCSTRATA_MODELS"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    path: str
    settings: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=FAMILY:PATH`` (PATH = the checkpoint file or its folder)."""
        name, sep, rest = text.partition("=")
        family, sep2, path = rest.partition(":")
        if not (sep and sep2 and name and family and path):
            raise ValueError(
                f"--model {text!r}: expected NAME=FAMILY:PATH, e.g. scf=scfoundation:/models/scf"
            )
        if family not in FAMILIES:
            raise ValueError(
                f"--model {text!r}: unknown family {family!r}; known: {sorted(FAMILIES)}"
            )
        if not Path(path).exists():
            raise ValueError(f"--model {text!r}: {path} does not exist")
        return cls(name=name, family=family, path=path)


def load_config(path: Path) -> list[ModelSpec]:
    """Model specs from a YAML registry file::

    models:
      - name: scf
        family: scfoundation
        path: /models/scfoundation      # checkpoint file or folder
        settings: {version: cell}       # optional, family loader keywords
    """
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--config {path}: cannot read it ({err})") from None
    entries = config.get("models") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--config {path}: expected a non-empty 'models:' list")
    specs = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"name", "family", "path", "settings"}
        if unknown or not {"name", "family", "path"} <= set(entry):
            raise ValueError(
                f"--config {path}: models[{i}] needs name, family, path (and optional "
                f"settings); got {sorted(entry)}"
            )
        specs.append(_spec_from_entry(entry))
    return specs


class Registry:
    """Loaded backends by model name."""

    def __init__(self, backends: dict[str, ModelBackend]):
        self.backends = backends

    @classmethod
    def load(cls, specs: list[ModelSpec], **settings: object) -> Registry:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        backends = {
            s.name: load(s.family, s.name, Path(s.path), **{**settings, **s.settings})
            for s in specs
        }
        for backend in backends.values():
            backend.warm_up()  # /readyz waits for this: no first request pays a compilation
        return cls(backends)

    def get(self, name: str) -> ModelBackend:
        try:
            return self.backends[name]
        except KeyError:
            raise KeyError(
                f"model: unknown model {name!r}; this server serves {sorted(self.backends)}"
            ) from None

    def cards(self) -> list[ModelCard]:
        return [b.card for b in self.backends.values()]


def specs_to_env(specs: list[ModelSpec]) -> str:
    return json.dumps([asdict(s) for s in specs])


MODELS_ENV_EXAMPLE = '[{"name": "scf", "family": "scfoundation", "path": "/models/scf"}]'


def specs_from_env() -> list[ModelSpec]:
    """The models named in ``SCSTRATA_MODELS``: a JSON list of ``{name, family, path,
    settings}`` objects (what `scstrata serve` writes), or ``--model`` specs
    (``NAME=FAMILY:PATH``) separated by spaces."""
    raw = os.environ.get(MODELS_ENV, "").strip()
    if not raw:
        raise ValueError(
            f"no models configured: start with `scstrata serve --model NAME=FAMILY:PATH` "
            f"(or set {MODELS_ENV}, e.g. {MODELS_ENV}='{MODELS_ENV_EXAMPLE}')"
        )
    if not raw.startswith("["):
        return [ModelSpec.parse(text) for text in raw.split()]
    try:
        entries = json.loads(raw)
        specs = [_spec_from_entry(entry) for entry in entries]
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{MODELS_ENV}: expected a JSON list of {{name, family, path}} objects or "
            f"NAME=FAMILY:PATH specs, e.g. {MODELS_ENV}='{MODELS_ENV_EXAMPLE}' ({err})"
        ) from None
    if not specs:
        raise ValueError(f"{MODELS_ENV}: the list is empty; name at least one model")
    return specs


def _spec_from_entry(entry: object) -> ModelSpec:
    if not isinstance(entry, dict) or not {"name", "family", "path"} <= set(entry):
        raise ValueError(f"each entry needs name, family and path; got {entry!r}")
    spec = ModelSpec.parse(f"{entry['name']}={entry['family']}:{entry['path']}")
    return ModelSpec(spec.name, spec.family, spec.path, dict(entry.get("settings") or {}))


# The registry of this worker process. Request validation (pydantic, per request, before
# adaptive batching) needs the model cards, and runs outside the service instance.
_active: Registry | None = None


def set_active(registry: Registry) -> None:
    global _active
    _active = registry


def is_loaded() -> bool:
    return _active is not None


def active() -> Registry:
    if _active is None:
        # startup.LoadingGate answers requests before this can happen, with a 503
        raise RuntimeError("no models loaded in this worker yet")
    return _active
