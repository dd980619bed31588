"""Assemble the Freshdesk sidebar app (FDK 3.0) into a folder ready for `fdk validate` and
`fdk pack`: the app's own files (console_adapters/freshdesk_app/) with the card it shows, which
is the gateway's card page (console_adapters/card/: its styles, its script and the <main> of
its markup). Freshworks hosts the uploaded app, so the package must hold the card; git holds it
once. It never writes into the sources.

    .venv/bin/python scripts/pack_freshdesk_app.py [FOLDER]   # default: var/freshdesk-app
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "console_adapters" / "freshdesk_app"
CARD = ROOT / "console_adapters" / "card"
DEFAULT = ROOT / "var" / "freshdesk-app"
#: the card's files the app loads, by where they go in the package
SHARED = {
    Path("app/styles/card.css"): CARD / "card.css",
    Path("app/scripts/card_view.js"): CARD / "card_view.js",
}
#: where the app's page wants the card: a comment that opens "card:" in its <body>
_SLOT = re.compile(r"^[ ]*<!-- card:.*?-->\n", re.MULTILINE | re.DOTALL)
#: the card page's <main id="card">, whole lines, and its status line (the states go before it)
_MAIN = re.compile(r"^[ ]*<main id=\"card\".*?</main>\n", re.MULTILINE | re.DOTALL)
_STATUS = re.compile(r"^[ ]*<p id=\"status\"", re.MULTILINE)


def page(template: str, card: str) -> str:
    """The app's index.html: its own head, and in its body the card page's <main> with the
    app's own states (the sections after the slot) added before the card's status line."""
    slot = _SLOT.search(template)
    main = _MAIN.search(card)
    if slot is None or main is None:
        raise ValueError("no <!-- card: --> slot in the app's page, or no <main id=card> card")
    body_end = template.index("</body>", slot.end())
    extra = template[slot.end() : body_end]
    status = _STATUS.search(main.group())
    if status is None:
        raise ValueError('the card has no <p id="status"> line')
    # The app's sections sit at the slot's indent; inside <main> they go one level deeper.
    states = re.sub(r"^(?=[ ]*\S)", "  ", extra.strip("\n"), flags=re.MULTILINE) + "\n\n"
    inner = main.group()[: status.start()] + states + main.group()[status.start() :]
    return template[: slot.start()] + inner + template[body_end:]


def pack(target: Path) -> Path:
    """Write the app into ``target`` (emptied first, when it holds an earlier one)."""
    target = target.resolve()
    for source in (APP, CARD):
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(f"{target}: the sources are not a place to pack into")
    if target.exists():
        if any(target.iterdir()) and not (target / "manifest.json").is_file():
            raise ValueError(f"{target}: not empty and not an app packed here before")
        shutil.rmtree(target)
    shutil.copytree(APP, target)
    for where, source in SHARED.items():
        shutil.copyfile(source, target / where)
    index = target / "app" / "index.html"
    index.write_text(page(index.read_text(), (CARD / "card.html").read_text()))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    args = parser.parse_args()
    try:
        target = pack(args.folder)
    except ValueError as err:
        print(f"pack_freshdesk_app: {err}", file=sys.stderr)
        return 2
    print(f"{target}: run `fdk validate` and `fdk pack` there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
