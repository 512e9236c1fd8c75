"""The config mechanism: declarations, precedence, parsing, errors, printing."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest

from engine.config import ConfigSpec, option, port_check
from engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Sample:
    host: str = option("127.0.0.1", "address")
    port: int = option(8002, "port", check=port_check)
    ratio: float = option(0.5, "a ratio")
    verbose: bool = option(False, "talk more")
    tags: list[str] = option(("a", "b"), "some tags")
    ready_file: str | None = option(None, "where to write readiness")
    mode: str = option("fast", "speed", choices=("fast", "slow"))
    token: str = option("", "a secret", secret=True)

    def __post_init__(self) -> None:
        if self.mode == "slow" and self.verbose:
            raise ConfigError("slow mode cannot be verbose")


SPEC = ConfigSpec(Sample, env_prefix="DAMSELFLY_TEST", prog="sample")


def test_defaults():
    loaded = SPEC.load([], env={})
    assert loaded.config == Sample()
    assert loaded.config.tags == ["a", "b"]
    assert set(loaded.sources.values()) == {"default"}
    assert not loaded.print_requested


def test_env_names_are_derived():
    assert SPEC.by_name["ready_file"].env == "DAMSELFLY_TEST_READY_FILE"
    assert SPEC.by_name["ready_file"].flag == "--ready-file"


def test_precedence_flags_env_file_defaults(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('port = 1\nhost = "file"\nratio = 2\ntags = ["x"]\n')
    env = {"DAMSELFLY_TEST_PORT": "2", "DAMSELFLY_TEST_RATIO": "3.5"}
    loaded = SPEC.load(["--config", str(conf), "--port", "3"], env=env)
    c = loaded.config
    assert (c.port, c.ratio, c.host, c.tags, c.mode) == (3, 3.5, "file", ["x"], "fast")
    assert loaded.sources["port"] == "flag --port"
    assert loaded.sources["ratio"] == "env DAMSELFLY_TEST_RATIO"
    assert loaded.sources["host"].startswith("file ")
    assert loaded.sources["mode"] == "default"


def test_config_file_from_env(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("port = 7\n")
    assert SPEC.load([], env={"DAMSELFLY_TEST_CONFIG": str(conf)}).config.port == 7


def test_text_parsing():
    c = SPEC.load(["--verbose", "--tags", "x, y,,z", "--ready-file", "/tmp/r"], env={}).config
    assert c.verbose and c.tags == ["x", "y", "z"] and c.ready_file == "/tmp/r"
    assert not SPEC.load(["--no-verbose"], env={"DAMSELFLY_TEST_VERBOSE": "yes"}).config.verbose
    assert SPEC.load([], env={"DAMSELFLY_TEST_VERBOSE": "On"}).config.verbose
    assert SPEC.load([], env={"DAMSELFLY_TEST_READY_FILE": ""}).config.ready_file is None


@pytest.mark.parametrize("argv,env,needle", [
    (["--port", "abc"], {}, "flag --port: expected an integer"),
    ([], {"DAMSELFLY_TEST_PORT": "70000"}, "env DAMSELFLY_TEST_PORT: port must be within"),
    ([], {"DAMSELFLY_TEST_VERBOSE": "maybe"}, "true or false"),
    (["--mode", "medium"], {}, "must be one of fast, slow"),
    (["--mode", "slow", "--verbose"], {}, "slow mode cannot be verbose"),
])
def test_bad_values(argv, env, needle):
    with pytest.raises(ConfigError, match=needle):
        SPEC.load(argv, env=env)


@pytest.mark.parametrize("text,needle", [
    ("prot = 1\n", "unknown option 'prot'"),
    ('port = "1"\n', "expected an integer for port, got str"),
    ("port = true\n", "expected an integer"),
    ("tags = [1]\n", "comma-separated list"),
    ("port = \n", "not valid TOML"),
])
def test_bad_files(tmp_path, text, needle):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        SPEC.load(["--config", str(conf)], env={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        SPEC.load(["--config", str(tmp_path / "nope.toml")], env={})


def test_unknown_flag_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        SPEC.load(["--nope"], env={})
    assert exc.value.code == 2
    capsys.readouterr()


def test_print_config_round_trips(tmp_path):
    loaded = SPEC.load(["--print-config", "--port", "9", "--token", "hunter2",
                        "--host", 'we"ird\\'], env={})
    assert loaded.print_requested
    text = SPEC.dump(loaded.config, loaded.sources)
    assert "hunter2" not in text and "# flag --port" in text
    assert "# ready_file = (unset)" in text
    data = tomllib.loads(text)
    assert data["port"] == 9 and data["token"] == "***" and data["host"] == 'we"ird\\'
    conf = tmp_path / "c.toml"
    conf.write_text(SPEC.dump(loaded.config).replace('token = "***"\n', ""))
    assert SPEC.load(["--config", str(conf)], env={}).config.port == 9


def test_help_mentions_env(capsys):
    with pytest.raises(SystemExit):
        SPEC.load(["--help"], env={})
    out = capsys.readouterr().out
    assert "DAMSELFLY_TEST_PORT" in out and "--ready-file" in out and "***" in out


@pytest.mark.parametrize("argv,needle", [
    (["--registry", "https://r.example"], "registry is the mirror's upstream: it needs proxy"),
    (["--proxy", "65001"], "not an ip:port address"),
    (["--proxy", "127.0.0.1:70000"], "not an ip:port address"),
    (["--proxy", "127.0.0.1:0", "--registry", "r.example"], "must be an http\\(s\\) URL"),
])
def test_dfdaemon_mirror_options_are_checked(argv, needle):
    from engine.daemon.config import SPEC as DAEMON

    with pytest.raises(ConfigError, match=needle):
        DAEMON.load(argv, env={})


def test_dfdaemon_mirror_options_parse():
    from engine.daemon.config import SPEC as DAEMON, proxy_address

    c = DAEMON.load(["--proxy", "[::1]:65001", "--registry", "http://127.0.0.1:5000"],
                    env={}).config
    assert proxy_address(c.proxy) == ("::1", 65001) and c.registry == "http://127.0.0.1:5000"
    assert DAEMON.load([], env={}).config.proxy == ""
