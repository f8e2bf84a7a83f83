"""The package's shape: layered imports without cycles, imports at the top of modules,
one schema for every parameter, and the library leaving global state alone."""
import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import rst_lib
from rst_lib import RunConfig, create_model
from rst_lib.errors import ConfigError

PACKAGE = Path(rst_lib.__file__).parent
# imported inside functions on purpose: optional or heavy, needed by one code path only
LAZY_OK = {"torchvision", "mlxtend", "PIL", "pyautoattack", "autoattack", "ipywidgets",
           "onnx", "onnxscript", "onnxruntime"}
# heavy to import (seconds): imported by the function that needs them, so that what does not
# (the CLI's light commands, parameter checks, reading run files) starts without them (issue 27)
HEAVY = {"torch", "papermill", "nbformat", "nbconvert", "jinja2", "scipy", "matplotlib"}
# rooms whose functions may import the library's heavier rooms when called (the CLI's commands,
# the checks before a kernel starts); those imports follow the layers like the others
DEFERRING_ROOMS = {"workbook"}
# The rooms, bottom to top: a module may import its own room and the rooms below it, never one above.
LAYERS = [("errors",), ("config", "utils", "masks"), ("models", "data"), ("attacks",), ("engine",),
          ("analysis", "interop"), ("workbook",)]
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The project modules a relative ``from ... import`` names (dotted, below rst_lib)."""
    base = module.split(".") if module != "__init__" else []
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    if node.module:
        return [".".join(base + node.module.split("."))]
    return [".".join(base + [a.name]) for a in node.names]


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _module_imports(path: Path) -> tuple[set[str], list[str], list[tuple[str, str]]]:
    """(project modules imported at the top, names imported inside functions,
    (module, name) pairs of private names imported from another module)."""
    tree = ast.parse(path.read_text())
    module, is_package = _module_name(path), path.name == "__init__.py"
    top, inner, private = set(), [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            targets = _resolve(module, is_package, node)
            if node in tree.body:
                top.update(targets)
            else:
                inner += targets
            private += [(targets[0], a.name) for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and node not in tree.body:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            inner += [m for m in mods if m.split(".")[0] not in LAZY_OK | HEAVY]
    return top, inner, private


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in _modules().items():
        top, _, _ = _module_imports(path)
        graph[name] = top - {name}
    return graph


def _room(module: str) -> str:
    return module.split(".")[0]


def test_the_package_has_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt != _room(node) or "." not in node:  # a module may use its own package's face
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node != "__init__":
            visit(node, [])
    assert {"errors", "config", "engine.training", "engine.evaluation"} <= set(graph)


def test_the_cycle_test_can_see_a_cycle(monkeypatch):
    graph = _graph()
    graph["errors"] = {"engine.training"}  # errors is the bottom layer; an arrow up closes a loop
    monkeypatch.setattr(__import__(__name__), "_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import cycle"):
        test_the_package_has_no_import_cycle()


def test_every_room_imports_only_its_own_room_and_rooms_below():
    rooms = {_room(m) for m in _modules() if m != "__init__"}
    assert rooms == set(RANK), f"rooms without a layer: {rooms - set(RANK)}"
    for module, targets in _graph().items():
        if module == "__init__":
            continue  # the package's face hands the public names on
        for target in targets:
            assert RANK[_room(target)] <= RANK[_room(module)], f"{module} imports {target}, a room above it"


def test_errors_is_the_bottom_layer_and_imports_are_at_the_top():
    assert _graph()["errors"] == set()
    for module, path in _modules().items():
        _, inner, _ = _module_imports(path)
        deferred = [t for t in inner if _room(module) in DEFERRING_ROOMS and _room(t) in RANK]
        for target in deferred:
            assert RANK[_room(target)] <= RANK[_room(module)], f"{module} imports {target}, a room above it"
        inner = [t for t in inner if t not in deferred]
        assert not inner, f"{path.name} imports {inner} inside a function"


def test_no_private_name_is_used_across_modules():
    for module, path in _modules().items():
        _, _, private = _module_imports(path)
        assert not private, f"{module} imports private names {private}"
    for path in sorted(Path(__file__).parent.parent.glob("notebooks/*.py")):
        assert "import _" not in path.read_text() and ", _" not in "".join(
            line for line in path.read_text().splitlines() if line.startswith("from rst_lib")), path


def test_no_module_is_a_grab_bag_by_size():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 420, sizes


def test_notebooks_import_from_few_places():
    for path in sorted(Path(__file__).parent.parent.glob("notebooks/*.py")):
        places = {line.split()[1] for line in path.read_text().splitlines()
                  if line.startswith(("from rst_lib", "import rst_lib"))}
        assert places <= {"rst_lib", "rst_lib.analysis", "rst_lib.workbook"}, (path.name, places)


def test_unknown_model_kwargs_are_refused_naming_the_valid_ones():
    from rst_lib.engine import check_run
    with pytest.raises(ConfigError, match=r"model_kwargs dept unknown .* valid model_kwargs are depth, widen_factor"):
        check_run(RunConfig(model="wide_resnet", model_kwargs={"dept": 34}))
    with pytest.raises(ConfigError, match="valid model_kwargs are none"):
        check_run(RunConfig(model="conv4", model_kwargs={"depth": 3}))
    check_run(RunConfig(model="wide_resnet", model_kwargs={"depth": 16, "widen_factor": 2}))


def test_model_config_defaults_come_from_the_run_schema():
    from rst_lib.config import default
    from rst_lib.models.registry import ModelConfig
    m = ModelConfig()
    for name in ("width", "keep_ratio", "weight_init", "end_with_bn", "score_init"):
        assert getattr(m, name) == default(name)


def test_library_calls_leave_the_global_rng_and_batchnorm_settings_alone(data):
    from rst_lib.analysis.controls import compare_models, random_mask_control
    from rst_lib.engine.evaluation import recalibrate_bn, robustness_report
    from rst_lib.data.loaders import make_loader
    cfg = RunConfig(model="conv2", width=0.125, keep_ratio=0.2, epochs=1, train_examples=128,
                    eval_examples=32, final_examples=32, autoattack="none", eval_steps=2).validate()
    model = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.2)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 0.3  # not the default: the library must not reset it
    state = torch.get_rng_state()
    rst_lib.train(cfg, None, progress=False, data=data)
    random_mask = random_mask_control(cfg, data)
    compare_models({"m": random_mask}, cfg, data, progress=False)
    robustness_report(model, data.test, 0.1, 0.02, n_examples=32, progress=False)
    recalibrate_bn(model, make_loader(data.train, 64), torch.device("cpu"), max_batches=2)
    assert torch.equal(state, torch.get_rng_state())
    assert all(m.momentum == 0.3 for m in bns)
