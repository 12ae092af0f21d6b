"""The nested config layout (`model.inference`, `model.loss`, `logging`, `probes`) and the
migration of the flat layout of earlier versions: from_dict, YAML, `--set`, stored run configs,
`resume_changes` and version-1 model files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import random_frames, tiny_config
from worldmodel import DLH, DLHConfig, InferenceConfig, LossConfig, load
from worldmodel.config import (
    MODEL_FILE_VERSION,
    MOVED_KEYS,
    current_key,
    from_dict,
    migrate,
    model_file_metadata,
    to_dict,
)
from worldmodel.training.config import (
    RESUME_FREE,
    LoggingConfig,
    ProbeConfig,
    TrainConfig,
    config_from_dict,
    dump_config,
    load_config,
    resume_changes,
)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"DLHConfig": DLHConfig, "TrainConfig": TrainConfig}

# DLHConfig's fields in model file version 1 (worldmodel/config.py before the nesting), in order
V1_FIELDS = [
    "levels", "image_size", "channels", "action_dim", "action_levels", "x_dim", "c_dim", "d_dim", "s_dim",
    "enc_hidden", "dec_hidden", "state_hidden", "factor_hidden", "prior_factor", "conv_depth", "conv_norm",
    "conv_act", "init", "min_std", "obs_std", "timescale", "clockwork_k", "assignment", "upper_min_std",
    "decision", "decision_margin", "decision_tolerance", "decision_gamma", "decision_warmup",
    "decision_rate", "kl_balance", "static_prior_grad", "free_nats", "init_std", "boundary",
    "reward_head", "continue_head", "head_hidden", "reward_scale", "continue_scale",
]


# DLHConfig settings added after version 1 (in their sections or at the top; issue 23's options):
# they never had a flat name, and `flat` leaves them out
ADDED_AFTER_VERSION_1 = {"inference.restart_below", "transition_hidden", "loss.level_kl_scale",
                         "level_s_dims", "level_d_dims", "transition_norm",
                         "upper_prior", "lower_prior",
                         "posterior_reads_d", "loss.overshoot", "loss.overshoot_scale",
                         "loss.window_free_nats", "loss.held_twice"}


def flat(cls: type, tree: dict) -> dict:
    """`tree` (a to_dict of `cls`) in the flat layout of earlier versions, without the settings
    added since (`tree` is not modified)."""
    out = json.loads(json.dumps(tree))
    if cls is DLHConfig:
        for added in ADDED_AFTER_VERSION_1:
            section, _, key = added.rpartition(".")
            (out[section] if section else out).pop(key)
    for old, new in MOVED_KEYS[cls.__name__].items():
        section, key = new.split(".")
        out[old] = out[section].pop(key)
    for section in {new.split(".")[0] for new in MOVED_KEYS[cls.__name__].values()}:
        assert out.pop(section) == {}, f"{section} holds keys the table does not move"
    return out


# ---------------------------------------------------------------------- the table
@pytest.mark.parametrize("name", sorted(MOVED_KEYS))
def test_every_moved_key_names_a_field_of_its_section_and_every_section_field_is_covered(name):
    cls = CLASSES[name]
    sections = {f.name: f.type for f in dataclasses.fields(cls)}
    targets = set(MOVED_KEYS[name].values())
    for old, new in MOVED_KEYS[name].items():
        section, key = new.split(".")
        assert section in sections and old not in sections, (old, new)
        assert key in to_dict(getattr(cls(), section)), new
    moved_sections = {new.split(".")[0] for new in targets}
    for section in moved_sections:  # the sections hold exactly the moved keys (and later additions)
        keys = {f"{section}.{k}" for k in to_dict(getattr(cls(), section))} - ADDED_AFTER_VERSION_1
        assert keys <= targets


def test_the_flat_layout_of_version_1_is_exactly_the_architecture_plus_the_moved_keys():
    assert list(flat(DLHConfig, DLHConfig().to_dict())) != []
    assert sorted(flat(DLHConfig, DLHConfig().to_dict())) == sorted(V1_FIELDS)


# ---------------------------------------------------------------------- from_dict and to_dict
def test_flat_and_nested_mappings_build_the_same_config_and_to_dict_round_trips():
    nested = tiny_config(boundary="copy", timescale="clockwork", clockwork_k=3, obs_std=0.1, free_nats=0.5,
                         decision="map", reward_scale=2.0)
    assert nested.inference == InferenceConfig(boundary="copy", timescale="clockwork", clockwork_k=3,
                                               decision="map")
    assert nested.loss == LossConfig(obs_std=0.1, free_nats=0.5, reward_scale=2.0)
    tree = nested.to_dict()
    assert set(tree["inference"]) == {f.name for f in dataclasses.fields(InferenceConfig)}
    assert from_dict(DLHConfig, tree) == nested
    assert from_dict(DLHConfig, flat(DLHConfig, tree)) == nested
    assert from_dict(DLHConfig, json.loads(json.dumps(tree))) == nested
    # a section given in part keeps its defaults; old and new names mix
    part = from_dict(DLHConfig, {"levels": 2, "inference": {"boundary": "copy"}, "obs_std": 0.2})
    assert part.inference == InferenceConfig(boundary="copy") and part.loss == LossConfig(obs_std=0.2)


def test_an_old_key_beside_its_new_one_must_agree():
    assert from_dict(DLHConfig, {"obs_std": 0.1, "loss": {"obs_std": 0.1}}).loss.obs_std == 0.1
    with pytest.raises(ValueError, match=r"obs_std \(the old name of loss\.obs_std\) is 0\.1 but "
                                         r"loss\.obs_std is 0\.2; give loss\.obs_std only"):
        from_dict(DLHConfig, {"obs_std": 0.1, "loss": {"obs_std": 0.2}})
    with pytest.raises(ValueError, match=r"DLHConfig: unknown key\(s\) \['obs_sdt'\]"):
        from_dict(DLHConfig, {"obs_sdt": 0.1})
    with pytest.raises(ValueError, match=r"DLHConfig\.inference: unknown key\(s\) \['levels'\]"):
        from_dict(DLHConfig, {"inference": {"levels": 2}})


def test_sections_are_validated_and_must_be_their_dataclass():
    with pytest.raises(ValueError, match=r"DLHConfig\.inference\.boundary must be one of"):
        InferenceConfig(boundary="sometimes")
    with pytest.raises(ValueError, match=r"DLHConfig\.loss\.obs_std must be a finite number > 0"):
        LossConfig(obs_std=0.0)
    with pytest.raises(ValueError, match=r"DLHConfig\.inference must be a InferenceConfig"):
        DLHConfig(inference={"boundary": "copy"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"logging\.log_every: expected a positive int, got 0"):
        LoggingConfig(log_every=0)
    with pytest.raises(ValueError, match=r"probes\.event_length: expected an int >= 2, got 1"):
        ProbeConfig(event_length=1)


def test_replace_changes_a_section_as_a_whole():
    cfg = tiny_config(boundary="copy")
    clock = cfg.replace(inference=cfg.inference.replace(timescale="clockwork"))
    assert clock.inference == InferenceConfig(boundary="copy", timescale="clockwork")
    assert cfg.inference.timescale == "dynamic"


def test_the_api_contract_config_is_unchanged():
    cfg = DLHConfig(levels=3, image_size=64, channels=1, action_dim=0)
    assert cfg.inference == InferenceConfig() and cfg.loss == LossConfig()
    assert cfg.inference.boundary == "reinfer"  # the default: the paper's reading (docs/model.md)


# ---------------------------------------------------------------------- YAML, --set, run configs
TINY = ["model.levels=2", "model.image_size=16", "model.channels=3", "model.x_dim=16", "model.c_dim=16",
        "model.d_dim=16", "model.s_dim=4", "model.enc_hidden=[16]", "model.dec_hidden=[16]",
        "model.state_hidden=[8]", "model.factor_hidden=[8]", "model.conv_depth=4",
        "data.image_size=16", "data.channels=3", "data.seq_len=6", "data.batch_size=2"]


def test_set_items_with_old_keys_set_the_nested_settings():
    cfg = load_config(None, [*TINY, "model.obs_std=0.1", "model.boundary=copy", "log_every=7",
                             "track_every=0", "collapse_kl=1.5"])
    assert cfg.model.loss.obs_std == 0.1 and cfg.model.inference.boundary == "copy"
    assert cfg.logging.log_every == 7 and cfg.probes.track_every == 0 and cfg.probes.collapse_kl == 1.5
    new = load_config(None, [*TINY, "model.loss.obs_std=0.1", "model.inference.boundary=copy",
                             "logging.log_every=7", "probes.track_every=0", "probes.collapse_kl=1.5"])
    assert new == cfg
    assert current_key(TrainConfig, "model.obs_std") == "model.loss.obs_std"
    assert current_key(TrainConfig, "log_every") == "logging.log_every"
    assert current_key(TrainConfig, "model.levels") == "model.levels"
    assert current_key(TrainConfig, "optim.lr") == "optim.lr"


def test_a_flat_yaml_file_loads_as_before_and_a_later_set_overrides_it(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"levels": 2, "image_size": 16, "channels": 3, "obs_std": 0.05, "boundary": "copy"},
        "data": {"image_size": 16, "channels": 3}, "log_every": 25, "track_every": 250,
    }))
    cfg = load_config(path)
    assert (cfg.model.loss.obs_std, cfg.model.inference.boundary) == (0.05, "copy")
    assert (cfg.logging.log_every, cfg.probes.track_every) == (25, 250)
    later = load_config(path, ["model.loss.obs_std=0.1", "model.obs_std=0.2", "logging.log_every=5"])
    assert later.model.loss.obs_std == 0.2 and later.logging.log_every == 5
    # what a run writes is nested, and reads back the same
    written = yaml.safe_load(dump_config(cfg))
    assert "obs_std" not in written["model"] and written["model"]["loss"]["obs_std"] == 0.05
    assert "log_every" not in written and written["logging"]["log_every"] == 25
    assert config_from_dict(written) == cfg


def test_shipped_configs_are_nested_and_state_the_boundary():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        assert not set(tree) & set(MOVED_KEYS["TrainConfig"]), path.name
        assert not set(tree["model"]) & set(MOVED_KEYS["DLHConfig"]), path.name
        assert tree["model"]["inference"]["boundary"] in ("copy", "reinfer"), path.name
        assert migrate(TrainConfig, tree) == tree


def test_resume_compares_a_stored_flat_config_in_the_nested_form():
    cfg = load_config(None, [*TINY, "model.obs_std=0.1", "steps=10"])
    stored = flat(TrainConfig, cfg.to_dict())
    stored["model"] = flat(DLHConfig, stored["model"])
    assert "log_every" in stored and "obs_std" in stored["model"]
    assert resume_changes(stored, cfg) == {}
    longer = load_config(None, [*TINY, "model.obs_std=0.1", "steps=20", "log_every=5",
                                "probes.event_every=0"])
    assert resume_changes(stored, longer) == {"steps": (10, 20), "logging.log_every": (50, 5),
                                              "probes.event_every": (500, 0)}
    other = load_config(None, [*TINY, "model.obs_std=0.2", "steps=10"])
    with pytest.raises(ValueError, match=r"model\.loss\.obs_std 0\.1 -> 0\.2"):
        resume_changes(stored, other, requested=["model.obs_std"])
    assert "logging" in RESUME_FREE and "probes" in RESUME_FREE


# ---------------------------------------------------------------------- model files
def write_version_1(path: Path, model: DLH) -> Path:
    """`model` as a version-1 file: the same tensors, the config flat, version "1"."""
    config = flat(DLHConfig, model.config.to_dict())
    config = {name: config[name] for name in V1_FIELDS}  # the order version 1 wrote
    metadata = {"format": "worldmodel.dlh", "version": "1", "config": json.dumps(config)}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("extra", [
    {"boundary": "copy", "obs_std": 0.1},
    {"decision": "tolerant", "decision_tolerance": 1.5, "free_nats": 0.5, "levels": 2},
    {"action_dim": 2, "reward_head": True, "reward_scale": 3.0, "timescale": "clockwork", "clockwork_k": 2},
])
def test_a_version_1_file_loads_and_computes_as_before(tmp_path, extra):
    torch.manual_seed(0)
    model = DLH(tiny_config(**extra))
    frames = random_frames(2, 6)
    actions = torch.rand(2, 6, 2) if model.config.action_dim else None
    if model.config.inference.decision == "tolerant":  # running statistics that are not the initial ones
        model.train()
        model.loss(frames)
    path = write_version_1(tmp_path / "v1.safetensors", model)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["version"] == "1" and "obs_std" in json.loads(f.metadata()["config"])
    old = load(path)
    assert old.config == model.config
    for m in (model, old):
        m.train()
    torch.manual_seed(1)
    loss, metrics = model.loss(frames, actions)
    torch.manual_seed(1)
    loss_old, metrics_old = old.loss(frames, actions)
    assert torch.equal(loss, loss_old) and metrics == metrics_old
    model.eval(), old.eval()
    future = actions[:, :4] if actions is not None else None
    torch.manual_seed(2)
    a = model.imagine(model.observe(frames, actions).state, 4, future)
    torch.manual_seed(2)
    b = old.imagine(old.observe(frames, actions).state, 4, future)
    assert torch.equal(a.features, b.features) and torch.equal(a.changed, b.changed)
    # saved again, it is a version-2 file with the nested config
    old.save(tmp_path / "v2.safetensors")
    with safe_open(str(tmp_path / "v2.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["version"] == MODEL_FILE_VERSION == "2"
    assert json.loads(meta["config"])["loss"]["obs_std"] == model.config.loss.obs_std
    assert model_file_metadata(model.config) == meta
    assert load(tmp_path / "v2.safetensors").config == model.config


# ---------------------------------------------------------------------------- issue 27
def test_old_flat_keywords_of_the_constructor_move_to_their_section_with_a_deprecation_warning():
    moved = r"DLHConfig: obs_std= is now loss\.obs_std, timescale= is now inference\.timescale; give it in"
    with pytest.warns(DeprecationWarning, match=moved):
        cfg = DLHConfig(levels=2, obs_std=0.05, timescale="clockwork")
    assert cfg.loss == LossConfig(obs_std=0.05) and cfg.inference == InferenceConfig(timescale="clockwork")
    with pytest.warns(DeprecationWarning, match=r"free_nats= is now loss\.free_nats"):
        kept = DLHConfig(free_nats=0.5, loss=LossConfig(obs_std=0.2))
    assert kept.loss == LossConfig(obs_std=0.2, free_nats=0.5)
    with pytest.warns(DeprecationWarning), pytest.raises(
            ValueError, match=r"obs_std=0\.1 \(the old name of loss\.obs_std\) but loss\.obs_std is 0\.2"):
        DLHConfig(obs_std=0.1, loss=LossConfig(obs_std=0.2))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"loss\.obs_std must be"):
        DLHConfig(obs_std=-1.0)
    with pytest.raises(TypeError, match="nonsense"):  # a keyword that never existed stays a TypeError
        DLHConfig(nonsense=1)


def test_a_boundary_under_a_fixed_schedule_is_warned_about_naming_the_fix():
    import warnings

    for timescale in ("clockwork", "every_step"):
        with pytest.warns(UserWarning, match=rf"boundary='copy' has no effect under timescale='{timescale}'.*"
                                             r"leave boundary out \(or set it to 'reinfer'\)"):
            InferenceConfig(timescale=timescale, boundary="copy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InferenceConfig(timescale="clockwork")  # the default boundary
        InferenceConfig(timescale="dynamic", boundary="anchor")
