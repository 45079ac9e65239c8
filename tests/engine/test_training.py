"""The training loop: exact resume (mid-epoch and between epochs), metric hooks, stop, spec guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hcd_core.checkpoint import CHECKPOINT_NAME, CheckpointMismatch
from hcd_core.engine import Progress, RunHooks, run_job
from hcd_core.models import create_timm_model
from hcd_core.spec import parse_spec
from hcd_core.training import LrSchedule

torch.set_num_threads(1)

STEPS_PER_EPOCH = 4
EPOCHS = 2
EXPECTED_STEP_TERMS = {"loss", "ce", "kd", "sdd_ce", "sdd_kl", "ol", "lr", "images_per_s"}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_timm_model("test_resnet", 5, 16)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _spec(teacher_file: Path, **training):
    return parse_spec({
        "method": {"name": "hcd", "num_stages": 2},
        "student": {"arch": "test_vit"},
        "teacher": {"arch": "test_resnet", "weights": {"source": "file", "path": str(teacher_file)}},
        "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 5, "train_size": 96, "val_size": 20},
        "training": {"epochs": EPOCHS, "batch_size": 8, "max_steps_per_epoch": STEPS_PER_EPOCH, "device": "cpu",
                     "augment": "crop_flip", "ema_decay": 0.9, "warmup_epochs": 1, **training},
        "seed": 3,
    })


def _final_state(out: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {f"export.{k}": v for k, v in load_file(str(out / "student.safetensors")).items()}
    saved = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    state.update({f"student.{k}": v for k, v in saved["student"].items()})
    state.update({f"method.{k}": v for k, v in saved["method"].items()})
    return state


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def __call__(self) -> bool:
        self.seen += 1
        return self.seen == self.step


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher_file):
    root = tmp_path_factory.mktemp("ref")
    points = []
    result = run_job(_spec(teacher_file), output_dir=root / "out", checkpoint_dir=root / "ckpt",
                     hooks=RunHooks(on_metrics=points.extend))
    return result, _final_state(root / "out", root / "ckpt"), points


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_mid_epoch_is_exact(tmp_path, teacher_file, reference):
    ref_result, ref_state, _ = reference
    hooks = RunHooks(should_stop=_StopAt(3), stop_check_every=1)
    stopped = run_job(_spec(teacher_file), output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", hooks=hooks)
    assert stopped.status == "stopped" and stopped.step == 3 and stopped.epoch == 0
    assert not (tmp_path / "out" / "student.safetensors").exists()
    resumed = run_job(_spec(teacher_file), output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    assert resumed.status == "completed" and resumed.step == EPOCHS * STEPS_PER_EPOCH
    assert resumed.final_metrics == ref_result.final_metrics
    _assert_equal_states(_final_state(tmp_path / "out", tmp_path / "ckpt"), ref_state)


def test_resume_between_epochs_is_exact(tmp_path, teacher_file, reference):
    ref_result, ref_state, _ = reference

    class Killed(Exception):
        pass

    phases = []

    def on_phase(name: str) -> None:
        phases.append(name)
        # "training" again after "evaluating": the epoch-end checkpoint is on disk; die here.
        if name == "training" and "evaluating" in phases:
            raise Killed

    with pytest.raises(Killed):
        run_job(_spec(teacher_file), output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                hooks=RunHooks(on_phase=on_phase))
    saved = torch.load(tmp_path / "ckpt" / CHECKPOINT_NAME, weights_only=True)
    assert saved["loop"]["epoch"] == 1 and saved["loop"]["step_in_epoch"] == 0
    resumed = run_job(_spec(teacher_file), output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    assert resumed.final_metrics == ref_result.final_metrics
    _assert_equal_states(_final_state(tmp_path / "out", tmp_path / "ckpt"), ref_state)


def test_metrics_hook_gets_every_term_each_step(reference, tmp_path):
    _, _, points = reference
    steps = {}
    for p in points:
        steps.setdefault(p.step, set()).add(p.name)
    assert sorted(steps) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, names in steps.items():
        assert EXPECTED_STEP_TERMS <= names, step
    epoch_points = [p for p in points if p.name in ("val_top1", "val_top5", "val_loss", "train_loss")]
    assert len(epoch_points) == 4 * EPOCHS
    assert [p.step for p in points if p.name == "val_top1"] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert [p.name for p in points].count("best_val_top1") == 1
    assert all(0.0 <= p.value <= 100.0 for p in points if p.name.startswith("val_top"))


def test_metrics_log_matches_hook_after_resume(tmp_path, teacher_file, reference):
    """metrics.jsonl holds each step once even when a run was stopped and resumed."""
    import json

    run_job(_spec(teacher_file), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
            hooks=RunHooks(should_stop=_StopAt(2), stop_check_every=3))  # stops at step 6
    run_job(_spec(teacher_file), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c")
    lines = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    _, _, points = reference
    assert [(p["name"], p["step"]) for p in lines] == [(p.name, p.step) for p in points]


def test_stop_saves_checkpoint_where_it_stopped(tmp_path, teacher_file):
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) == 1

    result = run_job(_spec(teacher_file, epochs=1), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                     hooks=RunHooks(should_stop=should_stop, stop_check_every=2))
    assert result.status == "stopped" and result.step == 2 and result.artifacts == {}
    saved = torch.load(tmp_path / "c" / CHECKPOINT_NAME, weights_only=True)
    assert saved["loop"]["global_step"] == 2 and saved["loop"]["step_in_epoch"] == 2


def test_before_checkpoint_hook_runs_before_every_checkpoint_with_all_points_reported(tmp_path, teacher_file):
    """A caller that buffers metrics persists them in this hook: by then every point up to the
    checkpoint's position has been reported, and the checkpoint file is not yet written."""
    reported_steps: list[int] = []
    calls: list[tuple[int, bool]] = []
    ckpt = tmp_path / "c" / CHECKPOINT_NAME

    def before_checkpoint() -> None:
        saved_step = torch.load(ckpt, weights_only=True)["loop"]["global_step"] if ckpt.exists() else -1
        calls.append((max(reported_steps), saved_step))

    hooks = RunHooks(on_metrics=lambda points: reported_steps.extend(p.step for p in points),
                     before_checkpoint=before_checkpoint,
                     should_stop=lambda: max(reported_steps, default=0) >= 7, stop_check_every=1)
    result = run_job(_spec(teacher_file, epochs=3), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                     hooks=hooks)
    saved = torch.load(ckpt, weights_only=True)["loop"]["global_step"]
    assert result.status == "stopped" and saved == result.step
    # One call per epoch end and one for the stop; each sees every step reported so far, and the
    # checkpoint on disk still at the previous position (it is written after the hook).
    assert len(calls) == result.epoch + 1
    assert calls[-1] == (result.step, calls[-2][0])
    assert all(before > on_disk for before, on_disk in calls)


def test_checkpoint_of_another_spec_is_refused(tmp_path, teacher_file):
    run_job(_spec(teacher_file, epochs=1), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
            hooks=RunHooks(should_stop=lambda: True, stop_check_every=1))
    other = _spec(teacher_file, epochs=1, lr=0.01)
    with pytest.raises(CheckpointMismatch, match="different job spec"):
        run_job(other, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c")


def test_ce_resume_exact_with_resnet_and_sgd_step_schedule(tmp_path):
    doc = {
        "method": {"name": "ce"},
        "student": {"arch": "test_resnet"},
        "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64, "val_size": 16},
        "training": {"epochs": 3, "batch_size": 8, "max_steps_per_epoch": 3, "device": "cpu", "optimizer": "adamw",
                     "lr": 0.003, "schedule": "step", "step_milestones": [2], "augment": "rrc_flip",
                     "label_smoothing": 0.1},
    }
    a = run_job(parse_spec(doc), output_dir=tmp_path / "a", checkpoint_dir=tmp_path / "ac")
    run_job(parse_spec(doc), output_dir=tmp_path / "b", checkpoint_dir=tmp_path / "bc",
            hooks=RunHooks(should_stop=_StopAt(4), stop_check_every=1))
    b = run_job(parse_spec(doc), output_dir=tmp_path / "b", checkpoint_dir=tmp_path / "bc")
    assert a.final_metrics == b.final_metrics
    _assert_equal_states(_final_state(tmp_path / "a", tmp_path / "ac"), _final_state(tmp_path / "b", tmp_path / "bc"))


def test_lr_schedule_warmup_then_cosine_per_iteration():
    spec = parse_spec({"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                       "dataset": {"name": "synthetic"},
                       "training": {"epochs": 4, "lr": 0.1, "min_lr": 0.01, "warmup_epochs": 1}}).resolved()
    s = LrSchedule(spec.training, steps_per_epoch=10)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(9) == pytest.approx(0.1)
    assert s.lr_at(10) == pytest.approx(0.1)
    assert s.lr_at(25) == pytest.approx(0.01 + 0.09 * 0.5)  # half way through the cosine
    assert s.lr_at(40) == pytest.approx(0.01)
    lrs = [s.lr_at(i) for i in range(10, 40)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_progress_at_start_after_each_step_and_at_completion(tmp_path, teacher_file):
    seen: list[Progress] = []
    run_job(_spec(teacher_file), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
            hooks=RunHooks(on_progress=seen.append, should_stop=_StopAt(3), stop_check_every=1))
    total = EPOCHS * STEPS_PER_EPOCH
    # total_steps is known before the first step; a stopped run reports no completion
    assert seen[0] == Progress(epoch=0, epochs=EPOCHS, step=0, total_steps=total)
    assert [p.step for p in seen] == [0, 1, 2, 3]

    seen.clear()
    run_job(_spec(teacher_file), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
            hooks=RunHooks(on_progress=seen.append))
    assert seen[0] == Progress(epoch=0, epochs=EPOCHS, step=3, total_steps=total)  # resumed mid-epoch
    assert [(p.epoch, p.step) for p in seen[1:-1]] == [(s // STEPS_PER_EPOCH, s + 1) for s in range(3, total)]
    assert seen[-1] == Progress(epoch=EPOCHS, epochs=EPOCHS, step=total, total_steps=total)


# --------------------------------------------------------------------------- weight decay groups
def test_weight_decay_groups_on_a_vit_student_with_hcd(teacher_file):
    from hcd_core.features import build_student
    from hcd_core.method_configs import HcdConfig
    from hcd_core.methods import build_method
    from hcd_core.teacher import build_teacher
    from hcd_core.training import build_optimizer, trainable_parameters, weight_decay_groups

    teacher = build_teacher("test_resnet", 5, input_size=16, input_norm=((0.5,) * 3, (0.5,) * 3),
                            weights_path=teacher_file)
    student = build_student("test_vit", 5, 16, num_stages=2)
    method = build_method(HcdConfig(num_stages=2, cfm="mlp"), student, teacher, 5)
    groups = weight_decay_groups(student, method)
    no_decay, decay = set(groups.no_decay_names), set(groups.decay_names)
    # timm's no_weight_decay() names, every bias (the CFMs' (K, out) ones too) and the norms
    assert {"0.model.pos_embed", "0.model.cls_token"} <= no_decay
    assert {"1.cfm.0.bias", "1.cfm.2.bias"} <= no_decay
    assert method.cfm[0].bias.ndim == 2
    assert {"0.model.patch_embed.proj.bias", "0.model.blocks.0.attn.qkv.bias", "0.model.head.bias"} <= no_decay
    assert {"0.model.blocks.0.norm1.weight", "0.model.blocks.0.norm1.bias", "0.model.norm.weight"} <= no_decay
    assert any(n.startswith("1.projectors.") and n.endswith(".weight") for n in no_decay)  # their BNs
    # conv and linear weights are decayed
    assert {"0.model.patch_embed.proj.weight", "0.model.blocks.0.attn.qkv.weight", "0.model.head.weight",
            "1.cfm.0.weight", "1.cfm.2.weight"} <= decay
    convs = [n for n, m in method.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(f"1.{n}.weight" in decay for n in convs)
    # every trainable parameter in exactly one group, the teacher in none
    ids = [id(p) for p in groups.decay + groups.no_decay]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in trainable_parameters(student, method)}
    assert not {id(p) for p in teacher.parameters()} & set(ids)

    spec = _spec(teacher_file).resolved()
    optimizer = build_optimizer([student, method], spec.training)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == spec.training.weight_decay and plain["weight_decay"] == 0.0
    assert [id(p) for p in plain["params"]] == [id(p) for p in groups.no_decay]


# --------------------------------------------------------------------------- paired initialisation
def _initial_student(spec, teacher_file):
    from hcd_core.engine import build

    job = build(spec, teacher_weights=teacher_file if spec.teacher is not None else None, teacher_card=None,
                data_root=None, hooks=RunHooks(), emit=lambda points: None, save=lambda state: None)
    return {k: v.clone() for k, v in job.student.state_dict().items()}


def test_every_method_starts_from_the_same_student_for_a_seed(teacher_file):
    def spec(method: dict, seed: int):
        doc = _spec(teacher_file).model_dump(mode="json")
        doc.update(method=method, seed=seed)
        if method["name"] == "ce":
            doc.pop("teacher")
        return parse_spec(doc).resolved()

    torch.manual_seed(123)  # whatever the caller's global RNG holds
    ce = _initial_student(spec({"name": "ce"}, 3), teacher_file)
    kd = _initial_student(spec({"name": "kd"}, 3), teacher_file)
    torch.manual_seed(456)
    hcd = _initial_student(spec({"name": "hcd", "num_stages": 1, "proj_dim": 16}, 3), teacher_file)
    _assert_equal_states(ce, kd)
    _assert_equal_states(ce, hcd)
    other = _initial_student(spec({"name": "ce"}, 4), teacher_file)
    assert ce.keys() == other.keys()
    assert not torch.equal(ce["model.patch_embed.proj.weight"], other["model.patch_embed.proj.weight"])


# --------------------------------------------------------------------------- gradient norm
def test_grad_norm_is_the_pre_clip_global_norm_and_only_when_clipping(teacher_file):
    import copy

    from hcd_core.features import build_student
    from hcd_core.method_configs import CeConfig
    from hcd_core.methods import build_method
    from hcd_core.training import Precision, StepRunner, build_optimizer, trainable_parameters

    spec = _spec(teacher_file).resolved()
    torch.manual_seed(0)
    student = build_student("test_resnet", 5, 16)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 5

    # the reference: the same forward and backward on a copy, no step
    ref = copy.deepcopy(student)
    ref.train()
    torch.nn.functional.cross_entropy(ref(x).logits, y).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))

    def runner(clip: float | None) -> StepRunner:
        s = copy.deepcopy(student)
        method = build_method(CeConfig(), s, None, 5)
        return StepRunner(student=s, teacher=None, method=method, optimizer=build_optimizer([s, method], spec.training),
                          precision=Precision("cpu", None, False, False), params=trainable_parameters(s, method),
                          grad_clip=clip)

    clipped = runner(1e-3)
    terms = clipped(x, y, epoch=0.0)
    assert terms["grad_norm"].dim() == 0
    torch.testing.assert_close(terms["grad_norm"], expected, rtol=1e-5, atol=0)
    assert float(expected) > 1e-3  # it did clip: the update used the clipped gradient
    assert "grad_norm" not in runner(None)(x, y, epoch=0.0)


def test_grad_norm_is_a_step_metric_when_clipping(tmp_path, teacher_file):
    points = []
    run_job(_spec(teacher_file, epochs=1, grad_clip=2.0), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
            hooks=RunHooks(on_metrics=points.extend))
    norms = [p for p in points if p.name == "grad_norm"]
    assert [p.step for p in norms] == list(range(1, STEPS_PER_EPOCH + 1))
    assert all(p.value > 0 for p in norms)


def test_step_metrics_are_read_after_the_next_step_is_queued(tmp_path, teacher_file):
    """No host sync per step: step t's terms are read (and reported) only once step t+1 is queued;
    the last step of an epoch is read before evaluation."""
    from hcd_core.engine import build, train
    from hcd_core.export import MetricsLog

    events: list[tuple[str, int]] = []

    def emit(points) -> None:
        steps = {p.step for p in points if p.name == "loss"}
        events.extend(("report", s) for s in sorted(steps))
        if any(p.name == "val_top1" for p in points):
            events.append(("eval", points[0].step))

    job = build(_spec(teacher_file).resolved(), teacher_weights=None, teacher_card=None, data_root=None,
                hooks=RunHooks(), emit=emit, save=lambda state: None)
    runner = job.trainer.runner
    calls = {"n": 0}

    class Recording:
        def __getattr__(self, name):
            return getattr(runner, name)

        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            events.append(("queue", calls["n"]))
            return runner(*args, **kwargs)

    job.trainer.runner = Recording()
    assert train(job, None, MetricsLog(tmp_path / "m.jsonl")) == "completed"
    per_epoch = [("queue", 1)]
    for step in range(2, STEPS_PER_EPOCH + 1):
        per_epoch += [("queue", step), ("report", step - 1)]
    per_epoch += [("report", STEPS_PER_EPOCH), ("eval", STEPS_PER_EPOCH)]
    shifted = [(kind, n + STEPS_PER_EPOCH) for kind, n in per_epoch]
    assert events == per_epoch + shifted


def test_checkpoints_written_before_the_scaling_fields_still_match(teacher_file):
    """devices, data_pipeline and compile joined the spec after checkpoints existed: at their "as
    before" values the hash a checkpoint is bound to is the one of a spec without them; another
    number of processes is another run; compiling or not is the same run."""
    from hcd_core.engine import checkpoint_spec_hash
    from hcd_core.hashing import sha256_json

    spec = _spec(teacher_file).resolved()
    old = spec.model_dump(mode="json")
    for name in ("devices", "compile", "data_pipeline"):
        old["training"].pop(name)
    assert checkpoint_spec_hash(spec) == sha256_json(old)
    assert checkpoint_spec_hash(_spec(teacher_file, compile=True).resolved()) == sha256_json(old)
    assert checkpoint_spec_hash(_spec(teacher_file, devices=2).resolved()) != sha256_json(old)
    assert checkpoint_spec_hash(_spec(teacher_file, data_pipeline="host").resolved()) != sha256_json(old)
