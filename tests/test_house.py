"""The layout's promises: no import circles, commands in one place, the registry drives help, the API lists itself."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

import hf_unlearn


PACKAGE = Path(hf_unlearn.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> hf_unlearn modules it imports anywhere (function-level imports too), plus its parent packages,
    which Python runs first."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        tree = ast.parse(path.read_text())
        type_only = {  # `if TYPE_CHECKING:` imports never run
            id(child)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for child in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
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
        # Importing a module first runs every package above it.
        edges |= {target.rsplit(".", i)[0] for target in set(edges) for i in range(1, target.count(".") + 1)}
        graph[name] = {e for e in edges if e != name and e in modules and not name.startswith(e + ".")}
    return graph


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


def test_no_command_or_bench_modules_beside_the_library():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert not [n for n in top if n.endswith("_cli.py") or n.startswith("bench")]
    assert not list(PACKAGE.rglob("*_cli.py"))


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
