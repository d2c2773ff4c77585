"""``patgw model`` as one command for the model kinds plugins register: ``fit [KIND]`` (``pls``
when omitted), ``show FILE`` / ``check FILE`` on the file's ``"kind"`` member (``pls`` without
one), unknown kinds, and a kind registered twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import PluginError, Registry, build_registry, hash_password
from gateway.audit import read_records
from gateway.modelcli import run_model
from plugins.softsensor import plugin as softsensor_plugin
from tests.conftest import fake_distribution, patgw

REPO = Path(__file__).resolve().parents[1]
PLS_MODEL = REPO / "configs" / "models" / "raman-glucose-lactate.json"

# A vendor's kind of model file, as a plugin would register it.
TOY_KIND = """
import json
import sys
from gateway import hookimpl

PAT_GATEWAY_API = "1.0"


def configure_fit(parser):
    parser.add_argument("--output", required=True)
    parser.add_argument("--gain", type=float, required=True)

    def handler(args):
        if args.gain < 0:
            print("patgw model fit: --gain: must not be negative", file=sys.stderr)
            return 2
        doc = {"kind": "toy", "id": "toy-1", "version": "7", "gain": args.gain}
        with open(args.output, "w") as handle:
            json.dump(doc, handle)
        print("fitted toy")
        return 0

    return handler


def configure_show(parser):
    def handler(args):
        with open(args.model) as handle:
            print("toy gain", json.load(handle)["gain"])
        return 0

    return handler


def configure_check(parser):
    parser.add_argument("--data", required=True)

    def handler(args):
        print(f"toy check {args.model} on {args.data}")
        return 0

    return handler


@hookimpl
def pat_gateway_register_model_kinds(registry):
    registry.add_model_kind(
        "toy",
        fit=configure_fit,
        show=configure_show,
        check=configure_check,
        description="a toy model kind",
    )
"""


def engineer_config(folder: Path) -> Path:
    """A gateway configuration in ``folder`` with users ``engineer`` and ``operator`` (each
    with the role of that name; password ``<name>-pw``), its audit trail beside its store."""
    config = folder / "gateway.yaml"
    users = [
        {"name": n, "password_hash": hash_password(f"{n}-pw"), "roles": [n]}
        for n in ("engineer", "operator")
    ]
    store = {"path": str(folder / "store.sqlite")}
    security = {"users": users}
    doc = {"area": "reactor1", "store": store, "data_dir": str(folder / "data")}
    config.write_text(json.dumps(doc | {"security": security}))
    return config


@pytest.fixture
def toy_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vendor_toy.py").write_text(TOY_KIND)
    return fake_distribution(site, "vendor-toy", "0.1", {"toy": "vendor_toy"})


def test_patgw_model_dispatches_on_the_kind(tmp_path: Path, toy_env: dict[str, str]) -> None:
    model = tmp_path / "toy.json"
    fitted = patgw("model", "fit", "toy", "--output", str(model), "--gain", "2.5", env=toy_env)
    assert (fitted.returncode, fitted.stdout) == (0, "fitted toy\n"), fitted.stderr
    assert json.loads(model.read_text())["kind"] == "toy"

    shown = patgw("model", "show", str(model), env=toy_env)
    assert (shown.returncode, shown.stdout) == (0, "toy gain 2.5\n"), shown.stderr
    checked = patgw("model", "check", str(model), "--data", "d.jsonl", env=toy_env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"toy check {model} on d.jsonl\n"

    # A file without "kind" is a pls model: the soft sensor's show, as before kinds existed.
    pls = patgw("model", "show", str(PLS_MODEL), "--json", env=toy_env)
    assert pls.returncode == 0, pls.stderr
    assert json.loads(pls.stdout)["id"] == json.loads(PLS_MODEL.read_text())["id"]
    # fit without a kind is the pls fit: its own arguments are asked for.
    usage = patgw("model", "fit", "--output", str(tmp_path / "m.json"), env=toy_env)
    assert usage.returncode == 2 and "--spectra" in usage.stderr, usage.stderr
    # Each kind's own arguments and errors.
    bad = patgw("model", "fit", "toy", "--output", str(model), "--gain", "-1", env=toy_env)
    assert (bad.returncode, bad.stderr) == (2, "patgw model fit: --gain: must not be negative\n")
    toy_usage = patgw("model", "fit", "toy", "--output", str(model), env=toy_env)
    assert toy_usage.returncode == 2 and "patgw model fit toy" in toy_usage.stderr
    assert "--gain" in toy_usage.stderr

    listing = json.loads(patgw("plugins", "--json", env=toy_env).stdout)
    kinds = {(r["name"], r["kind"]) for r in listing}
    assert {("pls", "model"), ("toy", "model")} <= kinds


def test_an_unknown_kind_exits_2_naming_the_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = build_registry([softsensor_plugin], entry_points=False)
    assert run_model(["fit", "nosuch", "--output", str(tmp_path / "m.json")], registry) == 2
    err = capsys.readouterr().err
    assert err == "patgw model fit: unknown model kind 'nosuch' (kinds: pls)\n"

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "nosuch", "id": "x"}))
    for action in ("show", "check"):
        assert run_model([action, str(other)], registry) == 2
        err = capsys.readouterr().err
        assert err == f"patgw model {action}: {other}: unknown model kind 'nosuch' (kinds: pls)\n"

    other.write_text(json.dumps({"kind": 3}))
    assert run_model(["show", str(other)], registry) == 2
    err = capsys.readouterr().err
    assert err == (f"patgw model show: {other}: kind: expected the name of a model kind, not 3\n")
    assert run_model(["nosuch"], registry) == 2
    assert "expected one of fit, show, check" in capsys.readouterr().err


def test_a_kind_registered_twice_is_refused(toy_env: dict[str, str], tmp_path: Path) -> None:
    registry = Registry()

    def configure(parser: object) -> object:
        raise AssertionError("not called when registering")

    registry.add_model_kind("pls", fit=configure, show=configure, check=configure)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="model 'pls' registered twice"):
        registry.add_model_kind("pls", fit=configure, show=configure, check=configure)  # type: ignore[arg-type]

    # A vendor plugin that registers pls again: neither is used (which one would run must not
    # depend on the order distributions are found in), and the error names both.
    site = tmp_path / "site2"
    site.mkdir()
    (site / "vendor_pls.py").write_text(TOY_KIND.replace('\n        "toy",', '\n        "pls",'))
    env = fake_distribution(site, "vendor-pls", "0.1", {"vendor_pls": "vendor_pls"})
    refused = patgw("model", "show", str(PLS_MODEL), env=env)
    assert refused.returncode == 2
    assert "unknown model kind 'pls'" in refused.stderr
    assert "model 'pls' is registered by plugin 'softsensor' (pat-gateway " in refused.stderr
    assert "and plugin 'vendor_pls' (vendor-pls 0.1); neither is used" in refused.stderr


def test_fitting_any_kind_for_a_configuration_is_audited(
    tmp_path: Path, toy_env: dict[str, str]
) -> None:
    config = engineer_config(tmp_path)
    model = tmp_path / "toy.json"
    argv = ["model", "fit", "toy", "--output", str(model), "--gain", "1"]
    argv += ["--config", str(config), "--reason", "new feed"]

    def fit(user: str, password: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *argv, "--user", user],
            input=f"{password}\n",
            env=toy_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stderr

    code, err = fit("operator", "operator-pw")
    assert code == 2 and "needs the 'configure' permission" in err
    assert not model.exists()
    code, err = fit("engineer", "engineer-pw")
    assert code == 0, err
    records = [r.event for r in read_records(tmp_path / "store.audit.sqlite")]
    fitted = records[-1]
    assert (fitted.action, fitted.user, fitted.reason) == ("model.fitted", "engineer", "new feed")
    assert fitted.target == str(model.resolve())
    assert fitted.details["kind"] == "toy" and fitted.details["model"] == "toy-1"
    assert fitted.details["version"] == "7"
    no_config = patgw(*argv[:-4], "--user", "engineer", env=toy_env)
    assert no_config.returncode == 2
    assert "--user needs --config" in no_config.stderr
