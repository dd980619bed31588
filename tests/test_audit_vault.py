"""The pseudonym vault (audit/vault.py): stable random pseudonyms, erasure, shared files."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.errors import AuditError
from audit.vault import Vault

PSEUDONYM = re.compile(r"p_[a-z2-7]{26}")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "vault.sqlite"


@pytest.fixture
def vault(path: Path) -> Iterator[Vault]:
    with Vault.open(path) as v:
        yield v


def in_other_process(path: Path, code: str) -> str:
    script = (
        "from pathlib import Path\nfrom audit.vault import Vault\n"
        f"vault = Vault.open(Path({str(path)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_pseudonyms_are_stable_and_well_formed(vault: Vault) -> None:
    first = vault.pseudonym_for("cust-1")
    assert PSEUDONYM.fullmatch(first)
    assert vault.pseudonym_for("cust-1") == first
    assert vault.lookup("cust-1") == first
    assert vault.customer_for(first) == "cust-1"


def test_pseudonyms_are_unique(vault: Vault) -> None:
    pseudonyms = {vault.pseudonym_for(f"cust-{i}") for i in range(500)}
    assert len(pseudonyms) == 500


def test_pseudonyms_are_random_not_derived_from_the_id(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "a.sqlite") as a, Vault.open(tmp_path / "b.sqlite") as b:
        assert a.pseudonym_for("cust-1") != b.pseudonym_for("cust-1")


def test_lookup_never_creates(vault: Vault) -> None:
    assert vault.lookup("nobody") is None
    assert vault.customer_for("p_" + "a" * 26) is None
    assert vault.lookup("nobody") is None


def test_erase_unlinks_the_customer_and_deletes_their_notes(vault: Vault) -> None:
    old = vault.pseudonym_for("cust-1")
    other = vault.pseudonym_for("cust-2")
    assert vault.add_note("d-1", old, "said the price was too high")
    assert vault.add_note("d-2", other, "call back next month")
    assert vault.erase("cust-1") == old
    assert vault.lookup("cust-1") is None
    assert vault.customer_for(old) is None
    assert vault.notes_for("d-1") == []
    assert vault.notes_for("d-2") == ["call back next month"]
    assert vault.erase("cust-1") is None
    # a late note for the erased pseudonym is not kept
    assert not vault.add_note("d-1", old, "too late")
    assert vault.notes_for("d-1") == []
    # coming back later gets a new, unrelated pseudonym
    new = vault.pseudonym_for("cust-1")
    assert new != old


def test_notes_are_kept_per_decision_in_order(vault: Vault) -> None:
    p = vault.pseudonym_for("cust-1")
    vault.add_note("d-1", p, "first")
    vault.add_note("d-1", p, "second, with ünïcode")
    assert vault.notes_for("d-1") == ["first", "second, with ünïcode"]


def test_entries_survive_reopening(path: Path) -> None:
    with Vault.open(path) as v:
        p = v.pseudonym_for("cust-1")
        v.add_note("d-1", p, "note")
    with Vault.open(path) as v:
        assert v.lookup("cust-1") == p
        assert v.notes_for("d-1") == ["note"]


def test_the_file_is_private(path: Path) -> None:
    Vault.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_bad_arguments_and_closed_vault_are_refused(vault: Vault) -> None:
    with pytest.raises(ValueError, match="customer_id"):
        vault.pseudonym_for("")
    vault.close()
    vault.close()
    with pytest.raises(AuditError, match="closed"):
        vault.lookup("cust-1")


def test_concurrent_threads_agree_on_each_pseudonym(vault: Vault) -> None:
    seen: list[dict[str, str]] = []

    def worker() -> None:
        seen.append({f"c{i}": vault.pseudonym_for(f"c{i}") for i in range(50)})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == seen[0] for s in seen)


def test_two_processes_see_each_others_entries(vault: Vault, path: Path) -> None:
    mine = vault.pseudonym_for("cust-parent")
    theirs = in_other_process(
        path,
        """
        assert vault.lookup("cust-parent") is not None
        print(vault.lookup("cust-parent"), vault.pseudonym_for("cust-child"))
        """,
    ).split()
    assert theirs[0] == mine
    assert vault.lookup("cust-child") == theirs[1]


def test_an_erasure_in_another_process_reaches_this_processs_cache(
    vault: Vault, path: Path
) -> None:
    cached = vault.pseudonym_for("cust-1")
    assert vault.lookup("cust-1") == cached  # now served from the cache
    in_other_process(path, 'print(vault.erase("cust-1"))')
    assert vault.lookup("cust-1") is None
    assert vault.pseudonym_for("cust-1") != cached
