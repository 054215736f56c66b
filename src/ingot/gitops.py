"""GitOps: follow a branch of a git repository and deploy each new commit of it to one environment.

A `Watcher` fetches the branch into a bare mirror kept under the state directory, checks each new
commit out into a fresh directory of its own (so the build context is exactly that commit, whatever
else is in a work tree), and deploys it with the same service functions as `ingot deploy`, recording
the commit in the releases. Every commit of a watched repository deploys into the one state directory
the watcher was given, not into a `.ingot` beside each checkout.

The watcher keeps no state of its own: what it did is in the ledger, and that is all it remembers.

- `watch.deploy` (subject: the commit): the commit went live in the environment.
- `watch.fail` (subject: the commit): it did not: its spec is invalid, its build failed, its
  instances failed the health gate, its canary analysis failed, or its verification window failed
  afterwards. The previous release keeps serving and the commit is not tried again (unless the
  environment's config source changes).

With a `config_source` in the environment, a change of a key the services list (a new revision of it, a
key appearing or going) is applied like a new commit: the head is deployed again, the source's revision
recorded as `config_source` in the attempt's entry.
- `unpin`: an operator gave a pinned environment back to the watcher.

An operator's own change to the environment after the watcher's last attempt (a rollback, a deploy,
a promotion, an abort or `down`) pins it: the watcher leaves it alone until a newer commit arrives
(the watcher deploys it, which ends the pin) or until `ingot unpin` (the watcher then applies the
branch's head again). The watcher never fights the operator.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ingot import config_sources, ledger, operations
from ingot.actor import current_actor
from ingot.config_sources import SourceRead
from ingot.errors import IngotError, UserInputError
from ingot.locks import Locked
from ingot.paths import StatePaths, explicit_state_dir
from ingot.project import open_project
from ingot.spec.loader import parse_spec
from ingot.spec.models import NAME_PATTERN
from ingot.state_layout import project_state
from ingot.store import Store

WATCH_DEPLOY = "watch.deploy"
WATCH_FAIL = "watch.fail"
UNPIN = "unpin"
ATTEMPTS = (WATCH_DEPLOY, WATCH_FAIL)
# What an operator does to an environment that pins it against the watcher.
OPERATOR_ACTIONS = {
    "rollback.start": "a rollback",
    "deploy.start": "a manual deploy",
    "promote.start": "a promotion",
    "rollout.abort": "an abort",
    "down": "ingot down",
}
KEEP_CHECKOUTS = 3
GIT_TIMEOUT = 300.0

OnEvent = Callable[[dict[str, Any]], None]


def short(commit: str | None) -> str:
    return (commit or "-")[:10]


# ---- git --------------------------------------------------------------------------------------
class GitFailure(Exception):
    """git could not do what was asked; the message is git's own last words."""


def _git(*args: str, index: Path | None = None, timeout: float = GIT_TIMEOUT) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    try:
        # A session of its own: no terminal to ask for a password on (ssh, https), and a Ctrl-C meant
        # for the watcher does not kill a fetch halfway.
        done = subprocess.run(["git", *args], capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise GitFailure("git is not installed (ingot watch runs the git command)") from None
    except subprocess.TimeoutExpired:
        raise GitFailure(f"git did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        lines = [line.removeprefix("fatal: ").strip() for line in done.stderr.splitlines() if line.strip()]
        raise GitFailure("; ".join(lines[:3]) or f"git exited with {done.returncode}")
    return done.stdout


def source_url(repo: str, cwd: Path) -> str:
    """What git fetches: a URL (or scp-like `user@host:path`) as given, a local path made absolute."""
    if not repo or repo.startswith("-"):
        raise UserInputError(f"repository {repo!r}: give a local path or a URL git can fetch")
    if "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return repo
    path = (cwd / Path(repo).expanduser()).resolve()
    if not path.is_dir():
        raise UserInputError(f"repository {repo}: no such directory; give a local path or a URL git can "
                             "fetch (file://, https://, ssh://, user@host:path)")
    return str(path)


def check_branch(branch: str) -> str:
    try:
        _git("check-ref-format", "--branch", branch, timeout=10)
    except GitFailure:
        raise UserInputError(f"--branch {branch!r} is not a valid branch name") from None
    return branch


def check_spec_path(path: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise UserInputError(f"--path {path!r}: give the spec's path inside the repository, like ingot.yaml "
                             "or deploy/ingot.yaml")
    return pure.as_posix()


class Mirror:
    """A bare mirror of one repository under the state directory, and fresh checkouts of its commits."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.git_dir = root / "mirror.git"
        self.checkouts = root / "checkouts"

    @classmethod
    def for_url(cls, state: StatePaths, url: str) -> Mirror:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
        tag = hashlib.sha256(url.encode()).hexdigest()[:12]
        return cls(state.root / "gitops" / f"{name or 'repo'}-{tag}", url)

    def probe(self, branch: str) -> None:
        """Check that the repository answers and has the branch, leaving nothing behind if not."""
        heads = _git("ls-remote", "--heads", self.url, f"refs/heads/{branch}")
        if not heads.strip():
            raise GitFailure(f"branch {branch!r} is not in {self.url}")

    def fetch(self, branch: str) -> str:
        """Bring the branch up to date from the repository; return its head commit."""
        if not (self.git_dir / "HEAD").exists():
            self.git_dir.mkdir(parents=True, exist_ok=True)
            _git("init", "--quiet", "--bare", str(self.git_dir))
        ref = f"refs/ingot-watch/{branch}"
        try:
            _git("--git-dir", str(self.git_dir), "fetch", "--quiet", "--no-tags", "--force", self.url,
                 f"+refs/heads/{branch}:{ref}")
        except GitFailure as exc:
            if "couldn't find remote ref" in str(exc):
                raise GitFailure(f"branch {branch!r} is not in {self.url}") from None
            raise
        return _git("--git-dir", str(self.git_dir), "rev-parse", "--verify", f"{ref}^{{commit}}").strip()

    def checkout(self, commit: str) -> Path:
        """A fresh directory holding exactly the commit's tree (no .git, nothing else)."""
        dest = self.checkouts / commit
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        index = self.checkouts / f".{commit}.index"
        try:
            _git("--git-dir", str(self.git_dir), "--work-tree", str(dest), "read-tree", "-u", "--reset", commit,
                 index=index)
        finally:
            index.unlink(missing_ok=True)
        self._prune(keep=dest)
        return dest

    def _prune(self, keep: Path) -> None:
        """Keep the last few checkouts (their artifacts are in the store; these are for people to look at)."""
        others = sorted((p for p in self.checkouts.iterdir() if p.is_dir() and p != keep),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP_CHECKOUTS - 1:]:
            shutil.rmtree(old, ignore_errors=True)


# ---- pins --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pin:
    """An operator's change to a watched environment, made after the watcher last deployed there."""

    environment: str
    action: str
    actor: str
    at: float
    seq: int
    release: str | None  # where the operator took it, when the action says
    commit: str  # the commit the watcher last applied there: it is not deployed again while pinned

    def describe(self) -> str:
        what = OPERATOR_ACTIONS.get(self.action, self.action)
        to = f" to release {self.release}" if self.release else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{what}{to} by {self.actor} at {stamp}"

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "description": self.describe()}


def last_attempt(store: Store, environment: str) -> ledger.LedgerEntry | None:
    return ledger.last_entry(store, actions=ATTEMPTS, environment=environment)


def find_pin(store: Store, environment: str) -> Pin | None:
    """The pin on `environment`: the latest operator action after both the watcher's last attempt and
    the last unpin; None when there is none, or when no watcher has ever applied a commit there."""
    last = last_attempt(store, environment)
    if last is None:
        return None
    unpinned = ledger.last_entry(store, actions=(UNPIN,), environment=environment)
    after = max(last.seq, unpinned.seq if unpinned else 0)
    actions = ledger.entries(store, environment=environment, after=after, actions=tuple(OPERATOR_ACTIONS))
    if not actions:
        return None
    entry = actions[-1]
    release = entry.payload.get("to") if isinstance(entry.payload.get("to"), str) else None
    return Pin(environment, entry.action, entry.actor, entry.at, entry.seq, release, str(last.subject))


def unpin(store: Store, environment: str, actor: str) -> Pin:
    """Give a pinned environment back to the watcher; it applies the branch's head at its next poll."""
    pin = find_pin(store, environment)
    if pin is None:
        if last_attempt(store, environment) is None:
            raise UserInputError(f"{environment} is not watched: 'ingot watch' has not applied a commit there")
        raise UserInputError(f"{environment} is not pinned: the watcher deploys new commits there as they come")
    ledger.record(store, actor=actor, action=UNPIN, environment=environment, subject=pin.commit,
                  payload={"pin": pin.as_dict()})
    return pin


# ---- the watcher -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PollResult:
    """What one poll did.

    outcome: `deployed`, `failed` (recorded; not retried), `unchanged`, `pinned`, or a passing
    trouble that the next poll tries again: `unreachable` (fetch failed), `busy` (someone holds the
    environment's lock), `error`.
    """

    outcome: str
    environment: str
    commit: str | None
    message: str
    details: list[str] = field(default_factory=list)
    phase: str | None = None
    reason: str | None = None
    deployments: list[dict[str, Any]] = field(default_factory=list)
    serving: dict[str, str | None] = field(default_factory=dict)
    pin: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("deployed", "unchanged", "pinned")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def watch_state_dir(repo: str, branch: str, spec_path: str, explicit: Path | None = None,
                    cwd: Path | None = None) -> StatePaths:
    """The one state directory every commit deploys into: --state, else $INGOT_HOME, else the project's
    own beside the spec here, `./.ingot/<project>/` (as for the other commands), with the project named
    by the spec at the branch's head."""
    named = explicit_state_dir(explicit)
    if named is not None:
        return named
    here = (cwd or Path.cwd()).resolve()
    project = project_at_head(source_url(repo, here), check_branch(branch), check_spec_path(spec_path))
    return project_state(here, project).paths


def project_at_head(url: str, branch: str, spec_path: str) -> str:
    """The `project:` of the spec at the head of the branch, from a shallow fetch into a scratch place."""
    with tempfile.TemporaryDirectory(prefix="ingot-watch-") as scratch:
        try:
            Mirror(Path(scratch), url).probe(branch)
        except GitFailure as exc:  # said as Watcher.check says it
            raise UserInputError(f"cannot watch {branch} of {url}: {exc}") from None
        try:
            _git("init", "--quiet", "--bare", scratch)
            _git("--git-dir", scratch, "fetch", "--quiet", "--no-tags", "--depth", "1", url, f"refs/heads/{branch}")
            text = _git("--git-dir", scratch, "show", f"FETCH_HEAD:{spec_path}")
        except GitFailure as exc:
            raise UserInputError(f"cannot read {spec_path} at the head of {branch} in {url} to know its project "
                                 f"(and so its state directory): {exc}; or give --state DIR") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError:
        spec = None
    project = spec.get("project") if isinstance(spec, dict) else None
    if not isinstance(project, str) or not re.fullmatch(NAME_PATTERN, project):
        raise UserInputError(f"{spec_path} at the head of {branch} in {url} names no valid project, so the "
                             "watcher cannot tell its state directory; give --state DIR")
    return project


class Watcher:
    """Deploys each new commit of `branch` in `repo` to `environment`; see the module's docstring."""

    def __init__(self, repo: str, branch: str, environment: str, state: StatePaths, *,
                 spec_path: str = "ingot.yaml", interval: float = 10.0, on_event: OnEvent | None = None,
                 cwd: Path | None = None) -> None:
        if interval <= 0:
            raise UserInputError(f"--interval must be more than 0 seconds, got {interval:g}")
        self.url = source_url(repo, cwd or Path.cwd())
        self.branch = check_branch(branch)
        self.environment = environment
        self.paths = state
        self.spec_path = check_spec_path(spec_path)
        self.interval = interval
        self.mirror = Mirror.for_url(state, self.url)
        self._emit = on_event or (lambda _e: None)

    @cached_property
    def store(self) -> Store:
        return Store(self.paths.root)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()

    def check(self) -> str:
        """Fetch once, with a bad repository or an unknown branch as bad input; return the head commit."""
        try:
            self.mirror.probe(self.branch)
            return self.mirror.fetch(self.branch)
        except GitFailure as exc:
            raise UserInputError(f"cannot watch {self.branch} of {self.url}: {exc}") from None

    def run(self, stop: threading.Event, on_result: Callable[[PollResult], None] | None = None) -> None:
        """Poll until `stop` is set; it is looked at between polls, so a deploy under way finishes first."""
        while not stop.is_set():
            try:
                result = self.poll_once()
            except Exception as exc:  # a background watcher must not die silently of one bad poll
                result = PollResult("error", self.environment, None,
                                    f"internal error: {type(exc).__name__}: {exc}; trying again at the next poll")
            if on_result is not None:
                on_result(result)
            stop.wait(self.interval)

    def poll_once(self) -> PollResult:
        try:
            head = self.mirror.fetch(self.branch)
        except GitFailure as exc:
            return PollResult("unreachable", self.environment, None,
                              f"cannot fetch {self.branch} from {self.url}: {exc}; trying again at the next poll")
        late = self._verification_failure()
        if late is not None:
            return late
        last = last_attempt(self.store, self.environment)
        sourced = self._source_state(head)
        if last is None or last.subject != head:
            return self._apply(head, "new commit", find_pin(self.store, self.environment), sourced)
        unpinned = ledger.last_entry(self.store, actions=(UNPIN,), environment=self.environment)
        if unpinned is not None and unpinned.seq > last.seq:
            return self._apply(head, "unpinned", None, sourced)
        pin = find_pin(self.store, self.environment)
        if pin is not None:
            return PollResult("pinned", self.environment, head,
                              f"{self.environment} is pinned by {pin.describe()}: {short(head)} is not deployed "
                              f"again until a newer commit or 'ingot unpin --env {self.environment}'",
                              pin=pin.as_dict(), serving=self._serving())
        # The environment's config source: a listed key changed (or came, or went) since the last attempt is
        # applied like a new commit, through the same deploy and gates; a failed attempt is not retried until
        # the source changes again.
        if sourced is not None and (last.payload.get("config_source") or {}).get("keys") != sourced.record()["keys"]:
            return self._apply(head, f"config source changed (revision {sourced.revision})", None, sourced)
        if last.action == WATCH_FAIL:
            return PollResult("unchanged", self.environment, head,
                              f"{short(head)} failed ({last.payload.get('error')}); waiting for the next commit",
                              serving=self._serving())
        return PollResult("unchanged", self.environment, head,
                          f"{short(head)} is applied to {self.environment}; waiting for the next commit",
                          serving=self._serving())

    # ---- applying a commit ---------------------------------------------------------------------
    def _source_state(self, commit: str) -> SourceRead | None:
        """The keys the services list, as the environment's config source (in the spec at `commit`) holds them
        now; None when it has none, or cannot be read now (a deploy that is due says why)."""
        try:
            spec = parse_spec(_git("--git-dir", str(self.mirror.git_dir), "show", f"{commit}:{self.spec_path}"),
                              self.spec_path)
            environment = spec.environments.get(self.environment)
            if environment is None or environment.config_source is None:
                return None
            names = sorted({key for name in spec.services for key in spec.service_for(self.environment, name).config})
            return config_sources.from_spec(environment.config_source).read(names) if names else None
        except (GitFailure, IngotError):
            return None

    def _apply(self, commit: str, reason: str, pin: Pin | None, sourced: SourceRead | None = None) -> PollResult:
        self._emit({"event": "commit", "commit": commit, "reason": reason, "branch": self.branch,
                    "environment": self.environment, "ends_pin": pin.describe() if pin else None})
        base = {"commit": commit, "repo": self.url, "branch": self.branch, "path": self.spec_path,
                "reason": reason, "ended_pin": pin.as_dict() if pin else None,
                **({"config_source": sourced.record()} if sourced is not None else {})}
        phase = "checkout"
        deployments: list[str] = []

        def on_event(event: dict[str, Any]) -> None:
            nonlocal phase
            if event.get("event") == "build":
                phase = "build"
            elif event.get("event") == "plan":
                phase = "deploy"
                deployments.append(str(event.get("deployment")))
            self._emit(event)

        checkout: Path | None = None
        try:
            checkout = self.mirror.checkout(commit)
            phase = "spec"
            project = open_project(checkout / self.spec_path, self.paths.root)
            try:
                environment = project.environment(self.environment)
                outcomes = operations.deploy(project, environment, project.services(None), on_event=on_event,
                                             commit=commit)
            finally:
                project.store.close()
        except Locked as exc:
            return PollResult("busy", self.environment, commit, f"{exc.message}; trying again at the next poll",
                              serving=self._serving())
        except GitFailure as exc:
            return PollResult("error", self.environment, commit,
                              f"cannot check {short(commit)} out: {exc}; trying again at the next poll")
        except IngotError as exc:
            return self._fail(commit, phase, exc.message, exc.details, deployments, base, checkout)
        except Exception as exc:
            return self._fail(commit, phase, f"internal error: {type(exc).__name__}: {exc}", [], deployments, base,
                              checkout)
        done = [o.as_dict() for o in outcomes]
        verifying = [o.deployment for o in outcomes if o.verifying and o.deployment]
        ledger.record(self.store, actor=current_actor(), action=WATCH_DEPLOY, environment=self.environment,
                      subject=commit, payload={**base, "releases": {o.service: o.release for o in outcomes},
                                               "deployments": deployments, "verifying": verifying,
                                               "nothing_changed": all(o.nothing_changed for o in outcomes)})
        return PollResult("deployed", self.environment, commit,
                          f"{short(commit)} is live in {self.environment}", reason=reason, deployments=done,
                          serving=self._serving(), pin=pin.as_dict() if pin else None)

    def _fail(self, commit: str, phase: str, message: str, details: list[str], deployments: list[str],
              base: dict[str, Any], checkout: Path | None) -> PollResult:
        if checkout is not None:  # name files as they are in the repository, not in the checkout
            message = message.replace(f"{checkout}/", "")
            details = [line.replace(f"{checkout}/", "") for line in details]
        serving = self._serving()
        ledger.record(self.store, actor=current_actor(), action=WATCH_FAIL, environment=self.environment,
                      subject=commit, payload={**base, "phase": phase, "error": message, "details": details,
                                               "deployments": deployments, "serving": serving})
        return PollResult("failed", self.environment, commit, message, details, phase=phase,
                          reason=str(base["reason"]), serving=serving)

    def _verification_failure(self) -> PollResult | None:
        """The last deployed commit's verification window, if it failed since: recorded as its failure."""
        last = last_attempt(self.store, self.environment)
        if last is None or last.action != WATCH_DEPLOY or not last.payload.get("verifying"):
            return None
        for deployment in last.payload["verifying"]:
            outcome = self.store.deployment_outcome(deployment)
            if outcome not in ("failed", "aborted"):
                continue
            steps = self.store.steps(deployment)
            detail = steps[-1].detail if steps else {}
            commit = str(last.subject)
            message = f"verification of {short(commit)} {outcome}: {detail.get('error', outcome)}"
            base = {k: last.payload.get(k) for k in ("commit", "repo", "branch", "path", "reason")}
            return self._fail(commit, "verification", message, list(detail.get("details") or []),
                              list(last.payload.get("deployments") or []), base, None)
        return None

    def _serving(self) -> dict[str, str | None]:
        return {a.service: a.release_id for a in self.store.active_services() if a.environment == self.environment}

