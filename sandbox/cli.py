"""The `sandbox` command line."""

from __future__ import annotations

import enum
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sandbox import catalog
from sandbox import scenario as scenario_mod

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="ML Incident Sandbox: production-debugging interviews for ML engineers.",
)
faults_app = typer.Typer(no_args_is_help=True, help="The fault catalog.")
scenario_app = typer.Typer(no_args_is_help=True, help="Scenario files.")
decoys_app = typer.Typer(no_args_is_help=True, help="Decoys: harmless changes beside the faults.")
session_app = typer.Typer(no_args_is_help=True, help="Candidate sessions on a running stack.")
app.add_typer(faults_app, name="faults")
app.add_typer(decoys_app, name="decoys")
app.add_typer(scenario_app, name="scenario")
app.add_typer(session_app, name="session")
dashboards_app = typer.Typer(no_args_is_help=True, help="The dashboards of sandbox/dashboards/.")
app.add_typer(dashboards_app, name="dashboards")
deploy_app = typer.Typer(no_args_is_help=True, help="The stack as manifests for a cluster.")
app.add_typer(deploy_app, name="deploy")
console = Console()
err = Console(stderr=True)

DEFAULT_WORLD = Path("worlds/demo")


def _fail(message: str, code: int = 2) -> None:
    # Not wrapped: a path or field name broken across lines cannot be copied or searched for.
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings():
    """The stack's settings from the environment (`SANDBOX_...`); a bad value is an error naming
    its variable."""
    from sandbox.services.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        _fail(str(exc))


def _load(path: Path | None, seed: int | None = None, scale: float | None = None):
    try:
        return scenario_mod.load(path).with_overrides(seed=seed, scale=scale)
    except scenario_mod.ScenarioError as exc:
        _fail(str(exc))


def _run_build(spec: scenario_mod.Scenario, out: Path, force: bool, as_json: bool = False) -> None:
    from sandbox.pipeline.train import TooFewCustomers
    from sandbox.world.build import WorldExists, build

    if as_json:
        say = functools.partial(print, flush=True)

        def report(stage: str, done: int, total: int) -> None:
            say(json.dumps({"stage": stage, "done": done, "total": total}))

        try:
            summary = build(spec, out, force=force, progress=report)
        except (WorldExists, TooFewCustomers) as exc:
            _fail(str(exc))
        except OSError as exc:
            if not _writing(out, exc):
                raise
            _fail(_unwritable(out, exc))
        say(json.dumps({"done": True, "seed": summary.manifest["seed"], "out": str(out)}))
        return

    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[str, int] = {}
    with Progress(*columns, console=err, transient=False) as bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            summary = build(spec, out, force=force, progress=progress)
        except (WorldExists, TooFewCustomers) as exc:
            _fail(str(exc))
        except OSError as exc:
            if not _writing(out, exc):
                raise
            _fail(_unwritable(out, exc))
    _print_summary(summary.manifest, out)


def _writing(out: Path, exc: OSError) -> bool:
    """Whether `exc` came from writing the world at `out` (its directory or a file in it), not
    from anything else the build does."""
    if exc.filename is None:
        return False
    failed, target = Path(str(exc.filename)).absolute(), out.absolute()
    return failed == target or target in failed.parents


def _unwritable(out: Path, exc: OSError) -> str:
    return f"cannot write the world to {out}: {exc.strerror or exc} ({exc.filename or out})"


def _print_summary(manifest: dict, out: Path) -> None:
    table = Table(
        title=f"world {manifest['name']} (seed {manifest['seed']}, "
        f"scale {manifest['scale']}) in {out}"
    )
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in manifest["tables"].items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    model = manifest["model"]
    console.print(
        f"model {model['name']} v{model['version']}: holdout AUC {model['holdout_auc']:.3f}, "
        f"PR-AUC {model['holdout_pr_auc']:.3f}, Brier {model['holdout_brier']:.4f}"
    )
    console.print(
        f"content hash {manifest['content_hash'][:16]}…, built in {manifest['build_seconds']:.0f} s"
    )


@app.command("build")
def build_cmd(
    scenario: Annotated[
        Path | None, typer.Argument(help="Scenario TOML; default: built-in.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="World directory to write.")] = DEFAULT_WORLD,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    scale: Annotated[float | None, typer.Option(help="Multiply the customer count.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing world.")] = False,
    progress: Annotated[
        str, typer.Option("--progress", help="bar, or json: one line per update, for programs.")
    ] = "bar",
) -> None:
    """Build a world: six simulated weeks of a production ML system with planted faults."""
    if scale is not None and scale <= 0:
        _fail("--scale must be greater than 0")
    if seed is not None and seed < 0:
        _fail("--seed must be 0 or more")
    if progress not in ("bar", "json"):
        _fail("--progress: bar or json")
    _run_build(_load(scenario, seed, scale), out, force, as_json=progress == "json")


VERIFY_OUTCOMES = {
    "passed": "[green]pass[/]",
    "failed": "[red]FAIL[/]",
    "not measurable": "[yellow]not measurable[/]",
}


@app.command("verify")
def verify_cmd(
    world: Annotated[Path, typer.Argument(help="A built world directory.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check that every planted fault shows its symptom and the rest of the world is healthy.

    Each check passes, fails, or is not measurable (the world cannot decide it yet); exits 1
    when a check fails or a planted fault or decoy has no check that passed."""
    from sandbox.layout import IncompleteWorld
    from sandbox.verify import verify

    try:
        result = verify(world)
    except IncompleteWorld as exc:
        _fail(str(exc))
    if as_json:
        console.print_json(json.dumps(result.as_json()))
    else:
        table = Table(title=f"verification of {world}")
        for col in ("scope", "check", "result", "detail"):
            table.add_column(col)
        for scope, checks in [
            *result.fault_checks.items(),
            ("healthy world", result.health_checks),
            ("brief", result.brief_checks),
        ]:
            for c in checks:
                table.add_row(scope, c.name, VERIFY_OUTCOMES[c.outcome], c.detail)
        console.print(table)
        counts = result.counts
        console.print(
            f"{counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['not measurable']} not measurable"
        )
        if result.unconfirmed:
            console.print(f"no check that passed shows: {', '.join(result.unconfirmed)}")
    raise typer.Exit(0 if result.passed else 1)


@app.command("report")
def report_cmd(
    world: Annotated[Path, typer.Argument(help="A built world directory.")],
    day: Annotated[str, typer.Argument(help="Production date, YYYY-MM-DD.")],
) -> None:
    """Render (or reuse) one day's drift report and print its path."""
    import datetime as dt

    from sandbox.layout import IncompleteWorld, read_manifest
    from sandbox.monitor.reports import NoReport, drift_report

    try:
        read_manifest(world)
        console.print(str(drift_report(world, dt.date.fromisoformat(day))))
    except (IncompleteWorld, NoReport, ValueError) as exc:
        _fail(str(exc))


@faults_app.command("list")
def faults_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The table the README's catalog section holds.")
    ] = False,
    tiers: Annotated[
        bool,
        typer.Option("--tiers", help="The README's table of queries per fault and difficulty."),
    ] = False,
) -> None:
    """Every fault that can be planted."""

    entries = catalog.faults()
    if as_json:
        console.print_json(json.dumps(entries))
        return
    if markdown:
        typer.echo(catalog.fault_table_markdown())
        return
    if tiers:
        typer.echo(catalog.tier_table_markdown())
        return
    table = Table(title="fault catalog")
    for col in ("id", "stages", "rating", "title"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["id"], ", ".join(e["stages"]), e["rating"], e["title"])
    console.print(table)


@faults_app.command("show")
def faults_show(fault_id: str) -> None:
    """One fault: what it does, its parameters, what the candidate will observe."""
    from sandbox.faults import registry

    try:
        cls = registry.get(fault_id)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    e = catalog.describe_fault(cls)
    console.print(f"[bold]{e['id']}[/]: {e['title']}")
    console.print(
        f"stages: {', '.join(e['stages'])}   hooks: {', '.join(e['hooks'])}   rating: {e['rating']}"
    )
    console.print(f"candidate observes: {e['observation']}")
    if e["min_customers"]:
        console.print(f"needs a world of at least {e['min_customers']:,} customers")
    console.print(e["doc"])
    if e["tiers"] is None:
        console.print("difficulty: the same trail at every tier (guided, standard, hard)")
    else:
        tiers = Table(title="difficulty (the scenario's `difficulty`, or this fault's own)")
        for col in ("tier", "queries to find it", "hidden from the candidate"):
            tiers.add_column(col)
        for tier, about in e["tiers"].items():
            tiers.add_row(tier, str(about["queries"]), "; ".join(about["hidden"]) or "nothing")
        console.print(tiers)
    table = Table(title="parameters")
    for col in ("name", "default", "range / choices", "description"):
        table.add_column(col)
    for p in e["parameters"]:
        table.add_row(p["name"], json.dumps(p["default"]), p["range"], p["description"])
    console.print(table)


@decoys_app.command("list")
def decoys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every decoy a scenario can add (its `[[decoys]]` entries name them by `kind`)."""

    entries = catalog.decoys()
    if as_json:
        console.print_json(json.dumps(entries))
        return
    table = Table(title="decoys")
    for col in ("kind", "title", "parameters"):
        table.add_column(col)
    for e in entries:
        params = ", ".join(f"{p['name']}={json.dumps(p['default'])}" for p in e["parameters"])
        table.add_row(e["kind"], e["title"], params)
    console.print(table)


@scenario_app.command("validate")
def scenario_validate(file: Path) -> None:
    """Validate a scenario file; errors name the file and the field."""
    spec = _load(file)
    console.print(
        f"{file}: ok — world {spec.world.name!r}, seed {spec.world.seed}, "
        f"{spec.world.n_customers:,} customers, {len(spec.faults)} fault(s), "
        f"{len(spec.decoys)} decoy(s)"
    )


@scenario_app.command("schema")
def scenario_schema() -> None:
    """Print the JSON Schema of scenario files."""
    console.print_json(json.dumps(scenario_mod.json_schema()))


def _serve(
    world: Path,
    host: str,
    port: int,
    speed: float,
    with_session: bool,
    prometheus: bool = False,
    listen_fd: int | None = None,
) -> None:
    from sandbox.services import supervisor

    def ready(sup: supervisor.Supervisor) -> None:
        # Plain lines, flushed: the links are for copying, and scripts read them from a pipe.
        say = functools.partial(print, flush=True)
        say(f"gateway:      {sup.url}   (health: {sup.url}/-/health)")
        if with_session:
            links = _create_session(world, "candidate")
            say(f"candidate:    {links['candidate_url']}")
            say(f"interviewer:  {links['interviewer_url']}")
            say(f"operator:     {sup.url}/?token={_operator_token(world)}   (all sessions)")
        else:
            say(f"create a candidate session with: sandbox session create {world}")
        say("Ctrl-C stops every process.")

    try:
        supervisor.run(
            world,
            host,
            port,
            speed,
            say=err.print,
            on_ready=ready,
            prometheus=prometheus,
            listen_fd=listen_fd,
        )
    except supervisor.StackError as exc:
        _fail(str(exc))


@app.command("up")
def up(
    world: Path,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Gateway port; 0 picks a free one.")] = 8000,
    speed: Annotated[
        float,
        typer.Option("--speed", help="Simulated seconds per second (default: 3 days / 90 min)."),
    ] = 48.0,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus", help="Also run Prometheus with the metric history (needs Debian's)."
        ),
    ] = False,
    # The fleet view hands down the gateway's socket it bound, so no other stack takes its port.
    fd: Annotated[int | None, typer.Option("--fd", hidden=True)] = None,
) -> None:
    """Start the running stack on a built world: gateway, services, live traffic, jobs, MLflow."""
    if speed <= 0:
        _fail("--speed must be positive")
    _serve(world, host, port, speed, with_session=False, prometheus=prometheus, listen_fd=fd)


def _operator_token(world: Path) -> str:
    from sandbox.layout import WorldPaths
    from sandbox.services import stack

    return stack.admin_token(WorldPaths(world))


def _gateway_call(world: Path, method: str, path: str, body: dict | None = None) -> Any:
    """A request to the world's running gateway as its operator; exits with a clear message
    when no stack is running or the gateway refuses."""
    import httpx

    from sandbox.layout import WorldPaths
    from sandbox.services import stack

    try:
        base = stack.gateway_url(WorldPaths(world).run)
        reply = httpx.request(
            method,
            base + path,
            json=body,
            headers={"Authorization": f"Bearer {_operator_token(world)}"},
            timeout=30,
        )
    except (OSError, httpx.HTTPError) as exc:
        _fail(f"no running stack for {world} ({exc}); start it with: sandbox up {world}")
    if reply.status_code >= 400:
        detail = (
            reply.json().get("detail") if "json" in reply.headers.get("content-type", "") else ""
        )
        _fail(f"the gateway refused: {detail or reply.status_code}")
    return reply.json() if "json" in reply.headers.get("content-type", "") else reply.text


def _create_session(
    world: Path,
    candidate: str,
    time_limit_min: int | None = None,
    assistance: str = "allowed",
    workspace_only: bool = False,
    actions: bool = False,
) -> dict[str, Any]:
    return _gateway_call(
        world,
        "POST",
        "/api/sessions",
        {
            "candidate": candidate,
            "time_limit_min": time_limit_min,
            "assistance": assistance,
            "workspace_only": workspace_only,
            "actions": actions,
        },
    )


def _assistance(value: str) -> str:
    from sandbox.review.store import ASSISTANCE

    if value not in ASSISTANCE:
        raise typer.BadParameter(f"one of {', '.join(ASSISTANCE)}, not {value!r}")
    return value


class Toggle(enum.StrEnum):
    on = "on"
    off = "off"


@session_app.command("create")
def session_create(
    world: Path,
    candidate: Annotated[str, typer.Option("--candidate")] = "candidate",
    time_limit: Annotated[
        int | None, typer.Option("--time-limit", help="Minutes from the candidate's first visit.")
    ] = None,
    assistance: Annotated[
        str,
        typer.Option(
            "--assistance",
            callback=_assistance,
            help="What the candidate is told about outside help (an assistant, scripts): "
            "allowed or not-allowed. The review shows how the work was done either way.",
        ),
    ] = "allowed",
    workspace_only: Annotated[
        bool,
        typer.Option(
            "--workspace-only",
            help="The candidate's tools answer the workspace's own pages in a browser only: "
            "scripts and other clients are refused.",
        ),
    ] = False,
    actions: Annotated[
        Toggle,
        typer.Option(
            "--actions",
            help="on: the candidate may change the running stack from the ops console (the "
            "session must then be the stack's only one); off: the console only lists actions.",
        ),
    ] = Toggle.off,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a candidate session on the running stack; prints the candidate and interviewer links."""
    links = _create_session(
        world, candidate, time_limit, assistance, workspace_only, actions is Toggle.on
    )
    if as_json:
        console.print_json(json.dumps(links))
        return
    print(f"session {links['session_id']} for {candidate}")
    only = ", workspace pages only" if workspace_only else ""
    print(f"policy:       outside help {assistance.replace('-', ' ')}{only}")
    print(f"candidate:    {links['candidate_url']}")
    print(f"interviewer:  {links['interviewer_url']}")


@session_app.command("list")
def session_list(world: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The sessions on the running stack, with their state."""
    sessions = _gateway_call(world, "GET", "/api/sessions")
    if as_json:
        console.print_json(json.dumps(sessions))
        return
    for s in sessions:
        limit = f"{s['time_limit_min']} min" if s["time_limit_min"] else "no limit"
        policy = s["policy"]
        help_ = f"help {policy['assistance'].replace('-', ' ')}"
        only = ", workspace only" if policy["workspace_only"] else ""
        acting = ", actions on" if s.get("actions") else ""
        print(f"{s['id']}  {s['state']:<12} {s['candidate']}  ({limit}; {help_}{only}{acting})")


@session_app.command("revoke")
def session_revoke(world: Path, session_id: str) -> None:
    """End a session: its candidate and interviewer links stop working at once."""
    done = _gateway_call(world, "POST", f"/api/sessions/{session_id}/revoke")
    print(f"session {done['id']} ({done['candidate']}) is {done['state']}")


@app.command("review")
def review(
    session_id: str,
    export: Annotated[Path, typer.Option("--export", help="FILE.html or FILE.md")],
    world: Annotated[Path, typer.Option("--world")] = DEFAULT_WORLD,
) -> None:
    """Export a session's walk-through review: timeline, evidence marks, diagnosis, answer key,
    scores. Reads the world's records, while its stack runs or after it has stopped."""
    fmt = export.suffix.lstrip(".").lower()
    if fmt not in ("html", "md"):
        _fail(f"{export}: export as .html or .md")
    from sandbox.layout import WorldPaths
    from sandbox.review import export as review_export
    from sandbox.review.gather import NoReview, review_of

    if not WorldPaths(world).answer_key.is_file():
        _fail(f"{world} is not a built world")
    try:
        data = review_of(world, session_id)
    except NoReview as exc:
        _fail(str(exc))
    text = review_export.to_html(data) if fmt == "html" else review_export.to_markdown(data)
    export.write_text(text)
    print(f"wrote {export}")


@app.command("compose-init")
def compose_init(
    world: Path,
    speed: Annotated[float, typer.Option("--speed")] = 48.0,
    scale: Annotated[float, typer.Option("--scale")] = 1.0,
) -> None:
    """Make a world ready for the containers of compose/: build it if it is missing, then write
    the run state they share (addresses, clock, metric history, Grafana dashboards)."""
    from sandbox.layout import IncompleteWorld, read_manifest
    from sandbox.services import compose

    settings = _settings()
    try:
        read_manifest(world)
    except IncompleteWorld:
        _run_build(_load(None, None, scale), world, force=True)
    compose.prepare(world, speed, settings)
    print(f"{world} is ready for the stack's containers")


@deploy_app.command("k8s")
def deploy_k8s(
    out: Path,
    namespace: Annotated[
        str, typer.Option("--namespace", help="One per candidate: the stack and its world.")
    ] = "sandbox",
    public_url: Annotated[
        str, typer.Option("--public-url", help="Where people open the gateway (session links).")
    ] = "http://localhost:8000",
    speed: Annotated[float, typer.Option("--speed")] = 48.0,
    scale: Annotated[float, typer.Option("--scale")] = 1.0,
    world_size: Annotated[str, typer.Option("--world-size", help="The world's volume.")] = "10Gi",
    access_mode: Annotated[
        str, typer.Option("--access-mode", help="ReadWriteMany if pods may land on two nodes.")
    ] = "ReadWriteOnce",
    storage_class: Annotated[str | None, typer.Option("--storage-class")] = None,
    image: Annotated[
        str, typer.Option("--image", help="compose/Dockerfile's image, as the cluster pulls it.")
    ] = "ml-incident-sandbox:latest",
) -> None:
    """Write Kubernetes manifests for the stack into OUT (`kubectl apply -f OUT`): a namespace,
    the world's volume and the Job preparing it, a Deployment and Service per process, and
    NetworkPolicies letting only the gateway be reached from outside the namespace."""
    from pydantic import ValidationError

    from sandbox.services.deploy import k8s

    try:
        options = k8s.Options(
            namespace=namespace,
            public_url=public_url.rstrip("/"),
            speed=speed,
            scale=scale,
            world_size=world_size,
            access_mode=access_mode,
            storage_class=storage_class,
            image=image,
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg']}".replace("_", "-") for e in exc.errors())
        _fail(problems)
    for path in k8s.write(out, options):
        print(path)


@dashboards_app.command("grafana")
def dashboards_grafana(out: Path) -> None:
    """Write the dashboards as Grafana JSON (their Prometheus panels) into OUT."""
    from sandbox.services import grafana

    for path in grafana.export(out, directory=_settings().dashboards):
        print(path)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out")] = DEFAULT_WORLD,
    port: Annotated[int, typer.Option("--port")] = 8000,
) -> None:
    """The main job: build the default world if absent, start the stack, create a session, print
    the candidate and interviewer links."""
    from sandbox.layout import IncompleteWorld, read_manifest
    from sandbox.services.supervisor import StackError, check_world

    try:
        manifest = read_manifest(out)
        check_world(out)
        console.print(f"world already built in {out}")
        _print_summary(manifest, out)
    except (IncompleteWorld, StackError) as unusable:
        if isinstance(unusable, StackError):  # built, but not servable as it is
            console.print(str(unusable).split("; rebuild it")[0] + "; building it again")
        # The build runs in a process of its own: what it loads (the simulation, scikit-learn,
        # Evidently, MLflow) goes with it instead of staying resident beside the stack.
        # -P: the installed package, never a `sandbox/` folder in the directory demo runs from.
        built = subprocess.run(
            [sys.executable, "-P", "-m", "sandbox", "build", f"--out={out}", "--force"]
        )
        if built.returncode != 0:
            # A build ended by a signal exits as a shell reports it (128 + the signal).
            code = built.returncode if built.returncode > 0 else 128 - built.returncode
            raise typer.Exit(code) from None
    _serve(out, "127.0.0.1", port, 48.0, with_session=True)


if __name__ == "__main__":
    app()
