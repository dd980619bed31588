"""Registry: models and catalogs stored by content hash, and which of them are active.

Everything a logged decision names by version can be loaded back from here, so any decision can
be replayed with the exact model and catalog it used. Switching versions is one atomic write of
`active.json`; a running server notices and reloads (see service.server). Never overwrites a
stored version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catboost import CatBoostClassifier

from service.catalog import Catalog, catalog_version, parse_catalog
from service.errors import ModelError
from service.ranker import Models


@dataclass(frozen=True)
class Active:
    model: str
    catalog: str
    #: why this pair became active (promotion gate, override, rollback), when it was recorded
    note: Mapping[str, Any] | None = None


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.catalogs_dir = root / "catalogs"
        self.active_path = root / "active.json"
        #: one JSON line per activation, oldest first: what was active before, and why
        self.activations_path = root / "activations.jsonl"

    # -- storing ------------------------------------------------------------------------------
    def save_models(
        self,
        ranker: CatBoostClassifier,
        organic: CatBoostClassifier,
        card: dict[str, Any],
        files: Mapping[str, bytes] | None = None,
    ) -> str:
        """Store both models, their card and any `files` (charts); returns the version (hash
        of the model bytes)."""
        with tempfile.TemporaryDirectory() as tmp:
            r, o = Path(tmp) / "ranker.cbm", Path(tmp) / "organic.cbm"
            ranker.save_model(str(r))
            organic.save_model(str(o))
            rb, ob = r.read_bytes(), o.read_bytes()
        version = (
            "mdl-"
            + hashlib.sha256(hashlib.sha256(rb).digest() + hashlib.sha256(ob).digest()).hexdigest()[
                :16
            ]
        )
        target = self.models_dir / version
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=self._ensure(self.models_dir)))
            (staging / "ranker.cbm").write_bytes(rb)
            (staging / "organic.cbm").write_bytes(ob)
            (staging / "card.json").write_text(
                json.dumps({**card, "version": version}, indent=2, sort_keys=True, default=str)
            )
            for name, data in (files or {}).items():
                if "/" in name or name in ("ranker.cbm", "organic.cbm", "card.json"):
                    raise ValueError(f"files: {name!r} is not a plain, free file name")
                (staging / name).write_bytes(data)
            _fsync_dir_tree(staging)
            os.replace(staging, target)
        return version

    def save_catalog(self, source: bytes) -> str:
        version = catalog_version(source)
        path = self._ensure(self.catalogs_dir) / f"{version}.yaml"
        if not path.exists():
            _atomic_write(path, source)
        return version

    # -- loading ------------------------------------------------------------------------------
    def load_models(self, version: str) -> Models:
        d = self.models_dir / version
        if not d.is_dir():
            raise ModelError(f"model {version} is not in the registry ({d})")
        try:
            ranker, organic = CatBoostClassifier(), CatBoostClassifier()
            ranker.load_model(str(d / "ranker.cbm"))
            organic.load_model(str(d / "organic.cbm"))
            card = json.loads((d / "card.json").read_text())
        except Exception as e:
            raise ModelError(f"model {version} cannot be loaded: {e}") from None
        return Models(version, ranker, organic, card)

    def load_catalog(self, version: str) -> Catalog:
        path = self.catalogs_dir / f"{version}.yaml"
        if not path.exists():
            raise ModelError(f"catalog {version} is not in the registry ({path})")
        return parse_catalog(path.read_bytes(), str(path))

    # -- the active pair ----------------------------------------------------------------------
    def active(self) -> Active:
        try:
            raw = json.loads(self.active_path.read_text())
            return Active(raw["model"], raw["catalog"], raw.get("note"))
        except FileNotFoundError:
            raise ModelError(
                f"no active model: {self.active_path} does not exist (run `offerdesk train`)"
            ) from None
        except (ValueError, KeyError) as e:
            raise ModelError(f"{self.active_path} is unreadable: {e}") from None

    def activate(
        self,
        *,
        model: str | None = None,
        catalog: str | None = None,
        note: Mapping[str, Any] | None = None,
    ) -> Active:
        """Make a stored model and/or catalog the active one (checked loadable first).

        `note` says why (the promotion's gate, an override, a rollback); it is kept in
        active.json — the service copies it into the audit log's deployment record — and in
        the activation history that `previous()` reads.
        """
        try:
            current: Active | None = self.active()
        except ModelError:
            current = None
        new = Active(
            model or (current.model if current else ""),
            catalog or (current.catalog if current else ""),
            dict(note) if note else None,
        )
        if not new.model or not new.catalog:
            raise ModelError("both a model and a catalog must be active")
        self.load_models(new.model)
        self.load_catalog(new.catalog)
        entry: dict[str, Any] = {"model": new.model, "catalog": new.catalog}
        if new.note:
            entry["note"] = new.note
        # History first: a crash between the two leaves an entry for a pair that was never
        # active, which previous() skips (it compares with what is active).
        history = {
            **entry,
            "previous": None
            if current is None
            else {"model": current.model, "catalog": current.catalog},
        }
        self._ensure(self.root)
        with open(self.activations_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(history, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _atomic_write(self.active_path, json.dumps(entry, sort_keys=True, default=str).encode())
        return new

    def activations(self) -> list[dict[str, Any]]:
        """The activation history, oldest first (empty before the first activation)."""
        try:
            lines = self.activations_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def previous(self) -> Active:
        """The pair that was active before the current one (what a rollback returns to)."""
        current = self.active()
        for entry in reversed(self.activations()):
            if (entry["model"], entry["catalog"]) == (current.model, current.catalog):
                before = entry.get("previous")
                if before:
                    return Active(before["model"], before["catalog"])
                break
        raise ModelError("no earlier model to roll back to: this is the first one activated")

    def model_versions(self) -> list[str]:
        """Every stored model version, by name."""
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if p.name.startswith("mdl-"))

    def card(self, version: str) -> dict[str, Any]:
        """A stored model's card, without loading the models."""
        path = self.models_dir / version / "card.json"
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelError(f"model {version} is not in the registry ({path.parent})") from None

    def active_stamp(self) -> float:
        """Changes whenever active.json is replaced (for polling)."""
        try:
            return self.active_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0.0

    def _ensure(self, d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        return d


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir_tree(d: Path) -> None:
    for p in d.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
