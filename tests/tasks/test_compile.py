"""``compile=`` on the tasks: the compiled model trains like the eager one and keeps its parameter names.

On the CPU the model is traced with the ``aot_eager`` backend (TorchDynamo + AOTAutograd, no generated code, so no C++
compiler is needed); the CUDA-graph mode that the GPU recipes use is measured in benchmarks/scaling.py.
"""

import lightning as L
import pytest
import torch
import toy  # noqa: F401  (registers the toy architecture)

from gatedzoo.tasks import Classification
from gatedzoo.zoo import create_model

ARCH = "toy_attention_classifier"


def _fit(tmp_path, name, **task_args):
    L.seed_everything(0)
    task = Classification(ARCH, lr=3e-3, **task_args)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / name,
                        enable_checkpointing=False, deterministic=True)
    trainer.fit(task, toy.DigitsDataModule(batch_size=32))
    return task, trainer


def test_a_compiled_model_trains_to_the_eager_weights_under_the_same_names(tmp_path):
    eager, _ = _fit(tmp_path, "eager")
    compiled, trainer = _fit(tmp_path, "compiled", compile="default", compile_backend="aot_eager")
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    assert getattr(eager.model, "_compiled_call_impl", None) is None
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert list(a) == list(b)
    moved = 0.0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        moved = max(moved, (a[key].float() - create_model(ARCH).state_dict()[key].float()).abs().max().item())
    assert moved > 1e-3  # the six steps did train
    # a checkpoint of the compiled run loads into an eager model of the same architecture
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    plain = create_model(ARCH)
    plain.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    x = torch.rand(4, 64)
    compiled.model.eval()
    torch.testing.assert_close(plain(x), compiled.model(x), rtol=1e-4, atol=1e-5)


def test_an_unknown_compile_mode_is_refused_before_the_model_is_built():
    with pytest.raises(ValueError, match="compile='fast'; use one of .*reduce-overhead"):
        Classification(ARCH, compile="fast")


def test_a_task_compiles_the_modules_its_training_step_runs():
    """scfm pretraining calls masked_expression_loss, not forward: compile= must reach the blocks (it used to compile
    forward only, which the step never runs), and a second configure_model does not compile again."""
    from gatedzoo.tasks.base import is_compiled
    from gatedzoo.tasks.masked_expression import MaskedExpression

    task = MaskedExpression("scfm_sigmoid_tiny", model_args={"vocab_size": 100}, compile="default",
                            compile_backend="aot_eager")
    assert not is_compiled(task.model)
    task.configure_model()
    assert is_compiled(task.model)
    assert all(blk._compiled_call_impl is not None for blk in task.model.blocks)
    first = [blk._compiled_call_impl for blk in task.model.blocks]
    task.configure_model()
    assert [blk._compiled_call_impl for blk in task.model.blocks] == first
