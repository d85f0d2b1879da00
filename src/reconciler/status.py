"""`reconciler status`: the state as an operator reads it (campaign conditions, progress, revisions, errors;
workflows' runs and what became of their messages)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from reconciler.state import lease, observe, processes, workflow_reads, workflows
from reconciler.state.campaigns import campaign_records
from reconciler.state.ledger import Failure
from reconciler.state.postgres import StateDatabase
from reconciler.state.records import HEARTBEAT_SECONDS, daemon_record, refused_revision, revisions
from reconciler.words import count

PROGRESS_STATES = ("queued", "sending", "deferred", "sent", "uncertain", "failed", "skipped")


STALE_SECONDS = 2 * HEARTBEAT_SECONDS + 60
"""A daemon record older than this is from a daemon that is not running (a running one writes every 5 minutes)."""


def state_problems(db: StateDatabase) -> list[str]:
    """What in the state needs an operator, whatever the daemon's loops say: a refused revision in force, campaigns
    that are not Ready. `/healthz` and `status` both show these."""
    refused = refused_revision(db)
    problems = [refused.problem()] if refused is not None else []
    problems += [
        f"campaign {record.name} is not ready ({record.reason}): {record.message}"
        for record in campaign_records(db)
        if not record.ready and record.removed_at is None
    ]
    return problems


def status_report(db: StateDatabase) -> dict[str, Any]:
    observed = observe(db, audience=False)
    refused = refused_revision(db)
    last = revisions(db, limit=1)
    daemon = daemon_record(db)
    return {
        "revision": {
            "applied": observed.last_applied_revision,
            "git_commit": (last[0]["git_commit"] if last else None) or None,
            "applied_at": last[0]["applied_at"] if last else None,
        },
        "last_error": refused.as_dict() if refused else None,
        "daemon": {**daemon.__dict__, "problems": list(daemon.problems)} if daemon else None,
        **daemons(db, now=datetime.now(UTC)),
        "problems": state_problems(db),
        "contacts": observed.contacts,
        "campaigns": [
            {
                "name": record.name,
                "status": record.status,
                "ready": record.ready,
                "reason": record.reason,
                "message": record.message,
                "start_at": record.start_at,
                "started_at": record.started_at,
                "recipients": record.recipients,
                "progress": {state: record.progress.get(state, 0) for state in PROGRESS_STATES},
                "removed": record.removed_at is not None,
                "not_applied": record.not_applied,
                "last_attempted_revision": record.last_attempted_revision,
                "last_applied_revision": record.last_applied_revision,
            }
            for record in sorted(observed.campaigns.values(), key=lambda r: (r.removed_at is not None, r.name))
        ],
        "workflows": sorted(observed.workflows),
        "runs": workflows.active_by_step(db),
        "workflow_messages": workflow_reads.messages_by_workflow(db),
        "lists": sorted(name for name, record in observed.lists.items() if not record.removed_at),
    }


def daemons(db: StateDatabase, *, now: datetime) -> dict[str, Any]:
    """The daemons beating on this database and the reconcile lease: `processes` (those that beat lately, less
    those on this host whose process has exited; each with whether it holds the lease) and `lease` (None before any
    daemon took it)."""
    held = lease.read(db)
    holder = held.holder if held is not None and held.expires_at > now.timestamp() else None
    shown = None
    if held is not None:
        expires = datetime.fromtimestamp(held.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        shown = {
            "holder": held.holder,
            "host": held.host,
            "pid": held.pid,
            "generation": held.generation,
            "expires_at": expires if held.holder else None,
            "expired": held.holder is not None and holder is None,
            "taken_at": held.taken_at,
            "renewed_at": held.renewed_at,
        }
    here = socket.gethostname()
    running = [
        p for p in processes.live(db, now=now) if p.host != here or processes.pid_alive(p.pid)
    ]  # not one killed just now
    return {"processes": [{**p.__dict__, "holds_lease": p.id == holder} for p in running], "lease": shown}


def _daemon_lines(report: dict[str, Any]) -> list[str]:
    """Each daemon beating on the database, and which one applies (the lease holder), when there is any."""
    running, held = report["processes"], report["lease"]
    if not running and (held is None or held["holder"] is None):
        return []
    out = [f"Processes: {count(len(running), 'daemon')} running; the lease holder applies, starts and runs workflows"]
    for process in running:
        lead = f", holds the lease (until {held['expires_at']})" if process["holds_lease"] else ""
        where = f"{process['host']} (pid {process['pid']}, {process['role']})"
        out.append(f"  {where}: {process['status']}, heard from at {process['heartbeat_at']}{lead}")
    if held is not None and held["holder"] and not any(p["holds_lease"] for p in running):
        where = f"{held['host']} (pid {held['pid']})"
        if held["expired"]:
            out.append(f"  lease: expired at {held['expires_at']}, last held by {where}: the next daemon takes it")
        else:
            out.append(f"  lease: held by {where} until {held['expires_at']}, not heard from")
    return out


def _breakdown(progress: dict[str, int]) -> str:
    """ " · sent 293 · waiting 197": where a started campaign's messages are, when not all are sent."""
    waiting = progress["queued"] + progress["deferred"] + progress["sending"]
    parts = [
        ("sent", progress["sent"]),
        ("waiting", waiting),
        ("failed", progress["failed"]),
        ("uncertain", progress["uncertain"]),
        ("skipped", progress["skipped"]),
    ]
    if not sum(progress.values()) or progress["sent"] == sum(progress.values()):
        return ""
    return "".join(f" · {name} {n:,}" for name, n in parts if n)


def outcomes(counts: dict[str, int]) -> str:
    """ "sent 120 · waiting 4 · postponed 3": a workflow's messages by outcome, those with none left out."""
    return " · ".join(f"{name} {counts[name]:,}" for name in workflow_reads.OUTCOMES if counts.get(name)) or "-"


def _workflow_lines(runs: dict[str, dict[str, int]], messages: dict[str, dict[str, int]]) -> list[str]:
    """Per workflow with runs or messages: its active runs by step, then its messages by outcome (with where to read
    why those not sent were not)."""
    lines = []
    for name in sorted(runs.keys() | messages.keys()):
        steps = runs.get(name, {})
        on = ", ".join(f"{step or 'the end'} {n:,}" for step, n in sorted(steps.items()))
        lines.append(
            f"Workflow {name}: {count(sum(steps.values()), 'active run')} ({on})"
            if steps
            else f"Workflow {name}: no active runs"
        )
        if name in messages:
            counts = messages[name]
            unsent = any(counts[outcome] for outcome in ("postponed", "failed", "uncertain", "skipped"))
            why = f"; see `reconciler status {name} --failures`" if unsent else ""
            lines.append(f"    messages: {outcomes(counts)}{why}")
    return lines


def workflow_report(db: StateDatabase, name: str) -> dict[str, Any]:
    """`status WORKFLOW`: its status, its ended runs by outcome, and step by step (in the order runs meet them,
    then steps no longer in it) its active runs and its messages by outcome."""
    info = workflow_reads.workflow_info(db, name)
    runs = workflows.active_by_step(db).get(name, {})
    messages = workflow_reads.messages_by_step(db, name)
    known = info.steps if info else ()
    others = sorted((runs.keys() | messages.keys()) - set(known))
    return {
        "workflow": name,
        "status": info.status if info else None,
        "removed": info.removed if info else True,
        "active_runs": sum(runs.values()),
        "ended_runs": workflow_reads.ended_runs(db, name),
        "steps": [
            {
                "step": step,
                "in_workflow": step in known,
                "runs": runs.get(step, 0),
                "messages": messages.get(step, dict.fromkeys(workflow_reads.OUTCOMES, 0)),
            }
            for step in (*known, *others)
        ],
    }


def format_workflow(report: dict[str, Any]) -> str:
    removed = ", file removed" if report["removed"] else ""
    out = [f"Workflow {report['workflow']}: {report['status']}{removed}, {count(report['active_runs'], 'active run')}"]
    rows = [("STEP", "RUNS", "MESSAGES")]
    for step in report["steps"]:
        name = (step["step"] or "the end") + ("" if step["in_workflow"] else " (removed)")
        rows.append((name, f"{step['runs']:,}" if step["runs"] else "-", outcomes(step["messages"])))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    out += ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]) for row in rows]
    if report["ended_runs"]:
        out.append("Ended runs: " + " · ".join(f"{why} {n:,}" for why, n in report["ended_runs"].items()))
    if any(step["messages"][o] for step in report["steps"] for o in ("postponed", "failed", "uncertain", "skipped")):
        out.append(f"(why messages were not sent: `reconciler status {report['workflow']} --failures`)")
    return "\n".join(out)


def _daemon_line(daemon: dict[str, Any], *, degraded: bool) -> str:
    """How the daemon is, from its last record: stopped, silent for too long (not running), its process gone, or
    its health (degraded too when the state needs someone: a refused revision, a campaign not Ready)."""
    where = f"on {daemon['host']} (pid {daemon['pid']})"
    seen = daemon["seen_at"]
    if daemon["status"] == "stopped":
        return f"Daemon: stopped at {seen} {where}"
    silent = (datetime.now(UTC) - datetime.fromisoformat(seen)).total_seconds()
    if daemon["host"] == socket.gethostname() and not processes.pid_alive(int(daemon["pid"])):
        return f"Daemon: not running (pid {daemon['pid']} on this host has exited; last heard from at {seen})"
    if silent > STALE_SECONDS:
        return f"Daemon: not heard from since {seen} ({int(silent // 60)} min ago) {where}: is it running?"
    state = "degraded" if degraded else daemon["status"]
    return f"Daemon: {state} at {seen} {where}"


def format_status(report: dict[str, Any]) -> str:
    revision = report["revision"]
    out = [f"State: {report['state']} (PostgreSQL)"] if report.get("engine") == "postgresql" else []
    if revision["applied"]:
        commit = f" (commit {revision['git_commit']})" if revision["git_commit"] else ""
        out.append(f"Applied revision: {revision['applied']}{commit} at {revision['applied_at']}")
    else:
        out.append("Applied revision: none yet (run `reconciler apply` or `reconciler run`)")
    daemon, error = report["daemon"], report["last_error"]
    if daemon:
        out.append(_daemon_line(daemon, degraded=bool(report["problems"])))
        out += [f"  {problem}" for problem in daemon["problems"]]
    out += _daemon_lines(report)
    if error:
        out.append(
            f"Last error: revision {error['revision']} has {error['count']} error(s) since {error['since']}; "
            "the last good revision stays in force:"
        )
        out += [f"  {line}" for line in error["problems"]]
    out.append(
        f"Contacts: {report['contacts']:,}   Lists: {', '.join(report['lists']) or '-'}   "
        f"Workflows: {', '.join(report['workflows']) or '-'}"
    )
    out += _workflow_lines(report["runs"], report["workflow_messages"])
    out.append("")
    if not report["campaigns"]:
        out.append("No campaigns applied yet.")
        return "\n".join(out)
    return "\n".join(out + _campaign_table(report["campaigns"]))


def format_campaign(campaign: dict[str, Any]) -> str:
    """`status CAMPAIGN`: its line of the status table, and where its failures are."""
    lines = _campaign_table([campaign])
    lines.append(f"Messages that did not go out, with why: reconciler status {campaign['name']} --failures")
    return "\n".join(lines)


def _campaign_table(campaigns: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    rows = [("CAMPAIGN", "STATUS", "READY", "REASON", "PROGRESS", "REVISION")]
    for c in campaigns:
        progress = c["progress"]
        total = sum(progress.values())
        shown = f"{progress['sent']:,}/{total:,} sent" if total else "-"
        name = c["name"] + (" (file removed)" if c["removed"] else "")
        ready = "yes" if c["ready"] else "no"
        rows.append((name, c["status"], ready, c["reason"], shown, c["last_applied_revision"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index:
            campaign = campaigns[index - 1]
            out.append(f"    {campaign['message']}{_breakdown(campaign['progress'])}")
            if campaign["not_applied"]:
                out.append(f"    warning: {campaign['not_applied']}")
    return out


def format_failures(
    subject: str,
    found: list[Failure],
    *,
    limit: int,
    kinds: str = "failed, uncertain or waiting-to-retry",
    headings: tuple[str, str] = ("STAGE", "LAST REPLY"),
) -> str:
    """`status NAME --failures`: each message that did not arrive (for a campaign "Campaign x", with its stage and
    the server's last reply; for a workflow "Workflow x", with its step and why)."""
    if not found:
        return f"{subject}: no {kinds} messages."
    rows = [("ADDRESS", headings[0], "STATE", "ATTEMPTS", "WHEN", headings[1])]
    rows += [(f.email, f.stage or "-", f.state, str(f.attempts), f.at, f.reply) for f in found]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5]]) for row in rows]
    if len(found) == limit:
        lines.append(f"(the latest {limit:,}; --limit N shows more)")
    return "\n".join(lines)
