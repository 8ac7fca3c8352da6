"""`pyworker check` and `pyworker try`, as functions and as command lines."""

import io
import json

import pytest

from pyworker import CONTINUE, ConfigError, StreamSenderFilter, register_filter
from pyworker.testing import run_chain
from pyworker.tryout import check, main_check, main_try, try_request
from pyworker.verdict import ACTION_CONTINUE, ACTION_ERROR, ACTION_REPLY


@pytest.fixture
def two_listeners(write_config, mosn_config, unit_filter):
    config = mosn_config(unit_filter("uid"))
    config["servers"][0]["listeners"].append(
        {
            "name": "echoListener",
            "stream_filters": [
                {
                    "type": "echo",
                    "config": {
                        "status": 418,
                        "body": "teapot\n",
                        "header_list": {"x-echo": "1"},
                    },
                }
            ],
        }
    )
    return write_config(config)


# -- check --------------------------------------------------------------


def test_check_a_good_config(two_listeners, capsys):
    assert check(two_listeners) == 0
    out = capsys.readouterr().out
    assert f"{two_listeners}: OK" in out
    assert "listener serverListener: metadata" in out
    assert "listener echoListener: echo" in out


def test_check_requires_the_named_listeners(two_listeners, capsys):
    assert check(two_listeners, ["serverListener", "echoListener"]) == 0
    capsys.readouterr()
    assert check(two_listeners, ["serverListener", "apiListener"]) == 1
    err = capsys.readouterr().err
    assert (
        "no listener named apiListener" in err
        and "serverListener, echoListener" in err
    )


def test_check_a_broken_config(write_config, mosn_config, capsys):
    path = write_config(
        mosn_config(
            {
                "type": "metadata",
                "config": {"metadataers": [{"meta_data_key": "NOPE"}]},
            }
        )
    )
    assert check(path) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {path}: servers[0].listeners[0].stream_filters[0].config."
        f"metadataers[0].meta_data_key: unknown metadata driver 'NOPE'"
    )


def test_check_prints_warnings(write_config, mosn_config, capsys):
    path = write_config(mosn_config(surprise=True))
    assert check(path) == 0
    assert (
        f"warning: {path}: surprise: unknown key, ignored"
        in capsys.readouterr().err
    )


def test_check_the_moe_reference(moe_reference, capsys):
    assert check(moe_reference, ["serverListener"]) == 0
    out = capsys.readouterr().out
    assert "listener serverListener (0.0.0.0:2990): metadata" in out
    assert "admin: 127.0.0.1:34901" in out
    assert "metrics: prometheus on 127.0.0.1:34903/metrics" in out


def test_check_the_project_config(project_config, capsys):
    assert (
        main_check(
            [str(project_config), "-l", "serverListener", "-l", "echoListener"]
        )
        == 0
    )


def test_main_check_exit_status(tmp_path, capsys):
    assert main_check([str(tmp_path / "absent.json")]) == 1
    assert "cannot read the config" in capsys.readouterr().err


# -- try ----------------------------------------------------------------


@pytest.mark.parametrize(
    "uid, site", [("2", "s1"), ("200", "s2"), ("201", "s3")]
)
def test_try_the_moe_reference(moe_reference, uid, site):
    verdict = try_request(moe_reference, {"uid": uid})
    assert verdict.action == ACTION_CONTINUE
    assert verdict.metadata == {"unit": site}


def test_try_without_a_uid_leaves_the_unit_unset(moe_reference):
    assert try_request(moe_reference, {}).metadata == {}
    assert try_request(moe_reference, [("uid", "abc")]).metadata == {}


def test_try_a_named_listener(two_listeners):
    verdict = try_request(two_listeners, {}, listener="echoListener")
    assert verdict.action == ACTION_REPLY and verdict.status == 418
    assert (
        verdict.reply_headers == [("x-echo", "1")]
        and verdict.reply_body == b"teapot\n"
    )


def test_try_defaults_to_the_first_listener(two_listeners, capsys):
    assert try_request(two_listeners, {"uid": "2"}).metadata == {"unit": "s1"}
    assert main_try([str(two_listeners), "-H", "uid: 2"]) == 0
    captured = capsys.readouterr()
    assert "metadata: unit = s1" in captured.out
    assert "listener: serverListener (the first" in captured.err


def test_try_an_unknown_listener(two_listeners):
    with pytest.raises(LookupError) as err:
        try_request(two_listeners, {}, listener="x")
    assert "no listener named 'x'" in str(err.value)
    assert "serverListener, echoListener" in str(err.value)


def test_try_a_broken_config_raises(write_config):
    with pytest.raises(ConfigError):
        try_request(write_config("{"), {})


def test_try_passes_method_path_query_and_body(write_config, mosn_config):
    from pyworker import CONTINUE, StreamReceiverFilter, register_filter

    @register_filter("test_echo_request")
    class Mirror(StreamReceiverFilter):
        def __init__(self, config):
            pass

        def on_receive(self, ctx, headers, buf, trailers):
            ctx.metadata.update(
                method=ctx.method,
                path=ctx.path,
                query=ctx.query,
                body=buf.decode(),
                listener=ctx.listener,
            )
            return CONTINUE

    path = write_config(mosn_config({"type": "test_echo_request"}))
    verdict = try_request(
        path, {}, method="POST", path_="/api/v1?a=1&b=2", body="payload"
    )
    assert verdict.metadata == {
        "method": "POST",
        "path": "/api/v1",
        "query": "a=1&b=2",
        "body": "payload",
        "listener": "serverListener",
    }


def test_main_try_prints_the_verdict(moe_reference, capsys):
    assert main_try([str(moe_reference), "-H", "uid:2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["verdict: CONTINUE", "metadata: unit = s1"]


def test_main_try_notes_driver_errors(moe_reference, capsys):
    assert main_try([str(moe_reference), "-H", "uid: abc"]) == 0
    out = capsys.readouterr().out
    assert "verdict: CONTINUE" in out and "driver" in out


def test_main_try_json(two_listeners, capsys):
    assert main_try([str(two_listeners), "-l", "echoListener", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "action": "REPLY",
        "status": 418,
        "metadata": {},
        "reply_headers": [["x-echo", "1"]],
        "reply_body": "teapot\n",
    }


def test_main_try_exit_status_of_an_error_verdict(
    write_config, mosn_config, user_modules, capsys
):
    path = write_config(
        mosn_config({"type": "explode", "module": "userfilters_sample"})
    )
    assert main_try([str(path)]) == 1
    out = capsys.readouterr().out
    assert (
        "verdict: ERROR" in out and "explode raised RuntimeError: boom" in out
    )


def test_main_try_exit_status_of_a_bad_config(tmp_path, two_listeners, capsys):
    assert main_try([str(tmp_path / "absent.json")]) == 2
    assert main_try([str(two_listeners), "-l", "nope"]) == 2
    assert "no listener named 'nope'" in capsys.readouterr().err


def test_main_try_refuses_a_malformed_header(two_listeners):
    with pytest.raises(SystemExit) as exit_:
        main_try([str(two_listeners), "-H", "no-colon"])
    assert exit_.value.code == 2


def test_run_chain_matches_try_request(moe_reference):
    assert run_chain(moe_reference, {"uid": "99"}) == try_request(
        moe_reference, {"uid": "99"}
    )


def test_try_an_error_verdict_as_a_function(
    write_config, mosn_config, user_modules
):
    path = write_config(
        mosn_config({"type": "explode", "module": "userfilters_sample"})
    )
    verdict = try_request(path, {})
    assert verdict.action == ACTION_ERROR and "boom" in verdict.log


@register_filter("tryout_hide_server")
class HideServer(StreamSenderFilter):
    def __init__(self, config):
        pass

    def append(self, ctx, headers, buf, trailers):
        headers.delete("server")
        headers.set("x-status", str(self.send_handler.status))
        return CONTINUE


def test_main_try_runs_the_response_phase(
    write_config, mosn_config, unit_filter, capsys
):
    path = write_config(
        mosn_config(unit_filter("uid"), {"type": "tryout_hide_server"})
    )
    assert (
        main_try(
            [
                str(path),
                "-H",
                "uid: 2",
                "--response",
                "503",
                "-R",
                "Server: up",
                "-R",
                "X-Other: 1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "verdict: CONTINUE",
        "metadata: unit = s1",
        "then: the sender filters run on the response",
        "response phase (503):",
        "verdict: CONTINUE",
        "set response header: x-status: 503",
        "remove response header: server",
    ]
    # without sender filters there is no response phase to show
    plain = write_config(mosn_config(unit_filter("uid")), name="plain.json")
    assert main_try([str(plain), "--response", "200"]) == 0
    assert "response phase: none" in capsys.readouterr().out


@register_filter("tryout_redact")
class TryoutRedact(StreamSenderFilter):
    def __init__(self, config):
        pass

    def append(self, ctx, headers, buf, trailers):
        if buf is not None:
            self.send_handler.set_body(buf.replace(b"4111", b"****"))
        return CONTINUE


def test_main_try_runs_the_response_phase_over_a_body(
    write_config, mosn_config, unit_filter, tmp_path, capsys, monkeypatch
):
    path = write_config(
        mosn_config(unit_filter("uid"), {"type": "tryout_redact"})
    )
    page = tmp_path / "page.json"
    page.write_bytes(b'{"card": "4111"}')
    assert main_try([str(path), "--response", "200", "--body", str(page)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        'response body (16 bytes, replaces the upstream\'s): {"card": "****"}'
    )
    assert (
        main_try(
            [str(path), "--response", "200", "--body", str(page), "--json"]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["response_phase"]["response_body"] == '{"card": "****"}'
    # from standard input, and the errors
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"4111")))
    assert main_try([str(path), "--response", "200", "--body", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(": ****")
    assert (
        main_try(
            [str(path), "--response", "200", "--body", str(tmp_path / "none")]
        )
        == 2
    )
    assert "cannot read the body" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_try([str(path), "--body", str(page)])
