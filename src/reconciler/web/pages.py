"""The pages a subscriber sees: unsubscribe (RFC 8058 one-click and the page), preferences, the subscribe form with
double opt-in, and "view online".

A GET never changes anything (link scanners fetch every URL in a message); changes come from a POST: the one-click
body, or a form posted from our own pages (Origin checked, signed CSRF field).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from reconciler.compose import view_online
from reconciler.i18n import N_, Language, accept_language, choose_language
from reconciler.rows import normalise_email
from reconciler.spec.contact import FREQUENCIES
from reconciler.spec.documents import MailingList, marketing_lists
from reconciler.state import pages as page_facts
from reconciler.state import subscribers
from reconciler.state.ledger import CONFIRMATION_SOURCE
from reconciler.state.postgres import StateDatabase
from reconciler.state.subscribers import MessageTarget
from reconciler.web.context import Site, context, ip
from reconciler.web.security import csrf_token, csrf_valid

log = logging.getLogger(__name__)
FOREIGN_FORM = N_("Forms are accepted from this site only.")
VIEW_POLICY = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline' https:; font-src https:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""View online: the newsletter's own images and fonts load from the web; nothing may run or frame it."""


def speaks(request: Request, site: Site, *, locale: str | None = None, lists: tuple[str, ...] = ()) -> Language:
    """The language of a page: the contact's locale, else the language of the lists it is about, else what the
    browser asks for, else English (each only where we have a catalog for it)."""
    languages = [site.lists[n].language for n in lists if n in site.lists]
    return choose_language([locale, *languages, *accept_language(request.headers.get("accept-language"))])


async def page(request: Request, name: str, language: Language, *, status: int = 200, **values: Any) -> HTMLResponse:
    site = await context(request).site()
    organization = site.runtime.settings.organization.model_dump()
    html = site.pages.render_or_builtin(name, language, organization=organization, **values)
    return HTMLResponse(html, status_code=status, headers={"content-language": language.tag})


def refuse(request: Request, site: Site, message: str, status: int, **headers: str) -> Response:
    """A short plain answer to a form, in the browser's language."""
    text = speaks(request, site).gettext(message)
    return PlainTextResponse(text + "\n", status, headers=headers)


async def invalid(request: Request) -> HTMLResponse:
    """The one answer to every token that does not verify, whatever was wrong with it (in the browser's language:
    nothing about the token decides it)."""
    return await page(request, "invalid.html", speaks(request, await context(request).site()), status=404)


def list_titles(lists: Mapping[str, MailingList], names: tuple[str, ...], language: Language) -> str:
    titles = [lists[n].title if n in lists else n for n in names]
    return ", ".join(titles) or language.gettext("these emails")


async def unsubscribe(request: Request) -> Response:
    web = context(request)
    site = await web.site()
    row_id = site.signer.verify("unsubscribe", request.path_params["token"])
    if row_id is None:
        return await invalid(request)
    if request.method == "GET":  # link scanners fetch every URL: a GET never changes anything
        target = await web.read(subscribers.message_target, row_id)
    else:
        form = await request.form()
        if form.get("List-Unsubscribe") != "One-Click":  # RFC 8058's body, which the page's button sends too
            return PlainTextResponse("expected List-Unsubscribe=One-Click\n", 400)
        source = "unsubscribe page" if "text/html" in request.headers.get("accept", "") else "one-click"
        target = await web.write(_unsubscribe, row_id, at=web.now(), source=source, ip=ip(request))
    reader = await web.read(page_facts.reader, target.contact_id) if target is not None else None
    if target is None or reader is None:
        return await invalid(request)
    language = speaks(request, site, locale=reader.locale, lists=target.lists)
    values: dict[str, Any] = {
        "email": target.email,
        "titles": list_titles(site.lists, target.lists, language),
        "preferences_url": f"{site.runtime.public_url}/p/{site.signer.sign('preferences', target.contact_id)}",
    }
    return await page(request, "unsubscribe.html", language, done=request.method == "POST", **values)


def _unsubscribe(db: StateDatabase, row_id: int, *, at: str, source: str, ip: str | None) -> MessageTarget | None:
    target = subscribers.message_target(db, row_id)
    if target is not None:
        subscribers.unsubscribe(db, target, at=at, source=source, ip=ip)
    return target


async def preferences(request: Request) -> Response:
    web = context(request)
    site = await web.site()
    contact_id = site.signer.verify("preferences", request.path_params["token"])
    if contact_id is None:
        return await invalid(request)
    public = {n: spec for n, spec in site.lists.items() if spec.visibility == "public"}
    if request.method == "POST":
        if not same_origin(request, site.runtime.public_url):
            return refuse(request, site, FOREIGN_FORM, 403)
        form = await request.form()
        if not csrf_valid(site.signer, str(form.get("csrf", "")), contact_id):
            return refuse(request, site, N_("This form has expired; open the link from your email again."), 403)
        if form.get("action") == "unsubscribe_all":
            marketing = marketing_lists(site.lists)
            done = await web.write(
                _unsubscribe_all, contact_id, marketing_lists=marketing, at=web.now(), ip=ip(request)
            )
            return RedirectResponse(f"{request.url.path}?saved=all", 303) if done else await invalid(request)
        chosen = set(form.getlist("list"))
        frequency = str(form.get("frequency") or "") or None
        done = await web.write(
            _save,
            contact_id,
            lists={n: n in chosen for n in public},
            frequency=frequency if frequency in FREQUENCIES else None,
            at=web.now(),
            ip=ip(request),
        )
        return RedirectResponse(f"{request.url.path}?saved=1", 303) if done else await invalid(request)
    prefs = await web.read(subscribers.preferences, contact_id)
    reader = await web.read(page_facts.reader, contact_id)
    if prefs is None or reader is None:
        return await invalid(request)
    items = [
        {
            "name": name,
            "title": spec.title,
            "description": spec.description,
            "subscribed": prefs.subscriptions.get(name) == "subscribed" and not prefs.unsubscribed_from_all,
            "since": reader.since.get(name),
        }
        for name, spec in sorted(public.items(), key=lambda item: item[1].title)
    ]
    return await page(
        request,
        "preferences.html",
        speaks(request, site, locale=reader.locale, lists=reader.lists),
        email=prefs.email,
        lists=items,
        frequency=prefs.frequency or "",
        csrf=csrf_token(site.signer, contact_id),
        saved=request.query_params.get("saved"),
    )


def _unsubscribe_all(
    db: StateDatabase, contact_id: int, *, marketing_lists: list[str], at: str, ip: str | None
) -> bool:
    if subscribers.preferences(db, contact_id) is None:
        return False
    subscribers.unsubscribe_all(db, contact_id, marketing_lists=marketing_lists, at=at, source="preferences", ip=ip)
    return True


def _save(
    db: StateDatabase, contact_id: int, *, lists: dict[str, bool], frequency: str | None, at: str, ip: str | None
) -> bool:
    if subscribers.preferences(db, contact_id) is None:
        return False
    subscribers.save_preferences(db, contact_id, lists=lists, frequency=frequency, at=at, ip=ip)
    return True


async def subscribe(request: Request) -> Response:
    web = context(request)
    site = await web.site()
    wait = await web.limits.per_ip.retry_after(ip(request) or "unknown")
    if wait:
        return too_many(request, site, wait)
    form = await request.form()
    lists = site.lists
    wanted = [str(n) for n in form.getlist("list")]
    language = speaks(request, site, lists=tuple(n for n in wanted if n in lists))
    if form.get("website"):  # the honeypot field people never see: the answer a person would get, nothing done
        return await page(request, "subscribed.html", language, email=str(form.get("email", ""))[:254])
    try:
        email = normalise_email(str(form.get("email", "")))
    except ValueError as exc:
        return PlainTextResponse(f"email: {exc}\n", 422)
    wait = await web.limits.per_address.retry_after(email)
    if wait:
        return too_many(request, site, wait)
    unknown = [n for n in wanted if n not in lists or lists[n].visibility != "public"]
    if not wanted or unknown:
        return PlainTextResponse(f"list: choose one of the public lists (unknown: {', '.join(unknown)})\n", 422)
    await web.write(
        subscribers.request_subscription,
        email,
        [(n, lists[n].opt_in == "double") for n in wanted],
        first_name=str(form.get("first_name") or "")[:100] or None,
        at=web.now(),
        ip=ip(request),
        text=str(form.get("consent") or "subscribe form")[:500],
        locale=_browser_locale(request, site, wanted, language),
    )
    return await page(request, "subscribed.html", language, email=email)


def _browser_locale(request: Request, site: Site, wanted: list[str], language: Language) -> str | None:
    """The language the page spoke when the browser chose it (no list has one): the subscriber read the thanks in
    it, and reads the confirmation email in it too."""
    if any(site.lists[n].language for n in wanted if n in site.lists):
        return None
    asked = {tag.split("-")[0].lower() for tag in accept_language(request.headers.get("accept-language"))}
    return language.tag if language.tag.split("-")[0].lower() in asked else None


async def confirm(request: Request) -> Response:
    web = context(request)
    site = await web.site()
    row_id = site.signer.verify("confirm", request.path_params["token"])
    found = await web.read(_confirmation, row_id) if row_id is not None else None
    if found is None:
        return await invalid(request)
    target, status, locale = found
    language = speaks(request, site, locale=locale, lists=target.lists)
    values: dict[str, Any] = {"email": target.email, "title": list_titles(site.lists, target.lists, language)}
    if request.method == "GET":  # a scanner following the link must not confirm: the button POSTs
        return await page(request, "confirm.html", language, done=status == "subscribed", **values)
    if not same_origin(request, site.runtime.public_url):  # as the preference form: our page only
        return refuse(request, site, FOREIGN_FORM, 403)
    await web.write(subscribers.confirm, target, at=web.now(), ip=ip(request))
    return await page(request, "confirm.html", language, done=True, **values)


def _confirmation(db: StateDatabase, row_id: int) -> tuple[MessageTarget, str | None, str | None] | None:
    target = subscribers.message_target(db, row_id)
    if target is None or target.source != CONFIRMATION_SOURCE or not target.lists:
        return None
    reader = page_facts.reader(db, target.contact_id)
    locale = reader.locale if reader is not None else None
    return target, subscribers.subscription_status(db, target.contact_id, target.lists[0]), locale


async def view(request: Request) -> Response:
    web = context(request)
    row_id = await web.verified("view", request.path_params["token"])
    html = await web.read(_view, row_id) if row_id is not None else None
    if html is None:
        return await invalid(request)
    return HTMLResponse(html, headers={"content-security-policy": VIEW_POLICY})


def _view(db: StateDatabase, row_id: int) -> str | None:
    try:
        return view_online(db, row_id)
    except Exception:  # a message that cannot be rendered again is shown as an invalid link, never a 500
        log.exception("view online: cannot render ledger row %d", row_id)
        return None


def same_origin(request: Request, public_url: str) -> bool:
    """A browser's Origin (or Referer) header must name our public host (or the Host a proxy passed on) when it
    sends one: a page elsewhere cannot post our forms (with the CSRF field, the second guard)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return True
    ours = {urlsplit(public_url).netloc, request.headers.get("host", ""), urlsplit(str(request.url)).netloc}
    return urlsplit(origin).netloc in ours - {""}


def too_many(request: Request, site: Site, wait: int) -> Response:
    return refuse(request, site, N_("Too many requests; please try again later."), 429, **{"Retry-After": str(wait)})
