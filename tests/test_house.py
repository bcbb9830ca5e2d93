"""The layout's promises: no import circles, commands in one place, the registry drives help, the API lists itself."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import hf_unlearn


PACKAGE = Path(hf_unlearn.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The layers, lowest first: a module imports only from its own layer or the layers below it (docs/architecture.md).
# A module belongs to the layer of the longest name below that covers it (``hf_unlearn.sweep`` covers the sweep
# package's modules too); a module no layer covers fails the test, so a new module is placed on purpose.
LAYERS = [
    (
        "leaves",
        [
            "hf_unlearn",
            "errors",
            "lock",
            "io",
            "distributed",
            "paper",
            "packaged_models",
            "hub_ids",
            "tiny",
            "analysis",
        ],
    ),
    ("data and models", ["data", "modeling", "loading", "models", "alternates"]),
    ("optimizers", ["optim"]),
    ("benchmarks", ["benchmarks", "evaluate_metrics"]),
    ("trainers", ["configs", "compute", "trainers"]),
    ("attacks", ["attacks", "answers"]),
    ("report schema", ["report_schema"]),
    ("report rendering", ["report_render"]),
    ("report files", ["report", "model_card", "hub"]),
    ("pipeline", ["recipes", "resume", "pipeline", "finetune", "sweep", "demo", "demo_real"]),
    ("commands", ["cli", "run", "launch", "__main__"]),
]


def layer_of(module: str) -> int:
    best, index = "", None
    for position, (_, names) in enumerate(LAYERS):
        for name in names:
            prefix = name if name == "hf_unlearn" else f"hf_unlearn.{name}"
            covers = module == prefix or (prefix != "hf_unlearn" and module.startswith(prefix + "."))
            if covers and len(prefix) > len(best):
                best, index = prefix, position
    if index is None:
        raise AssertionError(
            f"{module} is in no layer: add it to LAYERS in tests/test_house.py and docs/architecture.md"
        )
    return index


def imported_modules(name: str, source: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The hf_unlearn modules `source` (module `name`) imports anywhere: at the top, inside functions and under
    ``if TYPE_CHECKING:`` alike (a type-only import is still a dependency of the layout), plus the packages above
    each of them, which Python runs first."""
    edges = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        edges |= {t for t in targets if t in modules}
    edges |= {target.rsplit(".", i)[0] for target in set(edges) for i in range(1, target.count(".") + 1)}
    return {e for e in edges if e != name and e in modules and not name.startswith(e + ".")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the hf_unlearn modules it imports (see :func:`imported_modules`)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: imported_modules(name, path.read_text(), set(paths), path.name == "__init__.py")
        for name, path in paths.items()
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_planted_circle():
    graph = import_graph()
    graph["hf_unlearn.data"] = graph["hf_unlearn.data"] | {"hf_unlearn.pipeline"}
    assert find_cycle(graph) is not None


def test_no_import_runs_back_up_the_layers():
    graph = import_graph()
    assert upward_imports(graph) == []
    # The check sees planted ones: the report's schema reaching up to its renderer, a trainer to the attacks.
    graph["hf_unlearn.report_schema"] = graph["hf_unlearn.report_schema"] | {"hf_unlearn.report_render"}
    assert upward_imports(graph) == [
        "hf_unlearn.report_schema (report schema) imports hf_unlearn.report_render (report rendering)"
    ]
    graph["hf_unlearn.trainers.base"] = graph["hf_unlearn.trainers.base"] | {"hf_unlearn.attacks.callback"}
    assert "hf_unlearn.trainers.base (trainers) imports hf_unlearn.attacks.callback (attacks)" in upward_imports(graph)


def test_type_only_and_function_level_imports_count():
    modules = {"hf_unlearn.report", "hf_unlearn.report_render", "hf_unlearn.trainers", "hf_unlearn.trainers.base"}
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from hf_unlearn.report import UnlearnReport
def plot():
    from hf_unlearn.trainers.base import Paper
"""
    edges = imported_modules("hf_unlearn.report_render", source, modules)
    assert edges == {"hf_unlearn.report", "hf_unlearn.trainers", "hf_unlearn.trainers.base"}


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)
    with pytest.raises(AssertionError, match="hf_unlearn.newcomer is in no layer: add it to LAYERS"):
        layer_of("hf_unlearn.newcomer")


@pytest.mark.slow
def test_importing_the_trainers_imports_no_attack():
    """`import hf_unlearn.trainers` (every method) loads no module of hf_unlearn.attacks: the robustness callback
    lives with the attacks, and the trainers reach the ZeRO-3 helpers through hf_unlearn.distributed."""
    import subprocess
    import sys

    code = "import json, sys, hf_unlearn.trainers; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)  # fmt: skip
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "hf_unlearn.trainers.npo" in loaded
    assert not [m for m in loaded if m.startswith(("hf_unlearn.attacks", "hf_unlearn.report", "hf_unlearn.cli"))]


def test_no_command_or_bench_modules_beside_the_library():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert not [n for n in top if n.endswith("_cli.py") or n.startswith("bench")]
    assert not list(PACKAGE.rglob("*_cli.py"))


def top_level_names(tree: ast.Module) -> set[str]:
    """The names a module binds when it runs: its definitions, assignments and imports, those under a top-level
    ``if`` / ``try`` included (not those inside functions)."""
    names, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            pending += [n for handler in getattr(node, "handlers", []) for n in handler.body]
    return names


def test_every_name_imported_from_the_package_exists_where_it_is_imported_from():
    """`from hf_unlearn.x import name` finds `name` in x (or a submodule x.name): a name moved to another module is
    imported from its new home everywhere, function-level imports included, without running anything."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    trees = {name: ast.parse(path.read_text()) for name, path in files.items()}
    bound = {name: top_level_names(tree) for name, tree in trees.items()}
    missing = []
    for path in [
        *files.values(),
        *(PACKAGE.parent / "tests").rglob("*.py"),
        *(PACKAGE.parent / "scripts").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in files:
                lazy = "__getattr__" in bound[node.module]  # the package's lazy public names
                for alias in node.names:
                    found = alias.name in bound[node.module] or f"{node.module}.{alias.name}" in files or lazy
                    if not found:
                        missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, "\n".join(missing)


def test_help_lists_every_command(cli):
    from hf_unlearn.cli import COMMANDS

    with pytest.raises(SystemExit):
        cli("--help")
    import contextlib
    import io

    from hf_unlearn.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser(["--help"]).parse_args(["--help"])
    for name in COMMANDS:
        assert f"    {name}" in out.getvalue()
        assert (PACKAGE / "cli" / f"{name}.py").is_file()


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_run_help_lists_every_key_of_the_method(cli, tmp_path, method):
    from hf_unlearn.attacks.robustness import RobustnessConfig
    from hf_unlearn.recipes import ScriptArguments, field_names
    from hf_unlearn.trainers import get_method

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: {method}\n")
    code, out, _ = cli("run", recipe, "--help")
    assert code == 0
    for key in field_names(ScriptArguments, get_method(method).config_class, RobustnessConfig):
        assert f"--{key}" in out, key
    code, out_no_recipe, _ = cli("run", "--method", method, "--help")
    assert code == 0 and "--learning_rate" in out_no_recipe


def test_dir_shows_the_public_api():
    names = dir(hf_unlearn)
    assert {"NPOTrainer", "build_optimizer", "RobustnessCallback", "parse_recipe", "__version__"} <= set(names)
    for name in hf_unlearn.__all__:
        assert getattr(hf_unlearn, name) is not None


def test_registry_drives_methods_configs_and_papers():
    from hf_unlearn.configs import UnlearnConfig
    from hf_unlearn.trainers import METHODS, Paper, method_names

    assert method_names() == list(METHODS)
    for name, trainer_cls in METHODS.items():
        assert trainer_cls._name == name and issubclass(trainer_cls.config_class, UnlearnConfig)
        assert isinstance(trainer_cls._paper, Paper) and "@article{" in trainer_cls._paper.bibtex()
        undocumented = [f.name for f in dataclasses.fields(trainer_cls.config_class) if not f.metadata.get("help")]
        assert not undocumented, (name, undocumented)


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_packaged_accelerate_configs_load(name):
    for folder in (PACKAGE / "accelerate_configs", PACKAGE.parent / "recipes" / "accelerate_configs"):
        config = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED")
        if name.startswith("zero"):
            assert config["deepspeed_config"]["zero_stage"] == int(name[-1])
