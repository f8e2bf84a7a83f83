import pytest

from rst_lib.config import ConfigError, RunConfig, load_config, parse_override
from rst_lib.engine.tasks import check_run


@pytest.mark.parametrize("params, match", [
    ({"keep_ratio": 0.0}, r"keep_ratio=0.0 is invalid: it must be in \(0, 1\]"),
    ({"keep_ratio": 1.5}, r"keep_ratio=1.5"),
    ({"model": "resnet9000"}, r"model='resnet9000' is invalid.*: valid choices are .*conv4"),
    ({"dataset": "imagenet1k"}, r"dataset='imagenet1k' is invalid: valid choices are .*mnist5k"),
    ({"train_attack": "cw"}, r"train_attack='cw' is invalid: valid choices are pgd, fgsm_rs, fgsm_carried, free, trades, none"),
    ({"weight_init": "zeros"}, r"weight_init='zeros' is invalid: valid choices are signed_constant.*binary"),
    ({"score_init": "normal"}, r"score_init='normal' is invalid"),
    ({"eps": -0.1}, r"eps=-0.1 is invalid: it must be >= 0"),
    ({"eps": "eight"}, r"eps='eight' is invalid: expected a number or a fraction"),
    ({"steps": 0}, r"steps=0 is invalid: it must be >= 1"),
    ({"batch_size": 0}, r"batch_size=0 is invalid: it must be >= 1"),
    ({"epochs": "10"}, r"epochs='10' is invalid: expected int, got str"),
    ({"keepratio": 0.1}, r"unknown parameter\(s\) keepratio \(did you mean 'keep_ratio'\?\); valid parameters: .*keep_ratio"),
    ({"data_dir": "/no/such/dir", "dataset": "cifar10"}, r"data_dir='/no/such/dir' does not exist"),
    ({"dataset": "imagefolder"}, r"imagefolder.*needs data_dir"),
    ({"device": "tpu"}, r"device='tpu' is invalid"),
])
def test_bad_parameters_give_one_clear_message(params, match):
    with pytest.raises(ConfigError, match=match):
        check_run(RunConfig.from_dict(params))  # what train and the batch runner check


def test_eps_fractions_and_defaults():
    cfg = RunConfig.from_dict({"eps": "8/255", "alpha": "2/255", "eval_alpha": None})
    assert cfg.eps == pytest.approx(8 / 255) and cfg.alpha == pytest.approx(2 / 255)
    assert cfg.eval_eps_value == cfg.eps and cfg.eval_alpha_value == cfg.alpha


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("keep_ratio: 0.1\nepochs: 3\neps: 8/255\n")
    cfg = load_config(f, ["epochs=5", "lr_milestones=[2, 4]"])
    assert (cfg.keep_ratio, cfg.epochs, cfg.lr_milestones) == (0.1, 5, [2, 4])
    assert parse_override("eps=0.3") == ("eps", 0.3)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("eps")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_params_file_is_valid():
    from pathlib import Path
    from rst_lib.workbook.params import validate_notebook_params
    from rst_lib.config import load_params
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "params").glob("quickstart*.yaml"))
    assert files
    for f in files:
        validate_notebook_params(root / "notebooks" / "00_quickstart.ipynb", load_params(f))


def test_allowed_values_are_declared_once_with_the_parameter_and_shown_in_its_help():
    import dataclasses

    from rst_lib.config import allowed
    from rst_lib.engine.batch_steps import BATCH_STEPS
    from rst_lib.masks import inits, masking
    from rst_lib.workbook.params import NotebookParams
    declared = {f.name: f.metadata for f in dataclasses.fields(RunConfig)
                if f.metadata["choices"] is not None}
    assert {"train_attack", "task", "dataset", "precision", "weight_init", "granularity"} <= set(declared)
    for name, meta in declared.items():
        for value in meta["choices"]:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            assert shown in meta["help"], (name, value)
        bad = dataclasses.replace(RunConfig(), **{name: "no-such-value"})
        with pytest.raises(ConfigError, match=f"{name}='no-such-value' is invalid"):
            bad.validate()
    # the code that implements each value reads the one declaration
    assert set(BATCH_STEPS) == set(allowed("train_attack"))
    assert inits.WEIGHT_INITS == allowed("weight_init")
    assert masking.GRANULARITIES == allowed("granularity")
    with pytest.raises(ConfigError, match="mode='single' is invalid: valid choices are batch, example"):
        NotebookParams(mode="single").validate()
    with pytest.raises(ConfigError, match=r"keep_ratios='x' is invalid: expected float"):
        NotebookParams(keep_ratios=[0.1, "x"]).validate()


def test_cross_checks_run_at_the_entry_point_and_validate_reads_no_ticket(tmp_path):
    """RunConfig.validate checks the schema only (what it checks does not depend on what was
    imported); check_run adds the model and the ticket, reading the ticket file once."""
    bad_ticket = tmp_path / "ticket.pt"
    bad_ticket.write_bytes(b"not a ticket")
    cfg = RunConfig(task="finetune", ticket=str(bad_ticket))
    cfg.validate()  # the file exists; it is not read here
    with pytest.raises(ConfigError, match="not a ticket"):
        check_run(cfg)
    with pytest.raises(ConfigError, match="model='conv99' is invalid"):
        check_run(RunConfig(model="conv99"))
    with pytest.raises(ConfigError, match=r"keep_ratio=0 is invalid: it must be in \(0, 1\]"):
        check_run(RunConfig(keep_ratio=0))


def test_trainer_parameter_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs ticket"):
        RunConfig(task="finetune").validate()
    with pytest.raises(ConfigError, match="ticket='nope.pt' does not exist"):
        RunConfig(task="finetune", ticket="nope.pt").validate()
    with pytest.raises(ConfigError, match="adaptive_p=2"):
        RunConfig(adaptive_p=2).validate()


def test_an_eps_warm_up_longer_than_the_run_is_one_warning_line_once(capsys):
    cfg = RunConfig(epochs=1, eps_warmup_epochs=2.5, eps=0.3)
    cfg.validate()
    cfg.validate()  # validated again (CLI, then kernel): still one line
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: eps_warmup_epochs=2.5 >= epochs=1: the training attack never reaches "
                   "eps=0.3 (at most 40% of it); use fewer warm-up epochs or more epochs"]
    RunConfig(epochs=3, eps_warmup_epochs=2.5).validate()
    RunConfig(epochs=1, eps_warmup_epochs=2.5, train_attack="none").validate()
    assert capsys.readouterr().err == ""
