"""The bin runs LiteRT only: classifying must never import TensorFlow or Keras, nor install them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHIPPED, needs_data, real_photos

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "host_training")
# a string that is a module path under one of them: "tensorflow", "keras.layers", ...
MODULE_NAME = re.compile(rf"(?:{'|'.join(FORBIDDEN)})(?:\.\w+)*")
# distributions that install TensorFlow or Keras: tensorflow(-cpu, -intel, -io, ...), intel-tensorflow,
# keras(-nightly), tf-keras, tf-nightly and every other tf-* (tflite-runtime is not one: it is allowed)
FORBIDDEN_PACKAGE = re.compile(r"(?:[a-z0-9-]*-)?tensorflow(?:-.*)?|keras(?:-.*)?|tf-.*")
# the package named in the edge extras, whose extras are followed as well
PROJECT = "smartbin"


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module name the source imports, statically or by name: ``import x``, ``from x import y``,
    ``importlib.import_module("x")``, ``import_module("x")``, ``__import__("x")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                found.append((node.lineno, str(first.value)))
    return found


def last_resort_runtime(tree: ast.AST, path: Path) -> set[int]:
    """The one allowed mention: edge/model/classifier.py's ``RUNTIMES`` names tf.lite as the interpreter of
    last resort (imported only when neither LiteRT nor tflite-runtime is installed). The ids of its
    string nodes."""
    if path != REPO / "edge" / "model" / "classifier.py":
        return set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RUNTIMES" for t in node.targets):
            return {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    raise AssertionError("edge/model/classifier.py has no RUNTIMES: update this test's allowance")


def test_edge_sources_import_no_tensorflow():
    """Static: no edge module imports TensorFlow, Keras or the training package, by statement or by
    name (importlib), and no string names one of them as a module outside ``RUNTIMES``'s last resort."""
    problems = []
    for path in sorted((REPO / "edge").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(REPO)
        for line, name in imported_names(tree):
            if name.split(".")[0] in FORBIDDEN:
                problems.append(f"{where}:{line} imports {name}")
        allowed = last_resort_runtime(tree, path)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and MODULE_NAME.fullmatch(node.value)
                and id(node) not in allowed
            ):
                problems.append(f"{where}:{node.lineno} names the module {node.value!r}")
    assert not problems, "\n".join(problems)


def requirement_name(requirement: str) -> tuple[str, list[str]]:
    """A PEP 508 requirement's normalised distribution name and its extras."""
    match = re.match(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?", requirement)
    assert match, f"cannot read the requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: tomli is the same parser
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python < 3.11 needs tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def install_requirements(project: dict, extra: str | None) -> dict[str, str]:
    """Every distribution that installing smartbin (``extra=None``) or ``smartbin[extra]`` asks for,
    following ``smartbin[...]`` inside the extras: normalised name -> where it is asked for."""
    optional = project.get("optional-dependencies", {})
    found: dict[str, str] = {}
    todo = [("dependencies", project.get("dependencies", []))]
    seen = {extra} if extra else set()
    if extra:
        todo.append((f"[{extra}]", optional[extra]))
    while todo:
        source, requirements = todo.pop()
        for requirement in requirements:
            name, extras = requirement_name(requirement)
            if name != PROJECT:
                found.setdefault(name, f"{source}: {requirement}")
                continue
            for inner in set(extras) - seen:
                assert inner in optional, f"{source} asks for the unknown extra {PROJECT}[{inner}]"
                seen.add(inner)
                todo.append((f"[{inner}]", optional[inner]))
    return found


def test_forbidden_package_names_are_recognised():
    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-io", "intel-tensorflow", "keras", "tf-keras"):
        assert FORBIDDEN_PACKAGE.fullmatch(name), name
    assert FORBIDDEN_PACKAGE.fullmatch("tf-nightly")
    for name in ("ai-edge-litert", "tflite-runtime", "opencv-python-headless", "paho-mqtt", "numpy"):
        assert not FORBIDDEN_PACKAGE.fullmatch(name), name
    assert requirement_name("TensorFlow_CPU[and-cuda] >=2.16; python_version<'3.13'") == (
        "tensorflow-cpu",
        ["and-cuda"],
    )
    assert requirement_name("smartbin[edge, plots]") == ("smartbin", ["edge", "plots"])


def test_the_edge_install_asks_for_no_tensorflow():
    """pyproject.toml: the base dependencies and the extras a bin installs (``edge``, ``edge-legacy``),
    with every ``smartbin[...]`` they pull in, name no TensorFlow or Keras distribution."""
    project = pyproject()
    problems = set()
    for extra in (None, "edge", "edge-legacy"):
        requirements = install_requirements(project, extra)
        assert "numpy" in requirements, extra  # the file was read
        problems |= {where for name, where in requirements.items() if FORBIDDEN_PACKAGE.fullmatch(name)}
    assert not problems, "a bin would install TensorFlow or Keras:\n" + "\n".join(sorted(problems))
    # the check sees them where they belong: the workstation's extra, and what pulls it in
    assert "tensorflow" in install_requirements(project, "train")
    assert "tensorflow" in install_requirements(project, "bench")


@needs_data
def test_classifying_real_photos_leaves_tensorflow_unimported():
    photos = [str(p) for p in real_photos("battery", 2) + real_photos("shoes", 1)]
    code = (
        "import sys, runpy\n"
        "from edge.service.cli import main\n"
        f"rc = main(['classify', '--model', {str(SHIPPED)!r}, *{photos!r}])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{FORBIDDEN!r})\n"
        "print('FORBIDDEN', bad)\n"
        "sys.exit(rc or bool(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "FORBIDDEN []" in out.stdout
    assert "battery" in out.stdout
    assert Path(SHIPPED / "model.tflite").is_file()
