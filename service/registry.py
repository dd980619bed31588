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


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.catalogs_dir = root / "catalogs"
        self.active_path = root / "active.json"

    # -- storing ------------------------------------------------------------------------------
    def save_models(
        self, ranker: CatBoostClassifier, organic: CatBoostClassifier, card: dict[str, Any]
    ) -> str:
        """Store both models and their card; returns the version (hash of the model bytes)."""
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
            return Active(raw["model"], raw["catalog"])
        except FileNotFoundError:
            raise ModelError(
                f"no active model: {self.active_path} does not exist (run `offerdesk train`)"
            ) from None
        except (ValueError, KeyError) as e:
            raise ModelError(f"{self.active_path} is unreadable: {e}") from None

    def activate(self, *, model: str | None = None, catalog: str | None = None) -> Active:
        """Make a stored model and/or catalog the active one (checked loadable first)."""
        try:
            current: Active | None = self.active()
        except ModelError:
            current = None
        new = Active(
            model or (current.model if current else ""),
            catalog or (current.catalog if current else ""),
        )
        if not new.model or not new.catalog:
            raise ModelError("both a model and a catalog must be active")
        self.load_models(new.model)
        self.load_catalog(new.catalog)
        _atomic_write(
            self.active_path,
            json.dumps({"model": new.model, "catalog": new.catalog}, sort_keys=True).encode(),
        )
        return new

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
