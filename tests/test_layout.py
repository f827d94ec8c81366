"""The shape of the code: dependencies point one way, nothing edits sys.path, files stay small."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "shuangyu"

# Each step may import only the steps below it (modules at the top of the package, errors, files, devices,
# progress, terminal and library_warnings, are below everything).
LAYERS = [
    "errors", "files", "devices", "progress", "terminal", "library_warnings", "environment", "text", "tokenizer",
    "data", "modeling", "evaluation", "sharing", "training", "chat", "planning", "report", "launcher_report", "demo",
]  # fmt: skip
# fmt: off
ALLOWED = {
    "errors": set(),
    "files": {"errors"},
    "devices": {"errors"},  # a command's --device against what this machine's torch sees
    "progress": set(),  # progress bars on a terminal, plain lines in a log file: other libraries' switches
    "terminal": set(),  # a closed terminal: writes to it go nowhere instead of raising
    "library_warnings": set(),  # other libraries' warnings a user cannot act on, dropped around one call
    "environment": set(),  # hardware, versions, commit: reads the machine, imports nothing of ours
    "text": {"errors", "files"},
    "tokenizer": {"errors", "files", "text"},
    "data": {"errors", "files", "text", "tokenizer"},
    # the export command's errors, the card it carries over, the tokenizer config it cleans; the model files
    # themselves import nothing of ours
    "modeling": {"errors", "files", "sharing", "tokenizer"},
    # tokenizer: a chat model's reply loss
    "evaluation": {"errors", "files", "devices", "progress", "library_warnings", "text", "tokenizer", "sharing"},
    "sharing": {"errors", "files", "library_warnings"},  # loads an adapter on its base model (PEFT warns)
    "training": {
        "errors", "files", "devices", "progress", "terminal", "library_warnings", "environment", "text", "tokenizer",
        "data", "modeling", "evaluation", "sharing",
    },
    # talks to a saved folder: needs nothing of training
    "chat": {"errors", "files", "devices", "library_warnings", "tokenizer", "sharing"},
    # the smallest vocabulary, the model's shapes, train_clm's flags and peaks
    "planning": {"errors", "files", "tokenizer", "modeling", "training"},
    # a run folder's report: reads what training, evaluation and the card wrote
    "report": {
        "errors", "files", "progress", "environment", "text", "tokenizer", "evaluation", "sharing", "training"
    },
    # runs every step as its own command; reads the pretraining config as train_clm.py does (its tokenizer
    # learns from the same files); builds the report at the end
    # the demo's view of an `accelerate launch` step's stderr, which a closed terminal must not stop
    "launcher_report": {"terminal"},
    "demo": {"errors", "files", "progress", "terminal", "report", "training", "launcher_report"},
}
# fmt: on


def unit_of(module: str) -> str | None:
    """'shuangyu.data.loader' -> 'data'; 'shuangyu.errors' -> 'errors'."""
    parts = module.split(".")
    return parts[1] if parts[0] == "shuangyu" and len(parts) > 1 else None


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {unit: set() for unit in LAYERS}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        unit = rel.parts[0]
        if unit == "__init__":
            continue
        for name in imports(path):
            target = unit_of(name)
            if target and target != unit and target in edges:
                edges[unit].add(target)
    return edges


def test_every_step_imports_only_the_steps_below_it():
    for unit, targets in package_edges().items():
        assert targets <= ALLOWED[unit], f"shuangyu.{unit} imports {sorted(targets - ALLOWED[unit])}"


def test_no_import_cycle_between_steps():
    edges = package_edges()
    state: dict[str, int] = {}

    def visit(unit, trail):
        if state.get(unit) == 1:
            pytest.fail(f"import cycle: {' -> '.join([*trail, unit])}")
        if state.get(unit) == 2:
            return
        state[unit] = 1
        for target in edges[unit]:
            visit(target, [*trail, unit])
        state[unit] = 2

    for unit in edges:
        visit(unit, [])


def test_the_model_code_imports_only_itself_torch_and_transformers():
    for path in (PACKAGE / "modeling").glob("*_shuangyu.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] in {"torch", "transformers", "__future__", "typing", "math"}, (
                    f"{path.name} imports {node.module}: saved folders carry only the model's own files"
                )


def python_files():
    """The project's Python files, tracked or new: not what git ignores (venvs, builds, run outputs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [REPO / name for name in listed if (REPO / name).exists()]


def test_nothing_edits_sys_path():
    pattern = re.compile(r"sys\.path\.(insert|append)|sys\.path\s*=|sys\.path\s*\+=")
    offenders = [str(p.relative_to(REPO)) for p in python_files() if pattern.search(p.read_text(encoding="utf-8"))]
    assert [p for p in offenders if p != "tests/test_layout.py"] == [], offenders


def test_package_files_are_small_or_say_why():
    """A file much over 400 lines says at its top why it is one job."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 450:
            head = text[:1500].lower()
            assert "one job" in head or "one file" in head, f"{path.relative_to(REPO)}: over 450 lines, no reason given"


def test_the_readme_scripts_are_thin_entry_points():
    for script in ("tokenizer/train_bpe.py", "train_clm.py", "eval/run.py", "eval/push.py"):
        text = (REPO / script).read_text(encoding="utf-8")
        assert text.count("\n") < 25 and "from shuangyu." in text, script
