"""Who may call the compose deployment (no Docker daemon needed: ``docker compose config`` and the services'
real option parsers): the gateway is published on 127.0.0.1 unless the operator says otherwise, one stage
token reaches every service, and compose.tls.yaml gives the gateway its certificate, the stages mTLS and the
health probes what they need, with files the test generates."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest
from test_compose import COMPOSE_FILE, LONG_RUNNING, STAGES, run_config
from test_compose import compose_bin as compose_bin  # noqa: F401 - the fixture (Docker Compose v2, fetched)
from tls_certs import CertificateAuthority

from services.common.healthcheck import main as healthcheck_main
from services.common.tls import ClientTls, ServerTls, client_tls_from_args, server_tls_from_args
from services.launcher import TARGETS
from synchuman_cli.main import build_parser

TLS_FILE = COMPOSE_FILE.with_name("compose.tls.yaml")


@pytest.fixture
def compose(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("compose_bin")


def test_published_on_loopback_by_default_and_one_stage_token_everywhere(compose: Path) -> None:
    plain = json.loads(run_config(compose, COMPOSE_FILE).stdout)
    assert {p["host_ip"] for p in plain["services"]["gateway"]["ports"]} == {"127.0.0.1"}
    result = run_config(compose, COMPOSE_FILE, SYNCHUMAN_STAGE_TOKEN="t0ken")
    config = json.loads(result.stdout)
    for name in LONG_RUNNING:
        assert config["services"][name]["environment"]["SYNCHUMAN_STAGE_TOKEN"] == "t0ken", name


def _parsed(service: dict, monkeypatch: pytest.MonkeyPatch, tls_dir: Path) -> argparse.Namespace:
    """The service's compose command parsed by its real parser in its compose environment (/tls: tls_dir)."""
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, str(value).replace("/tls/", f"{tls_dir}/"))
    args = build_parser().parse_args(service["command"][1:])
    module = importlib.import_module(TARGETS[args.target][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(args.options)


def test_tls_override_gives_the_gateway_tls_and_the_stages_mtls(
    compose: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_config(compose, COMPOSE_FILE, TLS_FILE)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    authority = CertificateAuthority(tmp_path)
    for name in ("gateway", "stages"):
        authority.issue(name, ("gateway",) if name == "gateway" else STAGES)
    tls, ca = tmp_path, authority.pem.cert.rename(tmp_path / "ca.crt")
    for name in LONG_RUNNING:
        service = config["services"][name]
        (mount,) = [v for v in service["volumes"] if v["target"] == "/tls"]
        assert mount["read_only"] is True and mount["source"].endswith("/tls")
        with monkeypatch.context() as env:
            args = _parsed(service, env, tls)
            if name == "gateway":
                assert server_tls_from_args(args) == ServerTls(tls / "gateway.crt", tls / "gateway.key")
                assert client_tls_from_args(args, "stage-tls") == ClientTls(
                    ca, tls / "gateway.crt", tls / "gateway.key"
                )
            else:
                assert server_tls_from_args(args) == ServerTls(tls / "stages.crt", tls / "stages.key", ca)
            probe = service["healthcheck"]["test"]
            assert probe[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
            # its TLS comes from the environment: it fails (nothing listens) after loading the files
            assert healthcheck_main([*probe[4:], "--timeout", "0.2"]) == 1
            env.setenv("SYNCHUMAN_HEALTHCHECK_TLS_CA", str(tmp_path / "missing.crt"))
            with pytest.raises(SystemExit):  # proof that the probe reads them
                healthcheck_main(probe[4:])


def test_gateway_refuses_to_be_published_beyond_loopback_without_a_token(
    compose: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose: SYNCHUMAN_BIND=0.0.0.0 publishes the gateway on every interface; it then starts only with a
    token (its real option parsing, in the environment compose gives it); `synchuman serve --host` too."""
    from gateway.main import config_from_args
    from services.common.arguments import CommandLineError

    def gateway_config(**env: str):  # noqa: ANN202
        config = json.loads(run_config(compose, COMPOSE_FILE, **env).stdout)
        with monkeypatch.context() as patched:
            return config_from_args(_parsed(config["services"]["gateway"], patched, Path("/tls")))

    assert gateway_config().auth_token == ""  # default: published on 127.0.0.1 only
    with pytest.raises(CommandLineError, match="published on 0.0.0.0 without a token"):
        gateway_config(SYNCHUMAN_BIND="0.0.0.0")
    published = gateway_config(SYNCHUMAN_BIND="0.0.0.0", SYNCHUMAN_GATEWAY_AUTH_TOKEN="s3cret")
    assert published.auth_token == "s3cret"
    from services.launcher import EmbeddedConfig, child_specs

    (embedded,) = [s for s in child_specs(EmbeddedConfig(host="0.0.0.0")) if s.name == "gateway"]
    assert embedded.argv[embedded.argv.index("--published-on") + 1] == "0.0.0.0"
