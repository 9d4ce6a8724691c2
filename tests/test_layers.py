"""The library's layers (issue 12): no module imports a higher layer, at module level or
inside a function, and the module-level imports form no cycle; each build option is
declared once, as a field of ``ModelSpec``.

Read from the source with ``ast``: nothing is imported, so the test sees every import,
including those a function makes only when it runs.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from fcnseg.models.spec import ModelSpec

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fcnseg"

# Lowest first. A name covers the module, or the package and everything under it when it
# ends in ".*" (the package's own __init__ included).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "version",
        "fileio",
        "devices",
        "models.activation",
        "models.geometry",
        "models.normalization",
        "surgery",
    ),
    ("models.backbones.*", "models.upsample", "models.inputs", "models.spec"),
    ("models.fcn", "models.fusion", "models.multitask", "models.registry", "models", "dense"),
    ("weights.*",),
    ("builder",),
    ("modelfile",),
    ("data.*", "losses", "metrics", "scoring", "hha", "solver", "config.*", "viz", "zoo.*"),
    ("training.*",),
    ("speed", "tiling", "tta", "export", "engines", "quantize", "inference"),
    ("serving.*",),
    ("cli", "commands.*", "__main__", ""),  # "": the fcnseg package itself
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def layer_of(module: str) -> int:
    """The layer of ``fcnseg.X``; a module no layer names fails the test (place it)."""
    local = module.removeprefix(PACKAGE).removeprefix(".")
    for level, names in enumerate(LAYERS):
        for name in names:
            if name.endswith(".*"):
                base = name[:-2]
                if local == base or local.startswith(base + "."):
                    return level
            elif local == name:
                return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the fcnseg module imported
    line: int
    top_level: bool  # run when the module is imported (not inside a function or class body)
    type_only: bool  # under ``if TYPE_CHECKING:``


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The fcnseg modules an import statement names: ``from pkg import sub`` names the
    submodule ``pkg.sub`` where one exists, else ``pkg`` itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    if origin.split(".")[0] != PACKAGE:
        return []
    targets = []
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        targets.append(sub if sub in MODULES else origin)
    return targets


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, node):
                found.append(Import(module, target, node.lineno, top_level, type_only))
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            top_level = False
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, top_level, True)
            for child in node.orelse:
                visit(child, top_level, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, top_level, type_only)

    visit(tree, True, False)
    return found


IMPORTS = [item for module in MODULES for item in _imports(module)]


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)
    assert len(MODULES) > 40 and len(IMPORTS) > 100  # the walk found the library


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{item.source} (layer {layer_of(item.source)}) imports {item.target} (layer "
        f"{layer_of(item.target)}) at line {item.line}"
        + ("" if item.top_level else ", inside a function")
        for item in IMPORTS
        if layer_of(item.target) > layer_of(item.source)
    ]
    assert not upward, "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


def test_module_level_imports_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for item in IMPORTS:
        if item.top_level and not item.type_only and item.target != item.source:
            edges.setdefault(item.source, set()).add(item.target)
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# Prediction, export and quantization run a trained model: they stand beside the training
# engine, not on it. What both need (devices, the scoring protocol) lies below both.
BESIDE_TRAINING = (
    "speed", "tiling", "tta", "export", "engines", "quantize", "inference", "serving"
)  # fmt: skip


def test_prediction_and_export_do_not_import_the_training_engine() -> None:
    engine = f"{PACKAGE}.training"
    found = [
        f"{item.source} imports {item.target} at line {item.line}"
        for item in IMPORTS
        if item.source.removeprefix(PACKAGE + ".").split(".")[0] in BESIDE_TRAINING
        and (item.target == engine or item.target.startswith(engine + "."))
    ]
    assert not found, "\n".join(found)


def test_no_import_of_the_library_hides_in_a_function() -> None:
    """An import inside a function dodges a cycle instead of removing it (issue 12)."""
    deferred = {
        (item.source, item.target): item.line
        for item in IMPORTS
        if not item.top_level and not item.type_only
    }
    new = [f"{source} imports {target} at line {line}, inside a function" for (source, target), line in deferred.items()]  # fmt: skip
    assert not new, "\n".join(new)


def test_the_checks_catch_what_they_look_for() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("fcnseg.models.backbones.vgg") == 1
    assert layer_of("fcnseg.models") == 2 and layer_of("fcnseg") == 10
    assert layer_of("fcnseg.weights") == layer_of("fcnseg.weights.caffe") == 3
    # relative imports resolve to the submodule they name, or the package
    node = ast.parse("from ..models import spec, FCN").body[0]
    assert _targets("fcnseg.weights.foreign", node) == ["fcnseg.models.spec", "fcnseg.models"]
    node = ast.parse("from . import geometry").body[0]
    assert _targets("fcnseg.models", node) == ["fcnseg.models.geometry"]


# ---------------------------------------------------------------------------------------------
# Each build option is declared once

# The options that only ModelSpec may take: no function of the library (builder, config,
# engine, files, commands) takes them as a parameter of its own; they travel in the spec.
SPEC_ONLY = ("pretrained_backbone", "backbone_weights", "fusion", "fusion_weights")
# The options one component implements, and where: that component takes its option (a
# backbone its geometry, the head its variant and upsampling, ``rarefy`` the output
# stride); nothing else declares them. Values: module prefixes, relative to fcnseg.
IMPLEMENTED = {
    "geometry": ("models.backbones",),
    "variant": ("models.fcn",),
    "upsample": ("models.fcn",),
    "learnable_upsample": ("models.fcn",),
    "skip_scales": ("models.fcn",),
    "output_stride": ("dense",),
}
# The same word for another thing: a HHA image's camera geometry, an EfficientNet-Lite's
# size (lite0/1/2), the FCN variant a demo trains (what it puts in a model name).
OTHER_MEANING = {
    ("hha", "geometry"),
    ("models.backbones.efficientnet", "variant"),
    ("commands.demo", "variant"),
}


def _parameters() -> list[tuple[str, str, str, int]]:
    """(module relative to fcnseg, function, parameter, line) of every function."""
    found = []
    for module, path in MODULES.items():
        local = module.removeprefix(PACKAGE).removeprefix(".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
                    found.append((local, node.name, arg.arg, node.lineno))
    return found


def test_every_build_option_is_a_spec_field() -> None:
    fields = {item.name for item in dataclasses.fields(ModelSpec)}
    assert set(SPEC_ONLY) | set(IMPLEMENTED) <= fields


def test_no_build_option_is_declared_twice() -> None:
    misplaced = []
    for module, function, parameter, line in _parameters():
        if module == "models.spec" or (module, parameter) in OTHER_MEANING:
            continue
        if parameter in SPEC_ONLY:
            misplaced.append(f"{module}:{line} {function}({parameter})")
        elif parameter in IMPLEMENTED:
            homes = IMPLEMENTED[parameter]
            if not any(module == h or module.startswith(h + ".") for h in homes):
                misplaced.append(f"{module}:{line} {function}({parameter})")
    assert not misplaced, "build options declared outside ModelSpec: " + ", ".join(misplaced)


def test_no_other_dataclass_repeats_the_build_options() -> None:
    """Configs and records hold a spec (or its dict), not copies of its fields. (What
    ``model_info`` reports of a built model, its resolved geometry, is a description.)"""
    options = {*SPEC_ONLY, *IMPLEMENTED}
    repeated = []
    for module, path in MODULES.items():
        local = module.removeprefix(PACKAGE).removeprefix(".")
        if local == "models.spec":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name != "ModelSpec":
                for statement in node.body:
                    target = getattr(statement, "target", None)
                    if isinstance(statement, ast.AnnAssign) and isinstance(target, ast.Name):
                        homes = IMPLEMENTED.get(target.id, ())
                        home = any(local == h or local.startswith(h + ".") for h in homes)
                        described = (node.name, target.id) == ("ModelInfo", "geometry")
                        if target.id in options and not home and not described:
                            repeated.append(f"{module}.{node.name}.{target.id}")
    assert not repeated, repeated


@pytest.mark.parametrize("option", sorted(IMPLEMENTED))
def test_each_implemented_option_has_its_component(option: str) -> None:
    """The allowance above is used: the option's component takes it."""
    homes = IMPLEMENTED[option]
    assert any(
        parameter == option and any(module == h or module.startswith(h + ".") for h in homes)
        for module, _, parameter, _ in _parameters()
    ), option
