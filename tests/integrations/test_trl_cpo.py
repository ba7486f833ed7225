"""FusedCPOTrainer against TRL's CPOTrainer (trl.experimental.cpo, TRL 1.16): three training steps of the
tiny Llama with SimPO (length-averaged, reference-free, margin) plus CPO's NLL term give the same
losses, gradient norms and logged metrics (fp32); refused settings are named."""
import pytest

pytest.importorskip("trl")

from test_trl_integration import assert_same_logs, tiny, torch_twins  # noqa: E402,F401  (fixtures)


def _cpo(tiny, cls, **kw):
    from trl.experimental.cpo import CPOConfig

    args = CPOConfig(output_dir=str(tiny["root"] / "cpo"), per_device_train_batch_size=2, max_steps=3,
                     learning_rate=1e-3, logging_steps=1, bf16=False, report_to=[], save_strategy="no",
                     gradient_checkpointing=False, max_length=80, seed=0, disable_tqdm=True, **kw)
    trainer = cls(model=tiny["policy"], args=args, train_dataset=tiny["ds"], processing_class=tiny["tok"])
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h], trainer


def test_simpo_same_training_as_cpo_trainer(tiny, torch_twins):
    from trl.experimental.cpo import CPOTrainer

    from rdpo_fast.integrations.trl import FusedCPOTrainer

    kw = dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=0.5)
    theirs, _ = _cpo(tiny, CPOTrainer, **kw)
    ours, trainer = _cpo(tiny, FusedCPOTrainer, **kw)
    assert trainer._rdpo_calls == 3 and trainer._rdpo_loss.cfg.loss_type == "simpo"
    assert "logits/chosen" in ours[0] and "nll_loss" in ours[0]
    assert_same_logs(ours, theirs, tiny, beta=2.0)


@pytest.mark.parametrize("settings,match", [({"loss_type": "ipo"}, "loss_type='ipo'"), ({"alpha": 0.1}, "alpha=0.1"),
                                            ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing=0.1")])
def test_cpo_refused_setting_is_named(tiny, settings, match):
    from trl.experimental.cpo import CPOConfig

    from rdpo_fast.integrations.trl import FusedCPOTrainer, UnsupportedSetting

    args = CPOConfig(output_dir=str(tiny["root"] / "cpo"), report_to=[], bf16=False, max_length=80, **settings)
    with pytest.raises(UnsupportedSetting, match=f"{match} is not supported"):
        FusedCPOTrainer(model=tiny["policy"], args=args, train_dataset=tiny["ds"], processing_class=tiny["tok"])
