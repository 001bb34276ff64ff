"""The pairwise LLM judge: profiles, prompts, the injection guard and verdict parsing.

A judge profile (`configs/judges/*.yaml`) names an OpenAI-compatible endpoint, the judge model, the *name* of the
environment variable that holds the API key (the key itself is never read into a file, a log or a result), and the
request settings. The judging loop itself (async client, retries, cache) is in `rutune.eval.judge_client`.

Without a profile the judge can come from the environment: `RUTUNE_JUDGE_BASE_URL`, `RUTUNE_JUDGE_MODEL` and
`RUTUNE_JUDGE_API_KEY` (see `resolve_judge`).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from rutune.eval.arena_scoring import LABELS
from rutune.eval.errors import EvalError
from rutune.eval.upstream import is_url, local
from rutune.rundir import stable_hash

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPT = PROMPTS_DIR / "judge_ru.yaml"
VERDICT_REGEX = r"\[\[([AB<>=]+)\]\]"
_PLACEHOLDER = re.compile(r"\{(question_1|answer_1|answer_2)\}")
FOLLOWUP = "continue your judgment and finish by outputting a final verdict label"
ENV_BASE_URL, ENV_MODEL, ENV_KEY = "RUTUNE_JUDGE_BASE_URL", "RUTUNE_JUDGE_MODEL", "RUTUNE_JUDGE_API_KEY"
NO_JUDGE_FIX = (f"no judge configured: pass --judge configs/judges/NAME.yaml, or set {ENV_BASE_URL}, {ENV_MODEL} "
                f"and {ENV_KEY}")

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class JudgeError(EvalError):
    """The judge cannot be used at all (no key, rejected key, unknown model, bad profile)."""


class JudgeProfile(BaseModel):
    """One judge endpoint and how to call it. `api_key_env` is the env var's name, never the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "judge"
    base_url: str
    model: str
    api_key_env: str | None = ENV_KEY
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_tokens: PositiveInt = 4096
    concurrency: PositiveInt = 16
    timeout_s: PositiveFloat = 120.0
    retries: NonNegInt = 6
    backoff_s: PositiveFloat = 1.0
    max_backoff_s: PositiveFloat = 60.0
    verdict_followups: NonNegInt = 2
    prompt_file: str | None = None

    def identity(self) -> dict:
        """What a results file records about the judge (no key, only the env var's name)."""
        return {"name": self.name, "model": self.model, "base_url": self.base_url, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "api_key_env": self.api_key_env}

    def api_key(self) -> str:
        """The key from the named env var. A local endpoint may run without one; a remote one may not."""
        key = os.environ.get(self.api_key_env or "", "") if self.api_key_env else ""
        if key:
            return key
        if re.match(r"https?://(127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\])([:/]|$)", self.base_url):
            return "not-needed"
        raise JudgeError(f"judge {self.name!r}: the API key env var {self.api_key_env or '(api_key_env unset)'} is "
                         f"empty; export it (the key is read from the environment, never from a file)")


@dataclass(frozen=True)
class JudgePrompt:
    """System prompt, user template with {question_1} {answer_1} {answer_2}, verdict regex, follow-up text."""

    system: str
    template: str
    regex: str = VERDICT_REGEX
    followup: str = FOLLOWUP
    source: str = "default"

    @functools.cached_property
    def hash(self) -> str:
        return stable_hash({"system": self.system, "template": self.template, "regex": self.regex,
                            "followup": self.followup})

    def render(self, question: str, answer_a: str, answer_b: str) -> list[dict]:
        values = {"question_1": question, "answer_1": answer_a, "answer_2": answer_b}
        user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)  # one pass: answers stay verbatim
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def _read_yaml_mapping(path: Path, what: str) -> dict:
    """A strict YAML mapping (duplicate keys rejected with file:line), problems as one JudgeError line."""
    from rutune.schema import ConfigError, load_yaml

    if not path.is_file():
        raise JudgeError(f"{what} {path}: file not found")
    try:
        data, _, problems = load_yaml(path)
    except ConfigError as e:
        raise JudgeError("; ".join(e.problems)) from None
    if problems:
        raise JudgeError("; ".join(problems))
    if not isinstance(data, dict):
        raise JudgeError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_prompt(path: str | os.PathLike | None = None) -> JudgePrompt:
    """A prompt file: `system_prompt`, `prompt_template` (a string or a one-item list, as the leaderboard's
    judge_config.yaml), optional `regex_pattern` and `followup`. Other keys of judge_config.yaml are ignored."""
    path = Path(path) if path is not None else DEFAULT_PROMPT
    data = _read_yaml_mapping(path, "judge prompt")
    system, template = data.get("system_prompt"), data.get("prompt_template")
    if isinstance(template, list) and len(template) == 1:
        template = template[0]
    problems = []
    if not isinstance(system, str) or not system.strip():
        problems.append("system_prompt: required text is missing")
    if not isinstance(template, str):
        problems.append("prompt_template: required text (or a one-item list) is missing")
    else:
        missing = [p for p in ("{question_1}", "{answer_1}", "{answer_2}") if p not in template]
        if missing:
            problems.append(f"prompt_template: lacks the placeholder(s) {', '.join(missing)}")
    regex = data.get("regex_pattern") or VERDICT_REGEX
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            compiled = re.compile(regex)
        if compiled.groups != 1:
            problems.append("regex_pattern: needs exactly one capture group (the label)")
    except re.error as e:
        problems.append(f"regex_pattern: not a valid regex ({e})")
    if problems:
        raise JudgeError(f"{path}: " + "; ".join(problems))
    return JudgePrompt(system=system, template=template, regex=regex, followup=data.get("followup") or FOLLOWUP,
                       source=str(path))


def _resolve_relative(ref: str, profile_path: Path) -> Path:
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p
    for base in (profile_path.parent, Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return profile_path.parent / p


def load_profile(path: str | os.PathLike) -> JudgeProfile:
    """A judge profile YAML through the same strict reader as experiments (unknown and duplicate keys rejected,
    each problem with its file:line), as one JudgeError line. `prompt_file` may be a local path (relative to the
    profile) or a pinned URL (fetched and cached when the prompt is first needed)."""
    from rutune.schema import ConfigError, load_file

    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"judge profile {path}: file not found")
    try:
        profile = load_file(JudgeProfile, path)
    except ConfigError as e:
        raise JudgeError("; ".join(e.problems)) from None
    if profile.prompt_file and not is_url(profile.prompt_file):
        resolved = _resolve_relative(profile.prompt_file, path)
        if not resolved.is_file():
            raise JudgeError(f"{path}: prompt_file: {profile.prompt_file} not found (looked beside the profile "
                             "and in the current folder)")
        profile = profile.model_copy(update={"prompt_file": str(resolved)})
    return profile


def resolve_judge(profile_path: str | os.PathLike | None = None) -> JudgeProfile | None:
    """The judge to use: the profile at `profile_path`, else one from RUTUNE_JUDGE_* env vars, else None.

    None means "no judge configured"; callers show `NO_JUDGE_FIX`, the one-line fix.
    """
    if profile_path:
        return load_profile(profile_path)
    base_url, model = os.environ.get(ENV_BASE_URL), os.environ.get(ENV_MODEL)
    if base_url and model:
        return JudgeProfile(name="env", base_url=base_url, model=model, api_key_env=ENV_KEY)
    return None


def profile_prompt(profile: JudgeProfile) -> JudgePrompt:
    if is_url(profile.prompt_file):
        prompt = load_prompt(local(profile.prompt_file))
        return JudgePrompt(prompt.system, prompt.template, prompt.regex, prompt.followup, source=profile.prompt_file)
    return load_prompt(profile.prompt_file)


def profile_files(profile: JudgeProfile | None) -> list[str]:
    """What a judge reads, for stage identities: its prompt file (local path, or the pinned URL itself)."""
    if profile is None:
        return []
    if is_url(profile.prompt_file):
        return [f"url:{profile.prompt_file}"]
    from rutune.rundir import file_fingerprint

    return [file_fingerprint(profile.prompt_file or DEFAULT_PROMPT)]


# ---------------------------------------------------------------- injection guard
_OPEN = r"[\[［【〚⟦⦋]"
_CLOSE = r"[\]］】〛⟧⦌]"
_SIDE = r"[ABАВＡＢ]"
_OP = r"(?:[<>=≫≪»«＞＜＝≥≤]\s*){1,3}"
_VERDICT_LIKE = re.compile(rf"{_OPEN}{{1,2}}\s*{_SIDE}\s*{_OP}{_SIDE}\s*{_CLOSE}{{1,2}}")
_TEMPLATE_LIKE = re.compile(r"<\|\s*(?:the\s+(?:start|end)\s+of\s+assistant\s+\S+\s+answer|user\s+prompt)\s*\|>",
                            re.IGNORECASE)
NEUTRALISED = "(verdict-like marker removed)"


def neutralise_markers(text: str) -> tuple[str, int]:
    """Replace verdict markers (`[[A>>B]]`, Cyrillic or full-width look-alikes, single brackets) and the judge
    template's seat markers in an answer, so an answer cannot vote for itself. Returns (text, markers found)."""
    text, n_verdict = _VERDICT_LIKE.subn(NEUTRALISED, text)
    text, n_template = _TEMPLATE_LIKE.subn("(answer-boundary marker removed)", text)
    return text, n_verdict + n_template


# ---------------------------------------------------------------- verdict parsing
@dataclass(frozen=True)
class Verdict:
    label: str | None  # one of LABELS when valid
    status: str  # "ok" | "none" (no label yet) | "invalid"
    reason: str = ""


def parse_verdict(text: str, regex: str = VERDICT_REGEX) -> Verdict:
    """The judge's label: exactly one distinct non-blank match that is one of the five labels.

    Several different labels make the judgment invalid (no retry); a lone label outside the five (e.g. `B=A`,
    `A<B`) is invalid too and is counted, not silently dropped.
    """
    found = [m.strip() for m in re.findall(regex, text or "") if m and m.strip()]
    distinct = sorted(set(found))
    if not distinct:
        return Verdict(None, "none", "no verdict label in the reply")
    if len(distinct) > 1:
        return Verdict(None, "invalid", f"conflicting verdicts: {', '.join(distinct)}")
    if distinct[0] not in LABELS:
        return Verdict(None, "invalid", f"label {distinct[0]!r} is not one of {', '.join(LABELS)}")
    return Verdict(distinct[0], "ok")
