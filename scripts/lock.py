"""The lock: every package that scripts/setup.sh installs, pinned with hashes in requirements/.

    python3 scripts/lock.py                    re-lock, keeping today's pins where they still fit
    python3 scripts/lock.py --upgrade          re-lock at the newest releases the ranges allow
    python3 scripts/lock.py --upgrade-package transformers   move one package
    python3 scripts/lock.py --check            fail if the lock is stale or pulls a CUDA build
    python3 scripts/lock.py --installed base,dev   fail unless this interpreter's packages
                                               are exactly those layers' pins

`scripts/lock.sh` runs the first three with uv from `.venv`. The layers are one resolution
(pyproject's ranges, every extra, plus requirements/constraints.txt) split by extra: base.txt
is what `pip install llmlab` needs, and tts/dev/bench.txt hold only what each extra adds,
so any union of layers installs the exact versions that CI tested. assets.txt holds the
model and data packages that are installed without their dependencies; tools.txt holds uv.

Stdlib only: setup.sh runs `--check` with the system Python before any venv exists."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(os.environ.get("LLMLAB_LOCK_ROOT") or Path(__file__).resolve().parents[1])
REQ = ROOT / "requirements"
EXTRAS = ("tts", "dev", "bench")
LAYERS = ("tools", "assets", "base", *EXTRAS)
# One target, the project's machines: torch's CPU wheel exists for it (cp311, x86_64 Linux).
TARGET = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
LOCK_CMD = "bash scripts/lock.sh"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _spec_lines(path: Path) -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def inputs_digest() -> str:
    """What the lock was made from. Comments don't count, so editing a reason needs no re-lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "target": TARGET,
        **{f.name: _spec_lines(f) for f in (REQ / "constraints.txt", REQ / "assets.in",
                                            REQ / "tools.in")},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def entries(text: str) -> dict[str, tuple[str, str]]:
    """name -> (version, whole entry) of a compiled requirements file."""
    out: dict[str, tuple[str, str]] = {}
    block: list[str] = []

    def flush() -> None:
        if block:
            name, _, ver = block[0].split(" ", 1)[0].partition("==")
            out[norm(name)] = (ver, "\n".join(block))
            block.clear()

    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            flush()
            block.append(line)
        elif block and line.strip():
            block.append(line)
    flush()
    return out


def layer_path(layer: str) -> Path:
    return REQ / f"{layer}.txt"


def read_layer(layer: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
    text = layer_path(layer).read_text()
    m = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", text, re.M)
    return (m.group(1) if m else None), entries(text)


def cuda_problems(pins: dict[str, str]) -> list[str]:
    bad = [f"{n}=={v}" for n, v in pins.items() if n.startswith("nvidia-")]
    torch = pins.get("torch")
    if torch is not None and not torch.endswith("+cpu"):
        bad.append(f"torch=={torch} (not the +cpu wheel)")
    return bad


def check() -> list[str]:
    """Every reason the committed lock can't be installed as it is."""
    problems, stale = [], []
    digest = inputs_digest()
    pins: dict[str, str] = {}
    for layer in LAYERS:
        path = layer_path(layer)
        if not path.exists():
            problems.append(f"requirements/{path.name} is missing")
            continue
        got, ents = read_layer(layer)
        if got != digest:
            stale.append(path.name)
        pins.update({n: v for n, (v, _) in ents.items()})
    if stale:
        problems.append(f"the lock is stale: pyproject.toml's dependencies, requirements/*.in or "
                        f"requirements/constraints.txt changed after requirements/"
                        f"{{{','.join(stale)}}} were locked")
    problems += [f"the lock pulls a CUDA build: {b}" for b in cuda_problems(pins)]
    return problems


def installed_problems(layers: list[str]) -> list[str]:
    """Compare this interpreter's packages with the union of `layers`."""
    import importlib.metadata as md

    want: dict[str, str] = {}
    for layer in layers:
        want.update({n: v for n, (v, _) in read_layer(layer)[1].items()})
    have = {norm(d.metadata["Name"]): d.version for d in md.distributions()}
    have.pop("llmlab", None)  # the project itself, installed editable
    problems = [f"{n}: installed {have.get(n, 'nothing')}, lock says {v}"
                for n, v in sorted(want.items()) if have.get(n) != v]
    problems += [f"{n}=={v} is installed but not in the lock" for n, v in sorted(have.items())
                 if n not in want]
    return problems


def find_links_env() -> dict[str, str]:
    """uv doesn't read pip's configuration; where pip finds torch's CPU wheel, so does uv."""
    env = dict(os.environ)
    if env.get("UV_FIND_LINKS"):
        return env
    links = env.get("PIP_FIND_LINKS", "")
    if not links:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                           capture_output=True, text=True)
        links = r.stdout.strip() if r.returncode == 0 else ""
    if links:
        env["UV_FIND_LINKS"] = links
    return env


def compile_(uv: str, args: list[str], out: Path, env: dict[str, str]) -> dict[str, tuple]:
    cmd = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header", *TARGET,
           *args, "-o", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lock: {' '.join(cmd)} failed:\n{r.stderr}")
    # The temporary constraint file's path would make every re-lock a diff: drop it from the
    # "# via" notes, and fold a note left with one source onto its line.
    text = "\n".join(ln for ln in out.read_text().splitlines() if str(out.parent) not in ln)
    text = re.sub(r"# via\n\s+#   (.+)\n(?!\s+#   )", r"# via \1\n", text + "\n")
    return entries(text)


def lock(uv: str, passthrough: list[str]) -> None:
    env = find_links_env()
    digest = inputs_digest()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        full = t / "all.txt"
        # uv prefers the pins already in its output file: seed it with today's lock so a
        # re-lock moves only what the change (or --upgrade) requires.
        seed = [layer_path(x).read_text() for x in ("base", *EXTRAS) if layer_path(x).exists()]
        full.write_text("\n".join(seed))
        proj = ["pyproject.toml", "-c", "requirements/constraints.txt"]
        compile_(uv, [*proj, "--all-extras", *passthrough], full, env)
        closure = {"base": compile_(uv, [*proj, "-c", str(full)], t / "base.txt", env)}
        for extra in EXTRAS:
            closure[extra] = compile_(uv, [*proj, "-c", str(full), "--extra", extra],
                                      t / f"{extra}.txt", env)
        for name in ("tools", "assets"):
            seed_file = t / f"{name}.txt"
            if layer_path(name).exists():
                shutil.copy(layer_path(name), seed_file)
            extra_args = ["--no-deps"] if name == "assets" else []
            closure[name] = compile_(uv, [f"requirements/{name}.in", *extra_args, *passthrough],
                                     seed_file, env)
        pins = {n: v for ents in closure.values() for n, (v, _) in ents.items()}
        if bad := cuda_problems(pins):
            sys.exit(f"lock: the resolution pulls a CUDA build ({', '.join(bad)}). uv needs a "
                     "find-links folder or index that has torch's 2.13.0+cpu wheel: set "
                     "UV_FIND_LINKS (or pip's find-links) to it and run again.")
        texts = {}
        for layer in LAYERS:
            ents = closure[layer]
            if layer in EXTRAS:
                ents = {n: e for n, e in ents.items() if n not in closure["base"]}
                what = f"what the '{layer}' extra adds to base.txt"
            else:
                what = {"tools": "the installer", "assets": "installed with --no-deps",
                        "base": "llmlab's runtime dependencies"}[layer]
            body = "\n".join(e for _, (_, e) in sorted(ents.items()))
            texts[layer] = (f"# {layer}.txt: {what}. Generated by {LOCK_CMD}; do not edit.\n"
                            f"# inputs-sha256: {digest}\n{body}\n")
    for layer, text in texts.items():  # all files are written only once all compiles succeeded
        tmp_path = layer_path(layer).with_suffix(".tmp")
        tmp_path.write_text(text)
        os.replace(tmp_path, layer_path(layer))
    n = len(pins)
    print(f"lock: {n} packages pinned in requirements/{{{','.join(LAYERS)}}}.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if the lock is stale")
    ap.add_argument("--installed", metavar="LAYERS",
                    help="comma-separated layers this interpreter must match exactly")
    ap.add_argument("--upgrade", action="store_true", help="newest releases the ranges allow")
    ap.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                    help="move only this package (repeatable)")
    ap.add_argument("--uv", default=str(ROOT / ".venv" / "bin" / "uv"), help="the uv binary")
    args = ap.parse_args()
    if args.check or args.installed:
        problems = check()
        if args.installed and not problems:
            layers = args.installed.split(",")
            unknown = [x for x in layers if x not in LAYERS]
            if unknown:
                sys.exit(f"lock: unknown layer {unknown[0]!r}; expected one of {', '.join(LAYERS)}")
            problems = [f"installed packages differ from the lock: {p}"
                        for p in installed_problems(layers)]
        if problems:
            hint = "run scripts/setup.sh again" if args.installed else f"run {LOCK_CMD}"
            sys.exit("lock: " + "\nlock: ".join(problems) + f"\nlock: {hint}")
        return
    passthrough = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        passthrough += ["--upgrade-package", name]
    if not Path(args.uv).exists():
        sys.exit(f"lock: {args.uv} not found; run {LOCK_CMD}, which installs it")
    lock(args.uv, passthrough)


if __name__ == "__main__":
    main()
