"""The bin runs LiteRT only: classifying must never import TensorFlow or Keras."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SHIPPED, needs_data, real_photos

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "host_training")


def test_edge_sources_import_no_tensorflow():
    """Static: no edge module imports TensorFlow, Keras or the training package.

    The one allowed mention is the string naming tf.lite as the interpreter of
    last resort (used only when neither LiteRT nor tflite-runtime is installed).
    """
    for path in sorted((REPO / "edge").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@needs_data
def test_classifying_real_photos_leaves_tensorflow_unimported():
    photos = [str(p) for p in real_photos("battery", 2) + real_photos("shoes", 1)]
    code = (
        "import sys, runpy\n"
        "from edge.cli import main\n"
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
