"""One error boundary per command (issue 23 §3, §4): what Hydra, OmegaConf and Lightning raise for
a value the user gave is one ``error:`` line and exit 2, before any directory is made; a real bug
keeps its traceback. ``python train.py`` runs in-process (runpy, as in tests/test_errors.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_errors import _train_py

from vae.train import run


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["seed=99999999999"], "error: seed=99999999999: expected an integer in [0, 4294967295]"),
        (
            ["model.latent_dim=${oc.env:VAE_TEST_UNSET}"],
            "error: model.latent_dim='${oc.env:VAE_TEST_UNSET}': cannot be resolved (KeyError "
            "raised while resolving interpolation: \"Environment variable 'VAE_TEST_UNSET' not "
            'found"); set what it refers to, or give the value itself (model.latent_dim=<value>)',
        ),
        (
            ["model.hidden_dims=[${nowhere},8]"],
            "error: model.hidden_dims.0='${nowhere}': cannot be resolved (Interpolation key "
            "'nowhere' not found); set what it refers to, or give the value itself "
            "(model.hidden_dims.0=<value>)",
        ),
        (
            ["optim.min_lr_ratio=2"],  # the cosine schedule used to climb to twice the rate
            "error: optim.min_lr_ratio=2: expected a number in [0, 1]",
        ),
        (
            ["hydra.run.dir=/proc/vae-test/run"],  # os.access says writable; mkdir says no
            "error: hydra.run.dir='/proc/vae-test/run': cannot create the run directory there "
            "(No such file or directory); choose another location with hydra.run.dir=<dir>",
        ),
    ],
)
def test_a_bad_value_is_one_line_before_any_directory(
    overrides: list[str], line: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("VAE_TEST_UNSET", raising=False)
    run_dir = tmp_path / "run"
    has_dir = any(o.startswith("hydra.run.dir=") for o in overrides)
    argv = [*overrides, *([] if has_dir else [f"hydra.run.dir={run_dir}"]), "data.download=false"]
    code, err = _train_py(argv, monkeypatch, capsys)
    assert code == 2, err
    assert err.splitlines() == [line]
    assert not run_dir.exists()


def test_an_empty_data_dir_variable_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VAE_DATA_DIR", "")
    code, err = _train_py([f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2, err
    assert err.splitlines() == [
        "error: data.root='' (from ${oc.env:VAE_DATA_DIR,data}): expected a non-empty path"
    ]


@pytest.mark.parametrize("where", ["under_a_file", "empty"])
def test_a_sweep_directory_that_cannot_be_made_is_one_line(
    where: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``hydra.sweep.dir=<file>/sweep`` was Hydra's NotADirectoryError traceback; an empty one
    wrote the jobs into the current directory."""
    blocker = tmp_path / "afile"
    blocker.write_text("x\n")
    value = f"{blocker}/sweep" if where == "under_a_file" else ""
    monkeypatch.chdir(tmp_path)
    argv = ["-m", f"hydra.sweep.dir={value}", "model.latent_dim=2,3", "data.download=false"]
    code, err = _train_py(argv, monkeypatch, capsys)
    assert code == 2, err
    expected = (
        f"error: hydra.sweep.dir='{value}': cannot create the sweep directory there ({blocker} "
        "is not a directory); choose another location with hydra.sweep.dir=<dir>"
        if where == "under_a_file"
        else "error: hydra.sweep.dir='': expected a non-empty path"
    )
    assert err.splitlines() == [expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no job ran, nothing written


def test_a_trainer_argument_of_the_wrong_type_is_one_line(
    mnist_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``trainer.devices=[0,1]`` on a CPU: Lightning refuses it (it used to be a TypeError from
    a list where it wanted a number, past the Trainer handler)."""
    argv = [
        "trainer=cpu",
        "trainer.devices=[0,1]",
        f"hydra.run.dir={tmp_path / 'run'}",
        "data.download=false",
    ]
    code, err = _train_py(argv, monkeypatch, capsys)
    assert code == 2, err
    assert err.splitlines()[-1].startswith(
        "error: trainer: `devices` selected with `CPUAccelerator`"
    )
    assert len([x for x in err.splitlines() if x.startswith("error")]) == 1


def test_the_boundary_maps_what_omegaconf_raises_and_keeps_a_bug_s_traceback(capsys) -> None:
    cfg = OmegaConf.create({"model": {"latent_dim": "${oc.env:VAE_TEST_UNSET}"}})
    with pytest.raises(SystemExit) as exc, run.user_error_exits():
        cfg.model.latent_dim  # noqa: B018 (resolving it is the point)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: model.latent_dim: ")
    with pytest.raises(KeyError, match="a bug"), run.user_error_exits():
        raise KeyError("a bug")  # not the user's: the traceback stays
    assert capsys.readouterr().err == ""


def test_a_bug_in_training_keeps_its_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(cfg):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(run, "train", broken)
    code, err = _train_py([f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 1
    assert "RuntimeError: an internal bug" in err
    assert "error: " not in err
    assert sys.exc_info()[0] is None
