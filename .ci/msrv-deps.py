#!/usr/bin/env python3
"""The published crates' rust-version is true of their dependencies too: every package in the
normal (non-dev) dependency tree of msgport and msgport-ipc on Linux declares a rust-version no
newer than ours (clippy's incompatible_msrv lint checks our own code against std)."""
import json
import subprocess
import sys

PUBLISHED = ["msgport", "msgport-ipc"]


def version(v):
    parts = (v or "0").split(".")
    return tuple(int(p) for p in parts + ["0"] * (3 - len(parts)))


meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked",
     "--filter-platform", "x86_64-unknown-linux-gnu"],
    check=True, capture_output=True, text=True).stdout)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
ours = {p["name"]: p for p in packages.values() if p["id"] in meta["workspace_members"]}
failed = False
for name in PUBLISHED:
    msrv = version(ours[name]["rust_version"])
    seen, todo = set(), [ours[name]["id"]]
    while todo:
        node = nodes[todo.pop()]
        for dep in node["deps"]:
            if not any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                continue
            if dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
    for pid in sorted(seen):
        p = packages[pid]
        if p.get("rust_version") and version(p["rust_version"]) > msrv:
            print(f"{name} declares rust-version {ours[name]['rust_version']}, but its "
                  f"dependency {p['name']} {p['version']} needs {p['rust_version']}")
            failed = True
    print(f"{name}: {len(seen)} dependencies, none newer than rust-version "
          f"{ours[name]['rust_version']}" if not failed else f"{name}: checked")
sys.exit(1 if failed else 0)
