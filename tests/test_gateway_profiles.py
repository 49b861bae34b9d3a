"""Named output profiles and the issue-21 options on both APIs (issue 21, items 6 and 7): the shipped
profiles, the profiles file's start-up checks, a job's options over its profile's, ``ListProfiles`` / ``GET
/v1/profiles``, and every bad input of the new options refused with INVALID_ARGUMENT / HTTP 400 naming the
field, over gRPC and HTTP."""

from __future__ import annotations

import argparse
import json

import httpx
import pytest
from test_gateway import Stack, photo, upload, watch_all
from test_gateway_bad_requests import assert_invalid

from gateway import main as gateway_main
from gateway.profile_file import DEFAULT_FILE, ProfileFileError, load_profiles, parse_profiles
from gateway.profiles import lay_over
from services.common.arguments import CommandLineError
from synchuman.stage_catalog import media_type
from synchuman.v1 import common_pb2, reconstruction_pb2

F = common_pb2


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("profiles"), http_address="127.0.0.1:0")
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as client:
        yield client


# -- the profiles file -------------------------------------------------------------------------------------


def test_the_shipped_profiles_are_what_the_issue_asks_for():
    profiles = load_profiles(DEFAULT_FILE)
    assert profiles.names == ("standard", "web", "game", "ar", "preview-only")
    by_name = {p.name: p.to_proto() for p in profiles.by_name.values()}
    assert by_name["standard"].options == common_pb2.JobOptions()  # the server defaults
    standard = by_name["standard"].effective_options.reconstruction
    assert standard.simplify_ratio == pytest.approx(0.7) and not standard.HasField("target_faces")
    web = by_name["web"].effective_options.reconstruction
    assert web.target_faces * 1.02 <= 50_000 and web.texture_size == 1024  # <= 50k within the 2 % tolerance
    assert list(web.outputs) == [F.OUTPUT_FORMAT_GLB] and not web.HasField("simplify_ratio")
    game = by_name["game"].effective_options.reconstruction
    assert (game.target_faces, game.quad_remesh, game.texture_size) == (20_000, False, 2048)
    assert list(game.outputs) == [F.OUTPUT_FORMAT_GLB, F.OUTPUT_FORMAT_OBJ]
    assert list(by_name["ar"].effective_options.reconstruction.outputs) == [
        F.OUTPUT_FORMAT_GLB,
        F.OUTPUT_FORMAT_USDZ,
    ]
    preview = by_name["preview-only"]
    assert list(preview.effective_options.reconstruction.outputs) == [
        F.OUTPUT_FORMAT_GLB,
        F.OUTPUT_FORMAT_PREVIEW,
    ]
    assert "person.glb" in preview.description  # says the GLB is made anyway
    for profile in by_name.values():
        assert profile.effective_options.profile == profile.name and len(profile.description) > 40
        assert profile.effective_options.multiview.steps == 50  # unset options: the server defaults


GOOD = '[standard]\ndescription = "defaults"\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[web]\ndescription = "no standard"\n', "no 'standard' profile"),
        (GOOD + '[web]\ndescription = "x"\ncolour = "red"\n', "profile 'web': unknown key 'colour'"),
        (GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\nfaces = 5\n', "unknown key 'faces'"),
        (
            GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\ntarget_faces = 4999\n',
            "target_faces is 4999",
        ),
        (
            GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\ntexture_size = 8192\n',
            "texture_size is 8192",
        ),
        (
            GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\noutputs = ["fbx"]\n',
            "unknown outputs 'fbx'",
        ),
        (GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\nbake_mode = "slow"\n', "unknown bake_mode"),
        (GOOD + '[web]\ndescription = "x"\n[web.reconstruction]\nquad_remesh = "yes"\n', "quad_remesh"),
        (
            GOOD
            + '[web]\ndescription = "x"\n[web.reconstruction]\ntarget_faces = 9000\nsimplify_ratio = 0.5\n',
            "target_faces",
        ),
        (GOOD + "[web]\n", "'description' (what the profile is for) is required"),
        (GOOD + '[Web]\ndescription = "x"\n', "names are [a-z][a-z0-9-]*"),
        (GOOD + "[web\n", "not valid TOML"),
    ],
)
def test_a_wrong_profiles_file_is_refused_naming_the_file_profile_and_key(text, says):
    with pytest.raises(ProfileFileError) as caught:
        parse_profiles(text, "my-profiles.toml")
    assert str(caught.value).startswith("my-profiles.toml: ") and says in str(caught.value), caught.value


def test_the_gateway_command_line_refuses_a_wrong_profiles_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + '[x]\ndescription = "x"\n[x.multiview]\nsteps = 0\n')
    parser = argparse.ArgumentParser()
    gateway_main.add_arguments(parser)
    with pytest.raises(
        CommandLineError, match=r"--profiles: .*bad.toml: profile 'x': options.multiview.steps is 0"
    ):
        gateway_main.config_from_args(parser.parse_args(["--profiles", str(bad)]))
    with pytest.raises(CommandLineError, match="cannot read"):
        gateway_main.config_from_args(parser.parse_args(["--profiles", str(tmp_path / "missing.toml")]))
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    assert gateway_main.config_from_args(parser.parse_args(["--profiles", str(good)])).profiles == str(good)


def test_a_job_overrides_single_fields_of_its_profile():
    base = common_pb2.JobOptions()
    base.reconstruction.target_faces = 20_000
    base.reconstruction.texture_size = 2048
    base.reconstruction.outputs.append(F.OUTPUT_FORMAT_OBJ)
    job = common_pb2.JobOptions(profile="game")
    job.reconstruction.texture_size = 512
    merged = lay_over(base, job)
    assert (merged.reconstruction.target_faces, merged.reconstruction.texture_size) == (20_000, 512)
    assert list(merged.reconstruction.outputs) == [F.OUTPUT_FORMAT_OBJ] and merged.profile == "game"
    job.reconstruction.outputs.append(F.OUTPUT_FORMAT_USDZ)  # a set list replaces the profile's
    job.reconstruction.simplify_ratio = 0.5  # the other face count replaces the profile's
    merged = lay_over(base, job)
    assert list(merged.reconstruction.outputs) == [F.OUTPUT_FORMAT_USDZ]
    assert merged.reconstruction.simplify_ratio == 0.5 and not merged.reconstruction.HasField("target_faces")


# -- both APIs ---------------------------------------------------------------------------------------------


def test_profiles_are_listed_alike_on_grpc_and_http(stack, http):
    listed = stack.stub.ListProfiles(reconstruction_pb2.ListProfilesRequest(), timeout=10)
    reply = http.get("/v1/profiles")
    assert reply.status_code == 200, reply.text
    body = reply.json()["profiles"]
    assert (
        [p["name"] for p in body]
        == [p.name for p in listed.profiles]
        == list(stack.gateway.manager.settings.profiles.names)
    )
    game = next(p for p in body if p["name"] == "game")
    assert game["effective_options"]["reconstruction"]["target_faces"] == 20000
    assert game["options"]["reconstruction"]["outputs"] == ["OUTPUT_FORMAT_OBJ"]


def test_a_job_runs_with_its_profile_and_the_fields_it_overrides(stack):
    options = common_pb2.JobOptions(profile="ar")
    options.reconstruction.outputs.extend([F.OUTPUT_FORMAT_USDZ, F.OUTPUT_FORMAT_PREVIEW])
    options.reconstruction.target_faces = 30_000
    options.reconstruction.quad_remesh = True
    job = stack.stub.SubmitJob(upload(photo(), options=options), timeout=30).job
    assert job.options.profile == "ar" and job.effective_options.profile == "ar"
    final = watch_all(stack.stub, job.id)[-1].finished
    assert final.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, final.error.message
    sent = stack.doubles["stage2"].options[-1]  # what stage 2 was asked for
    assert (sent.target_faces, sent.quad_remesh) == (30_000, True)
    assert list(sent.outputs) == [F.OUTPUT_FORMAT_USDZ, F.OUTPUT_FORMAT_PREVIEW]
    assert final.effective_options.reconstruction.target_faces == 30_000
    listed = {a.blob.name: a.blob.media_type for a in final.artifacts}
    for name in ("person.usdz", "preview.png", "turntable.mp4", "turntable.webp"):
        assert listed[name] == media_type(name), (name, listed)
    assert media_type("person.usdz") == "model/vnd.usdz+zip" and media_type("turntable.mp4") == "video/mp4"


def test_a_profile_chosen_over_http_fills_the_unset_fields(http):
    options = {"profile": "game", "reconstruction": {"texture_size": 512}}
    reply = http.post(
        "/v1/jobs", files={"image": ("p.png", photo(), "image/png")}, data={"options": json.dumps(options)}
    )
    assert reply.status_code == 201, reply.text
    stored = reply.json()["job"]["options"]
    assert stored["profile"] == "game"
    assert stored["reconstruction"] == {
        "texture_size": 512,
        "target_faces": 20000,
        "quad_remesh": False,
        "outputs": ["OUTPUT_FORMAT_OBJ"],
    }


def _options(**reconstruction) -> common_pb2.JobOptions:
    options = common_pb2.JobOptions()
    for name, value in reconstruction.items():
        if name == "outputs":
            options.reconstruction.outputs.extend(value)
        else:
            setattr(options.reconstruction, name, value)
    return options


#: (case, wire options, the field the refusal names, words of its message)
BAD_OPTIONS = [
    ("faces below", _options(target_faces=4999), "options.reconstruction.target_faces", "5000"),
    ("faces above", _options(target_faces=500_001), "options.reconstruction.target_faces", "500000"),
    (
        "faces and ratio",
        _options(target_faces=20_000, simplify_ratio=0.5),
        "options.reconstruction.target_faces",
        "simplify_ratio",
    ),
    ("unknown format", _options(outputs=[99]), "options.reconstruction.outputs", "99"),
    ("unknown profile", common_pb2.JobOptions(profile="cinema"), "options.profile", "standard, web, game"),
]


@pytest.mark.parametrize(("case", "options", "field", "says"), BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_new_options_are_refused_naming_the_field_on_both_apis(stack, http, case, options, field, says):
    error = assert_invalid(lambda: stack.stub.SubmitJob(upload(photo(), options=options), timeout=30), field)
    assert says in error.details(), error.details()
    from google.protobuf import json_format

    text = json_format.MessageToJson(options, preserving_proto_field_name=True)
    reply = http.post("/v1/jobs", files={"image": ("p.png", photo(), "image/png")}, data={"options": text})
    assert reply.status_code == 400, reply.text
    body = reply.json()["error"]
    assert body["code"] == "INVALID_ARGUMENT" and says in body["message"]
    fields = [v["field"] for d in body["details"] for v in d.get("field_violations", [])]
    assert any(f.startswith(field) for f in fields), fields


@pytest.mark.parametrize(
    "options",
    [
        {"reconstruction": {"outputs": ["OUTPUT_FORMAT_FBX"]}},
        {"reconstruction": {"target_faces": "many"}},
        {"reconstruction": {"quad_remesh": "sometimes"}},
        {"profile": 7},
    ],
)
def test_http_options_json_with_unknown_names_or_wrong_types_is_refused(http, options):
    reply = http.post(
        "/v1/jobs", files={"image": ("p.png", photo(), "image/png")}, data={"options": json.dumps(options)}
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["details"][0]["field_violations"][0]["field"] == "options"


def test_openapi_types_the_new_options_and_lists_the_profiles(http):
    spec = http.get("/openapi.json").json()
    options = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"
    ]["options"]
    reconstruction = options["properties"]["reconstruction"]
    faces = reconstruction["properties"]["target_faces"]
    assert (faces["minimum"], faces["maximum"]) == (5000, 500000)
    assert reconstruction["properties"]["quad_remesh"]["type"] == "boolean"
    assert reconstruction["not"] == {"required": ["simplify_ratio", "target_faces"]}
    assert {"OUTPUT_FORMAT_USDZ", "OUTPUT_FORMAT_PREVIEW"} <= set(
        reconstruction["properties"]["outputs"]["items"]["enum"]
    )
    assert options["properties"]["profile"]["enum"] == ["", "standard", "web", "game", "ar", "preview-only"]
    assert "200" in spec["paths"]["/v1/profiles"]["get"]["responses"]
