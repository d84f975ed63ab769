#!/usr/bin/env python3
"""The published crates' generated docs stand alone: no reference a reader of docs.rs cannot
follow (the design notes, the seed, the project's notes, paths into the repository). Run after
`cargo doc`; checks the text of every page (tags stripped, so source links do not count)."""
import html
import pathlib
import re
import sys

FORBIDDEN = [
    r"DESIGN\b", r"\bthe seed\b", r"project'?s notes", r"\bdocs/", r"\bsrc/", r"\btests/",
    r"\bissue \d", r"\.md\b(?! format)",
]
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/doc")
bad = []
for crate in ["msgport", "msgport_ipc"]:
    for page in (root / crate).rglob("*.html"):
        text = re.sub(r"<script.*?</script>|<[^>]+>", " ", page.read_text(), flags=re.S)
        text = html.unescape(text)
        for pattern in FORBIDDEN:
            for m in re.finditer(pattern, text):
                context = " ".join(text[max(0, m.start() - 60):m.end() + 60].split())
                bad.append(f"{page.relative_to(root)}: {context}")
for line in sorted(set(bad)):
    print(line)
print(f"{len(set(bad))} internal reference(s) in the published docs")
sys.exit(1 if bad else 0)
