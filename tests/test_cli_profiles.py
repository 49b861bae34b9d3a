"""``synchuman reconstruct --profile/--faces/--quads/--format`` (issue 21 item 7): the flags reach the wire
options, and against a gateway with stage doubles the job runs with its profile, every extra file it made is
written beside the GLB, and bad values fail with the gateway's message naming the field."""

from __future__ import annotations

import pytest
from PIL import Image
from test_gateway import Stack

from synchuman.v1 import common_pb2
from synchuman_cli.commands.reconstruct import download_names, job_options
from synchuman_cli.main import build_parser, main


def parse(*flags: str):
    return build_parser().parse_args(["reconstruct", "p.jpg", "-o", "p.glb", *flags])


def test_the_flags_become_the_wire_options():
    args = parse(
        "--profile", "game", "--faces", "30000", "--quads", "--format", "usdz", "--format", "preview"
    )
    options = job_options(args)
    assert options.profile == "game"
    assert (options.reconstruction.target_faces, options.reconstruction.quad_remesh) == (30000, True)
    assert list(options.reconstruction.outputs) == [
        common_pb2.OUTPUT_FORMAT_USDZ,
        common_pb2.OUTPUT_FORMAT_PREVIEW,
    ]
    assert not options.reconstruction.HasField("simplify_ratio")
    unset = job_options(parse())
    assert unset.profile == "" and not unset.reconstruction.HasField("quad_remesh")  # the profile's
    assert not unset.reconstruction.HasField("target_faces")
    assert job_options(parse("--no-quads")).reconstruction.HasField("quad_remesh")  # explicitly off
    names = download_names(args)
    assert {"person.usdz", "preview.png", "turntable.mp4", "turntable.webp", "mesh_obj.zip"} <= set(names)
    assert "multiview" not in names and "multiview" in download_names(parse("--format", "views"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("cli-profiles"))
    yield stack.gateway.address
    stack.close()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGBA", (16, 16), (128, 128, 128, 255)).save(path)
    return path


def run(gateway: str, photo, out, *flags: str) -> int:
    argv = ["reconstruct", str(photo), "-o", str(out), "--gateway", gateway, "--start-servers", "never"]
    return main([*argv, "--quiet", *flags])


def test_a_profile_job_writes_the_files_it_made_beside_the_glb(gateway, photo, tmp_path, capsys):
    out = tmp_path / "person.glb"
    assert run(gateway, photo, out, "--profile", "ar", "--format", "usdz", "--format", "preview") == 0
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("person."))
    assert written == [
        "person.glb",
        "person.person.usdz",
        "person.preview.png",
        "person.report.json",
        "person.turntable.mp4",
        "person.turntable.webp",
    ]
    assert "SUCCEEDED in" in (printed := capsys.readouterr().out) and "(profile ar)" in printed


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--profile", "cinema"), "options.profile: unknown profile 'cinema'; use one of standard, web"),
        (("--faces", "10"), "options.reconstruction.target_faces is 10"),
        (("--faces", "20000", "--simplify", "0.5"), "simplify_ratio"),
    ],
)
def test_bad_values_fail_with_the_gateways_message(gateway, photo, tmp_path, capsys, flags, says):
    assert run(gateway, photo, tmp_path / "x.glb", *flags) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x.glb").exists()
