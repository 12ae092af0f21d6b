"""Holes an outside probe found (issue #10): model files trusted before they were checked,
bad input that failed deep inside torch instead of as a ValueError, and import cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import worldmodel.checkpoint as checkpoint
from tests.conftest import random_frames, tiny_config, tiny_model
from worldmodel import DLH, load
from worldmodel.config import model_file_metadata
from worldmodel.state import Trajectory

ROOT = Path(__file__).resolve().parents[1]


def write_model_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def tiny_weights(**overrides) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    model = tiny_model(levels=2, **overrides)
    return dict(model.state_dict()), model_file_metadata(model.config)


# ---------------------------------------------------------------------- model files


def test_a_config_that_does_not_fit_its_tensors_fails_before_any_allocation(tmp_path, monkeypatch):
    tensors, metadata = tiny_weights()
    config = json.loads(metadata["config"])
    config["x_dim"] = 100_000  # the probe used 50M: 6.4 GB allocated before load_state_dict failed
    path = write_model_file(tmp_path / "big.safetensors", tensors, {**metadata, "config": json.dumps(config)})
    built = []

    class Spy(DLH):
        def __init__(self, cfg):
            super().__init__(cfg)
            built.append(self.device.type)

    monkeypatch.setattr(checkpoint, "DLH", Spy)
    with pytest.raises(ValueError, match=r"big\.safetensors.*another shape.*encoder\.\S+ stored \[32"):
        load(path)
    assert built == ["meta"], "a model was built on a real device before the shapes were checked"


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    tensors, metadata = tiny_weights()
    dropped = "hierarchy.top_context"
    tensors.pop(dropped)
    tensors["stray.weight"] = torch.zeros(3)
    path = write_model_file(tmp_path / "odd.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match="odd.safetensors") as err:
        load(path)
    assert f"missing tensor(s): {dropped}" in str(err.value)
    assert "unexpected tensor(s): stray.weight" in str(err.value)


def test_integer_tensors_are_named(tmp_path):
    tensors, metadata = tiny_weights()
    name = "hierarchy.top_context"
    tensors[name] = tensors[name].long()
    path = write_model_file(tmp_path / "ints.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=rf"ints\.safetensors.*{name} stored as I64"):
        load(path)


def test_a_config_with_absurdly_many_levels_fails_without_building_it(tmp_path):
    tensors, metadata = tiny_weights()
    config = {**json.loads(metadata["config"]), "levels": 10**7}
    metadata["config"] = json.dumps(config)
    path = write_model_file(tmp_path / "deep.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=r"deep\.safetensors.*10000000 levels or layers"):
        load(path)


@pytest.mark.parametrize(
    "version,match", [("3", r"format version '3'.*\['1', '2'\]"), (None, r"no format version.*\['1', '2'\]")]
)
def test_unknown_or_missing_format_version_is_an_error(tmp_path, version, match):
    tensors, metadata = tiny_weights()
    metadata.pop("version")
    if version is not None:
        metadata["version"] = version
    path = write_model_file(tmp_path / "v.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=r"v\.safetensors: " + match):
        load(path)


@pytest.mark.parametrize(
    "config,match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"levels": 0}', "DLHConfig.levels"),
        ('{"colour": 3}', "unknown key"),
    ],
)
def test_a_bad_stored_config_names_the_file(tmp_path, config, match):
    tensors, metadata = tiny_weights()
    path = write_model_file(tmp_path / "cfg.safetensors", tensors, {**metadata, "config": config})
    with pytest.raises(ValueError, match=rf"cfg\.safetensors: .*{match}"):
        load(path)


def test_non_finite_weights_are_an_error_unless_allowed(tmp_path):
    model = tiny_model(levels=2)
    with torch.no_grad():
        model.hierarchy.top_context[0] = float("nan")
        model.decoder.fc.bias[0] = float("inf")
    path = tmp_path / "nan.safetensors"
    model.save(path)
    match = r"nan\.safetensors.*2 tensor\(s\).*decoder\.fc\.bias.*allow_nonfinite"
    with pytest.raises(ValueError, match=match):
        load(path)
    with pytest.raises(ValueError, match="hierarchy.top_context"):
        checkpoint.read_model_file(path)  # what a training resume reads
    with pytest.warns(RuntimeWarning, match=r"nan\.safetensors.*hierarchy\.top_context"):
        loaded = load(path, allow_nonfinite=True)
    assert torch.isnan(loaded.hierarchy.top_context[0])


def test_read_model_file_checks_the_layout_for_training_resumes(tmp_path):
    tensors, metadata = tiny_weights()
    tensors["hierarchy.top_context"] = torch.zeros(7)
    path = write_model_file(tmp_path / "resume.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=r"resume\.safetensors.*hierarchy\.top_context stored \[7\]"):
        checkpoint.read_model_file(path)


def test_expected_shapes_match_a_real_model():
    cfg = tiny_config(prior_factor="recurrent", reward_head=True, action_dim=2, init_std=0.5)
    real = {k: tuple(v.shape) for k, v in DLH(cfg).state_dict().items()}
    assert checkpoint.expected_shapes(cfg) == real


# ---------------------------------------------------------------------- inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_frames_of_another_float_dtype_are_converted(dtype):
    model = tiny_model(levels=2)
    frames = random_frames(2, 3).to(dtype)
    torch.manual_seed(0)
    out = model.observe(frames)
    torch.manual_seed(0)
    ref = model.observe(frames.float())
    assert out.recon.dtype == torch.float32 and torch.equal(out.recon, ref.recon)
    torch.manual_seed(0)
    loss, _ = model.loss(frames)
    torch.manual_seed(0)
    assert float(loss.detach()) == float(model.loss(frames.float())[0].detach())
    state = model.observe_step(model.initial_state(2), frames[:, 0])
    assert state.s[0].dtype == torch.float32


def test_float64_frames_keep_their_range_check():
    frames = random_frames(1, 2).double()
    frames[0, 0, 0, 0, 0] = 1.0 + 1e-9
    with pytest.raises(ValueError, match="frames: expected values in"):
        tiny_model().observe(frames)


def test_float64_actions_and_features_are_converted():
    model = tiny_model(levels=2, action_dim=2, reward_head=True, continue_head=True)
    frames, actions = random_frames(2, 3), torch.randn(2, 3, 2, dtype=torch.float64)
    out = model.observe(frames, actions)
    traj = model.imagine(out.state, 2, actions[:, :2])
    assert model.predict_reward(traj.features.double()).shape == (2, 2)
    assert model.predict_continue(traj.features.double()).shape == (2, 2)


@pytest.mark.parametrize(
    "other,match",
    [
        ({"d_dim": 24}, r"state\.d of level 1: expected shape \(2, 32\) \(d_dim=32\), got \(2, 24\)"),
        ({"s_dim": 4}, r"state\.s of level 1: expected shape \(2, 8\) \(s_dim=8\)"),
        ({"c_dim": 16}, r"state\.top_down of level 1: .*c_dim=32"),
        ({"levels": 3}, "expected 2 levels"),
        ({"prior_factor": "recurrent"}, r"state\.factor of level 2: .*prior_factor='feedforward'"),
    ],
)
def test_a_state_of_another_model_is_a_value_error(other, match):
    model = tiny_model(levels=2)
    foreign = tiny_model(**{"levels": 2, **other}).observe(random_frames(2, 2)).state
    frames = random_frames(2, 3)
    calls = {
        "observe": lambda: model.observe(frames, state=foreign),
        "observe_step": lambda: model.observe_step(foreign, frames[:, 0]),
        "imagine": lambda: model.imagine(foreign, 2),
        "features": lambda: model.features(foreign),
        "decode": lambda: model.decode(foreign),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=match):
            call()
            pytest.fail(f"{name} accepted the state")


@pytest.mark.parametrize("bad", [None, "state", torch.zeros(2, 80)])
def test_features_of_something_else_is_a_value_error(bad):
    with pytest.raises(ValueError, match="state: expected a HierarchicalState"):
        tiny_model().features(bad)


@pytest.mark.parametrize(
    "features,match",
    [
        (torch.zeros(2, 7), r"features: expected shape \(\.\.\., 80\).*got \(2, 7\)"),
        (torch.zeros(()), r"features: expected shape \(\.\.\., 80\)"),
        (torch.zeros(2, 80, dtype=torch.long), "features: expected a floating tensor, got dtype torch.int64"),
        (None, r"features: expected a tensor \(\.\.\., 80\), got a NoneType"),
    ],
)
def test_heads_check_their_features(features, match):
    model = tiny_model(levels=2, reward_head=True, continue_head=True)
    with pytest.raises(ValueError, match=match):
        model.predict_reward(features)
    with pytest.raises(ValueError, match=match):
        model.predict_continue(features)


def test_decode_checks_a_trajectory():
    model = tiny_model(levels=2)
    traj = model.imagine(model.initial_state(2), 2)
    bad = Trajectory(traj.states, traj.changed, traj.features, torch.zeros(2, 2, 5), None)
    with pytest.raises(ValueError, match=r"trajectory\.decoder_input: expected a tensor \(B, horizon, 32\)"):
        model.decode(bad)


def test_inputs_on_another_device_are_a_value_error():
    model = tiny_model(levels=2, action_dim=2)
    frames = random_frames(2, 3)
    on_meta = "expected a tensor on the model's device cpu, got one on meta"
    with pytest.raises(ValueError, match="frames: " + on_meta):
        model.observe(frames.to("meta"), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="actions: .*device cpu, got one on meta"):
        model.observe(frames, torch.zeros(2, 3, 2, device="meta"))
    state = model.initial_state(2).to("meta")
    with pytest.raises(ValueError, match=r"state\.s: .*device cpu, got one on meta"):
        model.imagine(state, 2, torch.zeros(2, 2, 2))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"sample_e": "yes"}, "sample_e"), ({"gather_below": 2.0}, "gather_below"),
     ({"gather_below": None}, "gather_below")],
)
def test_imagine_checks_its_options(kwargs, match):
    model = tiny_model(levels=2)
    with pytest.raises(ValueError, match=match):
        model.imagine(model.initial_state(1), 2, **kwargs)


def test_initial_state_rejects_a_bool():
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got True"):
        tiny_model().initial_state(True)


# ---------------------------------------------------------------------- import cycles


def _import_graph(package: Path) -> dict[str, set[str]]:
    """module -> modules of `package` it imports anywhere (top level, functions, TYPE_CHECKING)."""
    files = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {}
    for mod, f in files.items():
        here = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [node, dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_worldmodel_has_no_import_cycles():
    graph = _import_graph(ROOT / "worldmodel")
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])
    assert "worldmodel.data.registry" in graph["worldmodel.data"]  # the graph sees imports


@pytest.mark.parametrize("module", ["worldmodel.checkpoint", "worldmodel.data.config"])
def test_modules_import_first_in_a_fresh_interpreter(module):
    code = f"import {module}, worldmodel; print(worldmodel.load.__module__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "worldmodel.checkpoint"


# ---------------------------------------------------------------------- issue 18: states and horizons


@pytest.mark.parametrize("call", ["imagine", "observe_step", "features"])
def test_a_state_holding_nan_is_a_value_error_naming_the_field(call):
    model = tiny_model(levels=2)
    state = model.observe(random_frames(2, 3)).state
    state.d[1][0, 3] = float("nan")  # set in place, as a careless caller might
    with pytest.raises(ValueError, match=r"state\.d of level 2: expected finite values, found NaN"):
        if call == "imagine":
            model.imagine(state, 3)
        elif call == "observe_step":
            model.observe_step(state, random_frames(2, 1)[:, 0])
        else:
            model.features(state)


def test_a_state_is_checked_once_per_call_not_per_step(monkeypatch):
    model = tiny_model(levels=2)
    state = model.observe(random_frames(1, 2)).state
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: calls.append(1) or real(x))
    model.imagine(state, 20)
    assert 0 < len(calls) <= 6 * model.config.levels  # one pass over the state's tensors


def test_a_float64_state_is_converted_as_frames_are():
    model = tiny_model(levels=2)
    state = model.observe(random_frames(2, 3)).state
    torch.manual_seed(0)
    expected = model.decode(model.imagine(state, 4))
    state.d[0] = state.d[0].double()
    torch.manual_seed(0)
    assert torch.equal(model.decode(model.imagine(state, 4)), expected)
    state.t = state.t.float()
    with pytest.raises(ValueError, match=r"state\.t: expected an integer tensor"):
        model.imagine(state, 4)


def test_a_horizon_that_cannot_fit_in_memory_is_refused_before_allocating(monkeypatch):
    import worldmodel.validation as validation

    model = tiny_model(levels=2)
    state = model.initial_state(2)
    monkeypatch.setattr(validation, "available_memory", lambda device: 2**30)
    with pytest.raises(ValueError, match=r"imagine: a rollout of horizon=1000000000 .* GiB .* fewer steps"):
        model.imagine(state, 10**9)
    assert model.imagine(state, 3).features.shape[1] == 3


def test_numpy_integers_are_accepted_wherever_ints_are_taken():
    np = pytest.importorskip("numpy")
    model = tiny_model(levels=2)
    state = model.initial_state(np.int64(2))
    traj = model.imagine(state, np.int64(3))
    assert traj.features.shape[:2] == (2, 3)
    assert tiny_config(levels=np.int64(2)).levels == 2 and type(tiny_config(levels=np.int64(2)).levels) is int
    assert state.index(np.int64(1)).batch_size == 1  # keeps the batch axis, as an int does
    from worldmodel.data import DataConfig, build_source
    from worldmodel.evaluation.loading import eval_sequences
    from worldmodel.evaluation.protocol import evaluate

    source = build_source(DataConfig(name="moving_ball", image_size=16, channels=1, seq_len=6), "test")
    batch, _ = eval_sequences(source, np.int64(2), np.int32(6), np.int64(0))
    result = evaluate(model, batch.frames, np.int64(3), np.int64(3), np.int64(2))
    assert result.best.shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="horizon: expected a positive int, got True"):
        model.imagine(state, True)
    with pytest.raises(ValueError, match="horizon: expected a positive int"):
        model.imagine(state, np.float64(3))


# ---------------------------------------------------------------------------- issue 27
def _full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_save_onto_a_full_disk_is_an_os_error_naming_the_file_and_loses_nothing(tmp_path, monkeypatch):
    import errno

    import worldmodel.model

    model = tiny_model(levels=2)
    path = tmp_path / "model.safetensors"
    model.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(worldmodel.model, "save_file", _full_disk)
    with pytest.raises(OSError, match=r"No space left on device") as caught:
        model.save(path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_a_saved_model_file_follows_the_umask(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        tiny_model(levels=2).save(tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == mode


@pytest.mark.parametrize("change, match", [
    (lambda c: "[" * 200_000 + "]" * 200_000, "nested too deeply"),
    (lambda c: json.dumps({**c, "loss": "DEEP"}).replace('"DEEP"', '{"a": ' * 50_000 + "1" + "}" * 50_000),
     "nested too deeply"),
    (lambda c: json.dumps({**c, "conv_depth": 10**12}), "cannot be built"),
    (lambda c: json.dumps({**c, "image_size": 16 * 2**40}), "cannot be built"),
])
def test_a_tampered_stored_config_is_a_value_error_naming_the_file(tmp_path, change, match):
    tensors, metadata = tiny_weights()
    config = change(json.loads(metadata["config"]))
    path = write_model_file(tmp_path / "tampered.safetensors", tensors, {**metadata, "config": config})
    with pytest.raises(ValueError, match=rf"tampered\.safetensors: .*{match}") as err:
        load(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize("sizes", [{"x_dim": 10**9}, {"image_size": 2**20}, {"levels": 10**6},
                                   {"conv_depth": 10**7}])
def test_a_model_too_large_for_memory_is_refused_with_its_size_before_building(sizes):
    import time

    from worldmodel.config import DLHConfig

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"DLH: this config has at least [\d,]+ weights, .* GiB, more than "
                                         r"the .* GiB free on cpu: lower its sizes"):
        DLH(DLHConfig(**sizes))
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("overrides", [
    {}, {"action_dim": 3, "action_levels": [1, 2]},
    {"prior_factor": "recurrent", "conv_norm": "layer", "reward_head": True}])
def test_the_parameter_estimate_is_a_lower_bound_of_the_real_count(overrides):
    from worldmodel.validation import parameter_count

    model = tiny_model(levels=2, **overrides)
    real = sum(p.numel() for p in model.parameters())
    assert 0.8 * real <= parameter_count(model.config) <= real


@pytest.mark.parametrize("where, match", [("banana", r"map_location: not a device: 'banana'"),
                                          (object(), r"map_location: not a device: <object"),
                                          ("cuda:63", r"map_location: device 'cuda:63' is not available")])
def test_load_onto_a_device_that_is_not_there_is_a_value_error(tmp_path, where, match):
    tiny_model(levels=2).save(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=match):
        load(tmp_path / "model.safetensors", map_location=where)
    assert load(tmp_path / "model.safetensors", map_location=torch.device("cpu")).device.type == "cpu"


@pytest.mark.parametrize("argument", ["frames", "is_first"])
def test_a_sparse_input_is_a_value_error_naming_it(argument):
    model = tiny_model(levels=2)
    inputs = {"frames": random_frames(2, 3), "is_first": torch.zeros(2, 3)}
    inputs[argument] = inputs[argument].to_sparse()
    with pytest.raises(ValueError, match=rf"{argument}: expected a dense tensor, got a sparse_coo one"):
        model.observe(**inputs)


def test_a_model_converted_to_float64_is_a_value_error_naming_the_remedy():
    model = tiny_model(levels=2).double()
    with pytest.raises(ValueError, match=r"weights are torch\.float64: DLH runs in float32.*\.float\(\)"):
        model.observe(random_frames(2, 3))
    assert model.float().observe(random_frames(2, 3)).features.dtype == torch.float32
