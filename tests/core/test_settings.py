"""Configuration: expansion, environments, validation that says where, secrets masked."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import loader as loader_module
from sidecar.config import secrets
from sidecar.config.loader import ConfigError, expand, load_settings
from sidecar.config.secrets import mask_url, redacted, scrub
from sidecar.config.settings import Settings


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env or {})
    assert str(path) in str(caught.value)  # says which file
    return caught.value.problems


# -- ${VAR} expansion ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "env", "expanded"), [
    ("${A}", {"A": "x"}, "x"),
    ("${A}", {}, ""),
    ("${A:-fallback}", {}, "fallback"),
    ("${A:-fallback}", {"A": ""}, "fallback"),  # as in the shell: empty means unset
    ("${A:-fallback}", {"A": "set"}, "set"),
    ("${A:-}", {}, ""),
    ("postgresql://${U}:${P}@${H:-localhost}/db", {"U": "u", "P": "p"}, "postgresql://u:p@localhost/db"),
    ("$A and {A} and $${A}", {"A": "x"}, "$A and {A} and $x"),  # no other syntax
    ("${A:-http://h:1/x}", {}, "http://h:1/x"),
])
def test_variables_and_defaults_are_expanded(text: str, env: dict[str, str], expanded: str) -> None:
    assert expand(text, env) == expanded


def test_expansion_reaches_nested_values_and_leaves_other_types_alone() -> None:
    tree = {"a": ["${X}", {"b": "${Y:-2}"}], "n": 5, "t": True, "z": None}
    assert expand(tree, {"X": "1"}) == {"a": ["1", {"b": "2"}], "n": 5, "t": True, "z": None}


def test_expanded_values_are_validated_as_their_keys_types(tmp_path: Path) -> None:
    path = config(tmp_path, """
        batch:
          max_records: ${BATCH:-250}
        postgres:
          dsn: ${SIDECAR_PG_DSN:-postgresql://localhost/postgres}
    """)
    assert load_settings(path, {}).batch.max_records == 250
    s = load_settings(path, {"BATCH": "7", "SIDECAR_PG_DSN": "postgresql://db/x"})
    assert s.batch.max_records == 7 and s.postgres.dsn == "postgresql://db/x"


# -- files, defaults, environments -------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_an_empty_file_means_every_default(tmp_path: Path, text: str) -> None:
    assert load_settings(config(tmp_path, text), {}) == Settings.model_validate({})


def test_a_missing_default_file_means_every_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, {}).batch.max_records == 500


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == ["file not found (named by --config)"]


ENVIRONMENTS = """
    batch:
      max_records: 100
      max_wait_ms: 2000
    environments:
      development:
        batch: {max_records: 1}
      staging:
        batch: {max_records: 2}
      production:
        batch: {max_records: 3}
        logging: {level: warning}
"""


@pytest.mark.parametrize(("name", "records"), [("", 100), ("development", 1), ("staging", 2),
                                               ("production", 3)])
def test_sidecar_env_chooses_the_environment_overlay(
        tmp_path: Path, name: str, records: int) -> None:
    s = load_settings(config(tmp_path, ENVIRONMENTS), {"SIDECAR_ENV": name} if name else {})
    assert s.batch.max_records == records
    assert s.batch.max_wait_ms == 2000  # the overlay is deep: siblings are kept
    assert s.logging.level == ("warning" if name == "production" else "info")


def test_an_environment_without_overrides_is_the_base(tmp_path: Path) -> None:
    path = config(tmp_path, "batch: {max_records: 9}\n"
                            "environments: {staging: {batch: {max_records: 1}}}\n")
    assert load_settings(path, {"SIDECAR_ENV": "production"}).batch.max_records == 9


def test_an_unknown_sidecar_env_is_an_error(tmp_path: Path) -> None:
    [problem] = problems(config(tmp_path, ENVIRONMENTS), {"SIDECAR_ENV": "prod"})
    assert "SIDECAR_ENV='prod'" in problem and "unknown environment" in problem


def test_an_unknown_environment_in_the_file_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = config(tmp_path, "environments:\n  production: {}\n  qa:\n    batch: {}\n")
    assert problems(path) == [
        "line 3: environments.qa: unknown environment (use development, staging, production)"]


@pytest.mark.parametrize("text", ["environments: [production]\n",
                                  "environments:\n  production: [1]\n"])
def test_environments_that_are_not_mappings_are_errors(tmp_path: Path, text: str) -> None:
    [problem] = problems(config(tmp_path, text), {"SIDECAR_ENV": "production"})
    assert "must be a mapping" in problem and problem.startswith("line ")


# -- validation errors: what and where (key path and line) ------------------------------------

def test_every_problem_is_listed_with_its_line_and_key_path(tmp_path: Path) -> None:
    path = config(tmp_path, """
        # the operator's file
        batch:
          max_records: abc
          max_recods: 5
        breaker:
          failure_threshold: 0
        spool:
          patterns: ["*.jsonl", 7]
        unknown_section: {}
    """)
    found = problems(path)
    assert len(found) == 5, found
    assert any(p.startswith("line 3: batch.max_records: Input should be a valid integer")
               and p.endswith("(got 'abc')") for p in found)
    assert "line 4: batch.max_recods: unknown key" in found
    assert any(p.startswith("line 6: breaker.failure_threshold: ") for p in found)
    assert "line 8: spool.patterns.1: Input should be a valid string (got 7)" in found
    assert "line 9: unknown_section: unknown key" in found


def test_a_problem_in_an_environment_override_points_at_the_override(tmp_path: Path) -> None:
    path = config(tmp_path, """
        batch:
          max_records: 10
        environments:
          production:
            batch:
              max_wait_ms: soon
    """)
    found = problems(path, {"SIDECAR_ENV": "production"})
    assert len(found) == 1 and found[0].startswith("line 6: batch.max_wait_ms: "), found
    # a key the overlay does not touch is still reported where the base file has it
    base_error = config(tmp_path, "batch:\n  max_records: x\nenvironments:\n  production:\n"
                                  "    batch: {max_wait_ms: 5}\n")
    [problem] = problems(base_error, {"SIDECAR_ENV": "production"})
    assert problem.startswith("line 2: batch.max_records: ")


def test_invalid_yaml_says_where(tmp_path: Path) -> None:
    [problem] = problems(config(tmp_path, "batch:\n  max_records: [1\n  max_wait_ms: 2\n"))
    assert problem.startswith("line ") and "invalid YAML" in problem


def test_a_top_level_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    [problem] = problems(config(tmp_path, "- batch\n"))
    assert problem == "the top level must be a mapping of sections"


def test_aliases_and_recursive_anchors_do_not_break_line_lookup(tmp_path: Path) -> None:
    path = config(tmp_path, """
        base: &b {max_records: nope}
        batch: *b
    """)
    found = problems(path)
    assert any(p.startswith("line 1: base: unknown key") for p in found), found
    assert any("batch.max_records" in p for p in found), found


def test_secret_values_are_not_echoed_in_problems(tmp_path: Path) -> None:
    path = config(tmp_path, """
        postgres:
          password: [hunter2-secret]
          dsn: {pw: s3cr3t-dsn}
        opik:
          api_key: {key: opik-secret-key}
    """)
    text = "\n".join(problems(path))
    assert "postgres.password" in text and "opik.api_key" in text and "postgres.dsn" in text
    for secret in ("hunter2-secret", "s3cr3t-dsn", "opik-secret-key"):
        assert secret not in text


# -- secrets ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://app:s3cret@db:5432/spans", "postgresql://app:***@db:5432/spans"),
    ("postgresql://:s3cret@db/spans", "postgresql://:***@db/spans"),
    ("postgresql://app:p@ss@db/spans", "postgresql://app:***@db/spans"),
    ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://db/spans?user=app&password=s3cret&sslmode=require",
     "postgresql://db/spans?user=app&password=***&sslmode=require"),
    ("host=db user=app password=s3cret dbname=spans", "host=db user=app password=*** dbname=spans"),
    ("host=db password = 's3 cret' dbname=spans", "host=db password = *** dbname=spans"),
    ("postgresql://app@db/spans", "postgresql://app@db/spans"),
    ("http://localhost:5173/api", "http://localhost:5173/api"),
    ("https://opik.example/api?api_key=k3y&x=1", "https://opik.example/api?api_key=***&x=1"),
    ("https://opik.example/api?x=1&access_token=t0k", "https://opik.example/api?x=1&access_token=***"),
    ("https://tok3n@opik.example/api", "https://***@opik.example/api"),
    ("https://u:pw@opik.example/api?apikey=a&secret=b",
     "https://u:***@opik.example/api?apikey=***&secret=***"),
    ("redis://u:s3cret@cache:6379/0?password=q", "redis://u:***@cache:6379/0?password=***"),
    ("postgresql://app@db/spans?sslkey=/k.pem", "postgresql://app@db/spans?sslkey=***"),
])
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redacted_config_never_contains_a_secret(tmp_path: Path) -> None:
    path = config(tmp_path, """
        postgres:
          dsn: postgresql://app:pg-url-secret@db/spans?password=pg-query-secret
          password: ${PGPASSWORD}
        opik:
          url: https://user:opik-url-secret@opik.example/api
          api_key: ${OPIK_API_KEY}
    """)
    env = {"PGPASSWORD": "pg-field-secret", "OPIK_API_KEY": "opik-key-secret"}
    s = load_settings(path, env)
    assert s.opik.api_key is not None and s.opik.api_key.get_secret_value() == "opik-key-secret"
    text = json.dumps(redacted(s))
    for secret in ("pg-url-secret", "pg-query-secret", "pg-field-secret", "opik-url-secret",
                   "opik-key-secret"):
        assert secret not in text, text
    data = redacted(s)
    assert data["postgres"]["password"] == "***" and data["opik"]["api_key"] == "***"
    assert data["postgres"]["dsn"].startswith("postgresql://app:***@db/spans")


def test_redacted_leaves_absent_secrets_absent() -> None:
    data = redacted(Settings.model_validate({}, context={"env": {}}))
    assert data["postgres"]["password"] is None and data["opik"]["api_key"] is None


# -- opik.enabled default --------------------------------------------------------------------

@pytest.mark.parametrize(("env", "enabled"), [
    ({}, False),
    ({"OPIK_API_KEY": ""}, False),
    ({"OPIK_API_KEY": "k"}, True),
    ({"OPIK_URL_OVERRIDE": "http://opik:5173/api"}, True),
])
def test_opik_is_on_by_default_only_when_its_variables_are_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
        enabled: bool) -> None:
    # The environment given to load_settings decides, not the process's own.
    monkeypatch.setenv("OPIK_API_KEY", "from-the-process")
    assert load_settings(config(tmp_path, ""), env).opik.enabled is enabled


@pytest.mark.parametrize("explicit", [True, False])
def test_an_explicit_opik_enabled_wins(tmp_path: Path, explicit: bool) -> None:
    path = config(tmp_path, f"opik: {{enabled: {str(explicit).lower()}}}\n")
    assert load_settings(path, {"OPIK_API_KEY": "k"}).opik.enabled is explicit
    assert load_settings(path, {}).opik.enabled is explicit


def test_settings_built_directly_read_the_process_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPIK_API_KEY", raising=False)
    monkeypatch.delenv("OPIK_URL_OVERRIDE", raising=False)
    assert Settings().opik.enabled is False
    monkeypatch.setenv("OPIK_URL_OVERRIDE", "http://opik/api")
    assert Settings().opik.enabled is True


# -- keys of features not built yet -------------------------------------------------------------

def test_keys_not_implemented_yet_are_refused_with_their_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepting them would be worse than refusing: a redaction key that did nothing
    would look like masking. (Every key of the contract is built today, so the test
    declares two that are not.)"""
    monkeypatch.setattr(loader_module, "NOT_IMPLEMENTED", {
        ("export",): "an exporter", ("spans", "sampler"): "a sampler"})
    path = config(tmp_path, """
        spans:
          max_line_bytes: 2048
          sampler:
            kind: tail
        export:
          to: kafka
        batch:
          max_records: 0
        environments:
          production:
            export: {to: s3}
    """)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    problems = info.value.problems
    assert any(p.startswith("line 3: spans.sampler: not implemented yet") for p in problems)
    assert any(p.startswith("line 5: export: not implemented yet") for p in problems)
    assert any(p.startswith("line 11: environments.production.export: not implemented")
               for p in problems)
    # the other errors are still listed, and the refused keys only once each
    assert any("batch.max_records" in p for p in problems)
    assert len(problems) == 4, problems

def test_policy_keys_are_accepted_with_the_contract_defaults(tmp_path: Path) -> None:
    """sampling, spans.redaction, spans.max_field_bytes and the spool quota are built."""
    defaults = load_settings(config(tmp_path, ""), {})
    assert defaults.sampling.default_rate == 1.0 and defaults.sampling.production_rate is None
    assert defaults.sampling.always_sample_errors is True
    assert defaults.spans.max_field_bytes == 65536
    assert defaults.spans.redaction.replacement == "[REDACTED]"
    assert "authorization" in defaults.spans.redaction.keys
    assert defaults.spool.max_bytes is None and defaults.spool.on_full == "keep"
    path = config(tmp_path, """
        sampling:
          default_rate: 0.5
          production_rate: 0.1
          agent_overrides: {checkout: 1.0}
          tiers: {2: 0.25}
        spans:
          max_field_bytes: 4096
          redaction:
            patterns: [{name: ticket, regex: "TCK-[0-9]{6}"}]
        spool: {max_bytes: 104857600, on_full: drop_oldest}
    """)
    s = load_settings(path, {})
    assert s.sampling.tiers == {2: 0.25}
    assert s.sampling.environment_rate("production") == 0.1
    assert s.sampling.environment_rate("staging") == 0.5
    assert s.spans.redaction.patterns[0].name == "ticket"


def test_bad_policy_values_are_reported_without_echoing_patterns(tmp_path: Path) -> None:
    """A rate outside 0..1 and a regex RE2 cannot compile are config errors; the
    pattern text (which may hold a literal secret) is not echoed."""
    path = config(tmp_path, """
        sampling:
          default_rate: 1.5
        spans:
          redaction:
            patterns: [{name: bad, regex: "(sk-live-abc)\\\\1"}]
    """)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    problems = info.value.problems
    assert any(p.startswith("line 2: sampling.default_rate") for p in problems), problems
    assert any("spans.redaction.patterns.0.regex" in p and "RE2" in p for p in problems)
    assert not any("sk-live-abc" in p for p in problems), problems


def test_error_text_is_scrubbed_of_passwords() -> None:
    text = ('connect to postgresql://app:hunter2@db:5432/x failed; '
            "dsn host=db password='hunter 3' user=app")
    assert "hunter" not in scrub(text)
    assert "postgresql://app:***@db:5432/x" in scrub(text)


def test_a_section_written_as_a_string_is_not_echoed(tmp_path: Path) -> None:
    path = config(tmp_path, """
        postgres: "postgresql://u:pg-string-secret@h/db"
        opik: opik-string-secret
        redis: [redis-list-secret]
        batch: 7
    """)
    found = problems(path)
    text = "\n".join(found)
    for secret in ("pg-string-secret", "opik-string-secret", "redis-list-secret"):
        assert secret not in text, text
    assert any(p.startswith("line 1: postgres:") for p in found), found
    assert any("batch:" in p and "(got 7)" in p for p in found), found  # others still say what


def test_redacted_masks_any_secret_named_key_and_every_url(tmp_path: Path) -> None:
    path = config(tmp_path, """
        opik:
          url: https://opik.example/api?api_key=opik-query-secret
        redis:
          url: redis://:redis-url-secret@cache:6379/0
    """)
    text = json.dumps(redacted(load_settings(path, {})))
    assert "opik-query-secret" not in text and "redis-url-secret" not in text
    assert "api_key=***" in text and "redis://:***@cache:6379/0" in text


def test_registered_settings_secrets_are_scrubbed_from_any_text(tmp_path: Path) -> None:
    path = config(tmp_path, """
        postgres:
          dsn: "host=db password='dsn secret 1' user=app"
          password: field-secret-2
        opik:
          url: https://opik.example/api?token=query-secret-3
          api_key: key-secret-4
    """)
    secrets.register_settings(load_settings(path, {}), env={"PGPASSWORD": "env-secret-5"})
    try:
        text = ("dsn secret 1 | FIELD-SECRET-2? field-secret-2, %s; key-secret-4 query-secret-3 "
                "env-secret-5 field%2Dsecret-2 'key-secret-4'")
        out = scrub(text)
        for secret in ("dsn secret 1", "field-secret-2", "query-secret-3", "key-secret-4",
                       "env-secret-5"):
            assert secret not in out, out
        assert "FIELD-SECRET-2" in out  # exact values only: no guessing at case
    finally:
        secrets.forget()


_NO_STAR = st.characters(blacklist_characters="*", blacklist_categories=("Cs", "Co"))


@given(secret=st.text(_NO_STAR, min_size=secrets.MIN_SECRET_CHARS, max_size=40),
       before=st.text(_NO_STAR, max_size=40), after=st.text(_NO_STAR, max_size=40))
def test_a_registered_secret_never_survives_scrub(secret: str, before: str, after: str) -> None:
    secrets.register([secret])
    try:
        for text in (before + secret + after, f"{before}{secret!r}{after}",
                     json.dumps({"k": before + secret + after})):
            assert secret not in scrub(text)
    finally:
        secrets.forget()


_PASSWORD = st.text(st.characters(blacklist_characters="@/?#*",
                                  blacklist_categories=("Cs", "Z", "Cc")), min_size=1, max_size=30)


@given(password=_PASSWORD, user=st.sampled_from(["key", "a.token", "api_key", "secret"])
       | st.from_regex(r"[a-z]{0,8}", fullmatch=True))
def test_a_url_password_is_masked_by_its_shape(password: str, user: str) -> None:
    masked = mask_url(f"postgresql://{user}:{password}@db:5432/x")
    assert masked == f"postgresql://{user}:***@db:5432/x"


@given(secret=st.text(_NO_STAR, min_size=secrets.MIN_SECRET_CHARS + 1, max_size=40),
       before=st.text(_NO_STAR, max_size=40), data=st.data())
def test_a_secret_cut_short_at_the_end_of_a_message_is_masked(
        secret: str, before: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(secrets.MIN_SECRET_CHARS, len(secret) - 1))
    secrets.register([secret])
    try:
        assert scrub(before + secret[:cut]).endswith("***")
    finally:
        secrets.forget()
