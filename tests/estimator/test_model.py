"""The token model: predictions, buffers, floors, ceilings, escalation and stored parameters."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from autopack_estimator.calibration import calibrate
from autopack_estimator.features import PhaseInput, phase_fingerprint
from autopack_estimator.model import (
    DEFAULT_OUTPUT_CEILING,
    BudgetPolicy,
    BufferShape,
    GroupCorrection,
    ModelParameters,
    PhaseMemory,
    Prediction,
    TokenModel,
    output_ceiling,
)
from autopack_estimator.synthetic import synthetic_events

MODEL = TokenModel(ModelParameters.default())
LEGACY_DOCS = (
    "docs/token_estimator/OVERVIEW.md",
    "docs/token_estimator/USAGE_GUIDE.md",
    "docs/token_estimator/API_REFERENCE.md",
    "docs/token_estimator/EXAMPLES.md",
    "docs/token_estimator/FAQ.md",
)
BUDGET_TERMS = ("buffer", "floor", "phase_memory_floor", "rounding")


def code_phase(
    files: int, complexity: str = "medium", category: str = "implementation", **kw: object
) -> PhaseInput:
    deliverables = tuple(f"src/pkg/module_{i}.py" for i in range(files))
    return PhaseInput(
        description="Implement the module",
        category_hint=category,
        complexity=complexity,
        deliverables=deliverables,
        **kw,  # type: ignore[arg-type]
    )


def term(prediction: Prediction, name: str) -> int:
    return sum(t.tokens for t in prediction.breakdown if t.name == name)


def test_default_parameters_are_version_default_1() -> None:
    assert ModelParameters.default().version == "default-1"
    assert MODEL.version == "default-1"


@pytest.mark.parametrize(
    "category", ["implementation", "refactoring", "integration", "configuration", "tests"]
)
def test_more_deliverables_never_mean_fewer_tokens(category: str) -> None:
    predictions = [
        MODEL.predict(code_phase(n, category=category)).predicted_output_tokens for n in range(1, 21)
    ]
    assert all(a < b for a, b in itertools.pairwise(predictions))


@pytest.mark.parametrize(
    "category", ["implementation", "refactoring", "integration", "configuration", "tests", "docs"]
)
def test_higher_complexity_means_more_tokens(category: str) -> None:
    tokens = {
        level: MODEL.predict(code_phase(3, complexity=level, category=category)).predicted_output_tokens
        for level in ("low", "medium", "high")
    }
    assert tokens["low"] < tokens["medium"] < tokens["high"]


def test_doc_synthesis_uses_the_additive_phase_model() -> None:
    """Seed 004: investigation 2500 (no context) + API 1200 + examples 1400 + 5 x 850 + 12 % x1.3."""
    phase = PhaseInput(
        description="Comprehensive documentation with examples and guides",
        category_hint="documentation",
        complexity="low",
        deliverables=LEGACY_DOCS,
    )
    prediction = MODEL.predict(phase)
    assert prediction.category == "doc_synthesis"
    assert term(prediction, "doc_synthesis_investigate") == 2500
    assert term(prediction, "doc_synthesis_api_extract") == 1200
    assert term(prediction, "doc_synthesis_examples") == 1400
    assert term(prediction, "doc_synthesis_writing") == 5 * 850
    assert term(prediction, "doc_synthesis_coordination") == round(0.12 * 5 * 850)
    assert prediction.predicted_output_tokens == round((2500 + 1200 + 1400 + 4250 + 510) * 1.3) == 12818
    assert prediction.buffer_multiplier == 2.2
    assert prediction.selected_budget > 16384  # the real phase truncated at 16,384


@pytest.mark.parametrize(("context", "investigation"), [(0, 2500), (2, 2000), (6, 1500)])
def test_doc_synthesis_investigation_depends_on_context_quality(context: int, investigation: int) -> None:
    phase = PhaseInput(
        description="API docs",
        category_hint="docs",
        deliverables=("docs/API_REFERENCE.md",),
        read_only_context=tuple(f"src/m{i}.py" for i in range(context)),
    )
    prediction = MODEL.predict(phase)
    assert term(prediction, "doc_synthesis_investigate") == investigation
    assert term(prediction, "doc_synthesis_coordination") == 0  # fewer than 5 deliverables


def test_sot_update_model() -> None:
    phase = PhaseInput(
        description="Update documentation to reflect BUILD-132 completion.",
        category_hint="docs",
        complexity="low",
        deliverables=("BUILD_HISTORY.md", "BUILD_LOG.md", "docs/BUILD-132_IMPLEMENTATION_STATUS.md"),
    )
    prediction = MODEL.predict(phase)
    assert prediction.category == "doc_sot_update"
    assert term(prediction, "sot_context_reconstruction") == 3000
    assert term(prediction, "sot_write_entries") == 3 * 900
    assert term(prediction, "sot_consistency_overhead") == round(0.15 * 2700)
    assert prediction.predicted_output_tokens == round((3000 + 2700 + 405) * 1.3)
    assert prediction.buffer_multiplier == 2.2
    assert prediction.selected_budget > 8192  # the real phase truncated at 8,192


def test_buffers_follow_the_p7_p9_rules() -> None:
    safety = ModelParameters.default().safety_margin
    plain = MODEL.predict(code_phase(2, complexity="low"))
    assert plain.buffer_multiplier == pytest.approx(1.2 * safety)
    many = MODEL.predict(code_phase(9, complexity="low"))
    assert many.buffer_multiplier == pytest.approx(1.6 * safety)
    risky = MODEL.predict(code_phase(2, complexity="high", category="integration"))
    assert risky.buffer_multiplier == pytest.approx(1.6 * safety)
    vague = MODEL.predict(
        PhaseInput(
            description="Polish",
            category_hint="implementation",
            deliverables=("Improved error messages", "Progress indicators", "src/cli.py"),
        )
    )
    assert vague.confidence < 0.7
    assert vague.buffer_multiplier == pytest.approx(1.4 * safety)
    docs = MODEL.predict(
        PhaseInput(description="Write the FAQ", category_hint="docs", deliverables=("docs/FAQ.md",))
    )
    assert docs.category == "docs"
    assert docs.buffer_multiplier == pytest.approx(1.2 * safety)  # P9: 2.2 is not for plain docs


def test_selected_budget_covers_the_prediction_and_is_rounded() -> None:
    for event in synthetic_events(200, seed=5):
        prediction = MODEL.predict(event.phase)
        assert (
            prediction.selected_budget
            >= prediction.predicted_output_tokens * prediction.buffer_multiplier - 1
        )
        assert prediction.selected_budget % 256 == 0
        assert prediction.actual_max_tokens <= output_ceiling(event.phase.model)
        assert prediction.actual_max_tokens == min(
            prediction.selected_budget, output_ceiling(event.phase.model)
        )


def test_breakdown_terms_add_up_to_prediction_budget_and_max_tokens() -> None:
    phase = code_phase(30, complexity="high", model="claude-3-5-sonnet-20241022")
    prediction = MODEL.predict(phase)
    point = [t for t in prediction.breakdown if t.name not in (*BUDGET_TERMS, "ceiling")]
    budget = [t for t in prediction.breakdown if t.name in BUDGET_TERMS]
    assert sum(t.tokens for t in point) == prediction.predicted_output_tokens
    assert sum(t.tokens for t in point + budget) == prediction.selected_budget
    assert sum(t.tokens for t in prediction.breakdown) == prediction.actual_max_tokens
    assert all(t.detail for t in prediction.breakdown)


def test_floors_are_category_aware() -> None:
    tiny = replace(
        ModelParameters.default(),
        base_tokens={
            c: dict.fromkeys(("low", "medium", "high", "maintenance"), 50) for c in ("implementation", "docs")
        },
        deliverable_tokens=dict.fromkeys(("code", "test", "doc", "config", "other"), 50),
    )
    model = TokenModel(tiny)
    code = model.predict(
        PhaseInput(description="x", category_hint="implementation", complexity="low", deliverables=("a.py",))
    )
    docs = model.predict(
        PhaseInput(description="x", category_hint="docs", complexity="low", deliverables=("A.md",))
    )
    assert code.selected_budget == model.floor_for("implementation", "low") == 2048
    assert term(code, "floor") > 0
    assert docs.selected_budget == model.floor_for("docs", "low") == 1024
    for complexity in ("low", "medium", "high", "maintenance"):
        assert model.floor_for("implementation", complexity) > model.floor_for("docs", complexity)
        assert model.floor_for("doc_synthesis", complexity) <= model.floor_for("tests", complexity)
    # Modest: no 16k floor on small code phases (BUILD-142's 4.3x waste)
    assert max(model.floor_for("implementation", c) for c in ("low", "medium", "high")) <= 4096


@pytest.mark.parametrize(
    ("model", "ceiling"),
    [
        ("claude-sonnet-4-5", 64000),
        ("claude-opus-4-5-20251101", 64000),
        ("claude-haiku-4-5", 64000),
        ("anthropic/claude-sonnet-4.5", 64000),
        ("claude-3-5-sonnet-20241022", 8192),
        ("claude-3-5-haiku", 8192),
        ("gpt-4o", 16384),
        ("gpt-4o-mini", 16384),
        ("gpt-4.1", 32768),
        ("gpt-4.1-mini", 32768),
        ("gpt-4", 8192),
        ("", 64000),  # the default model
        ("some-new-model", DEFAULT_OUTPUT_CEILING),
    ],
)
def test_output_ceilings_per_model(model: str, ceiling: int) -> None:
    assert output_ceiling(model) == ceiling


def test_unknown_models_get_a_conservative_ceiling() -> None:
    assert DEFAULT_OUTPUT_CEILING <= 8192


def test_actual_max_tokens_is_capped_by_the_ceiling_but_selected_budget_is_not() -> None:
    big = code_phase(10, complexity="high", model="claude-3-5-sonnet-20241022")
    capped = MODEL.predict(big)
    assert capped.selected_budget > 8192
    assert capped.actual_max_tokens == 8192
    assert term(capped, "ceiling") == 8192 - capped.selected_budget
    roomy = MODEL.predict(replace(big, model="claude-sonnet-4-5"))
    assert roomy.selected_budget == capped.selected_budget
    assert roomy.actual_max_tokens == roomy.selected_budget
    assert term(roomy, "ceiling") == 0


def test_unknown_complexity_is_refused() -> None:
    with pytest.raises(ValueError, match="'urgent'"):
        MODEL.predict(code_phase(1, complexity="urgent"))


def test_a_phase_without_deliverables_still_gets_an_estimate() -> None:
    prediction = MODEL.predict(PhaseInput(description="Improve things", complexity="high"))
    assert prediction.deliverable_count == 0
    assert prediction.confidence == 0.5
    assert prediction.predicted_output_tokens > 0
    assert prediction.buffer_multiplier > 1.2 * 1.3  # low confidence


@pytest.mark.parametrize(("selected", "retry"), [(28142, 35177), (36902, 46127)])
def test_escalation_reproduces_the_seed_p10_retries(selected: int, retry: int) -> None:
    plan = MODEL.escalate(selected, "claude-sonnet-4-5", "truncated", selected, True)
    assert plan.retry_budget == retry
    assert plan.actual_max_tokens == retry
    assert plan.base == selected
    assert "P10" in plan.detail


def test_escalation_grows_from_the_evidence_not_the_intent() -> None:
    """Second P10 fix: a truncation above the selected budget escalates from what was used."""
    plan = MODEL.escalate(8192, "claude-sonnet-4-5", "high_utilization", 12000, False)
    assert plan.base == 12000
    assert plan.retry_budget == 15000
    assert plan.retry_budget > 12000


@pytest.mark.parametrize("reason", ["truncated", "high_utilization", "incomplete_deliverables"])
def test_escalation_always_grows_and_respects_the_ceiling(reason: str) -> None:
    for selected, used, model in [
        (4096, 4096, "gpt-4o"),
        (15000, 14900, "gpt-4o"),
        (60000, 60000, "claude-sonnet-4-5"),
    ]:
        plan = MODEL.escalate(selected, model, reason, used, reason == "truncated")
        assert plan.retry_budget > max(selected, used)
        assert plan.actual_max_tokens == min(plan.retry_budget, output_ceiling(model))
    capped = MODEL.escalate(60000, "claude-sonnet-4-5", "truncated", 60000, True)
    assert capped.actual_max_tokens == 64000
    assert "ceiling" in capped.detail


def test_escalation_at_the_ceiling_says_a_continuation_is_needed() -> None:
    plan = MODEL.escalate(16384, "gpt-4o", "truncated", 16384, True)
    assert plan.actual_max_tokens == 16384
    assert "continuation" in plan.detail


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((8192, "gpt-4o", "bored", 100, False), "reason"),
        ((0, "gpt-4o", "truncated", 100, True), "selected_budget"),
        ((8192, "gpt-4o", "truncated", -1, True), "tokens_used"),
    ],
)
def test_bad_escalations_are_refused_by_name(args: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        MODEL.escalate(*args)


def test_group_corrections_scale_the_prediction_and_replace_the_buffer() -> None:
    phase = code_phase(2, complexity="low")
    raw = MODEL.predict(phase)
    params = replace(
        ModelParameters.default(),
        version="cal-1",
        corrections=(
            GroupCorrection("implementation", "low", factor=2.0, buffer=1.5, samples=40, confidence=0.9),
        ),
    )
    calibrated = TokenModel(params).predict(phase)
    assert calibrated.predicted_output_tokens == round(raw.predicted_output_tokens * 2.0)
    assert term(calibrated, "calibration") == calibrated.predicted_output_tokens - raw.predicted_output_tokens
    assert calibrated.buffer_multiplier == 1.5
    other = TokenModel(params).predict(code_phase(2, complexity="high"))
    assert other == MODEL.predict(code_phase(2, complexity="high"))  # no correction for that group


def test_correction_lookup_falls_back_from_group_to_category_to_global() -> None:
    params = replace(
        ModelParameters.default(),
        corrections=(
            GroupCorrection("implementation", "*", factor=0.5, buffer=2.0, samples=50, confidence=0.9),
            GroupCorrection("*", "*", factor=3.0, buffer=1.1, samples=200, confidence=0.95),
        ),
    )
    model = TokenModel(params)
    impl = model.predict(code_phase(1, complexity="high"))
    assert impl.predicted_output_tokens == round(
        MODEL.predict(code_phase(1, complexity="high")).predicted_output_tokens * 0.5
    )
    assert impl.buffer_multiplier == 2.0
    docs_phase = PhaseInput(description="x", category_hint="docs", deliverables=("docs/A.md",))
    docs = model.predict(docs_phase)
    assert docs.predicted_output_tokens == round(MODEL.predict(docs_phase).predicted_output_tokens * 3.0)
    # A global buffer never lowers a group's prior rule buffer.
    assert docs.buffer_multiplier == MODEL.predict(docs_phase).buffer_multiplier


def test_phase_memory_uses_the_history_of_the_exact_phase() -> None:
    phase = code_phase(17, complexity="high")
    fingerprint = phase_fingerprint(phase)
    memory = PhaseMemory(
        fingerprint, attempts=4, clean_count=2, clean_median=2200, max_exact=9959, max_lower_bound=0
    )
    model = TokenModel(replace(ModelParameters.default(), phase_memory=(memory,)))
    remembered = model.predict(phase)
    fresh = MODEL.predict(phase)
    assert fresh.predicted_output_tokens > 10_000
    assert 2200 <= remembered.predicted_output_tokens < fresh.predicted_output_tokens / 3
    assert remembered.selected_budget >= 9959 * 1.15  # the largest earlier output still fits
    truncated = PhaseMemory(
        fingerprint, attempts=2, clean_count=0, clean_median=0, max_exact=0, max_lower_bound=60000
    )
    after_truncation = TokenModel(replace(ModelParameters.default(), phase_memory=(truncated,))).predict(
        phase
    )
    assert (
        after_truncation.predicted_output_tokens == fresh.predicted_output_tokens
    )  # no clean attempt to learn from
    assert after_truncation.selected_budget > 60000 * 1.25
    assert term(after_truncation, "phase_memory_floor") > 0


def test_buffer_shape_is_monotone_and_identity_by_default() -> None:
    assert ModelParameters.default().buffer_shape == BufferShape()
    assert BufferShape().apply(2.5) == 2.5
    assert BufferShape(scale=1.5).apply(2.0) == pytest.approx(2.0**1.5)
    flat = BufferShape(scale=1.0, power=0.0, reference=0.7)
    assert flat.apply(1.3) == pytest.approx(flat.apply(4.0)) == pytest.approx(2.0138, rel=1e-3)
    half = BufferShape(scale=1.0, power=0.5, reference=0.7)
    buffers = [1.1, 1.5, 2.0, 3.0, 6.0]
    shaped = [half.apply(b) for b in buffers]
    assert shaped == sorted(shaped)  # order kept: a noisier group never gets less room
    assert shaped[0] > buffers[0] and shaped[-1] < buffers[-1]  # differences pulled toward the reference
    assert BufferShape(scale=0.5).apply(0.9) == 1.0


def test_learned_buffers_are_served_through_the_stored_shape() -> None:
    phase = code_phase(2, complexity="low")
    correction = GroupCorrection("implementation", "low", factor=1.0, buffer=3.0, samples=40, confidence=0.9)
    learned = replace(ModelParameters.default(), version="cal-1", corrections=(correction,))
    shaped = replace(learned, buffer_shape_scale=0.5)
    assert TokenModel(learned).predict(phase).buffer_multiplier == 3.0
    assert TokenModel(shaped).predict(phase).buffer_multiplier == pytest.approx(3.0**0.5, abs=1e-4)
    rule_only = code_phase(2, complexity="high")  # no learned buffer for that group: rules, unshaped
    assert TokenModel(shaped).predict(rule_only) == MODEL.predict(rule_only)


def test_budget_for_matches_finish_under_any_policy() -> None:
    phase = code_phase(3, complexity="medium")
    memory = PhaseMemory(phase_fingerprint(phase), 3, 2, 2500, 4000, 0)
    params = replace(
        ModelParameters.default(),
        corrections=(GroupCorrection("implementation", "medium", 0.8, 2.4, 50, 0.9),),
        phase_memory=(memory,),
        memory_within_sigma=0.2,
        memory_between_sigma=0.3,
        memory_buffer_z=2.0,
    )
    model = TokenModel(params)
    phases = [phase] + [event.phase for event in synthetic_events(60, seed=3)]
    policies = [
        None,
        BudgetPolicy(BufferShape(0.7, 0.5, 0.9), 1.0, 0.0),
        BudgetPolicy(BufferShape(), 3.0, 1.0),
    ]
    for candidate, policy in itertools.product(phases, policies):
        draft = model.draft(candidate)
        finished = model.finish(draft, policy)
        assert model.budget_for(draft, policy) == (finished.selected_budget, finished.actual_max_tokens)
    assert model.finish(model.draft(phase)) == model.predict(phase)


def test_a_history_passed_to_draft_stands_in_for_the_stored_memory() -> None:
    phase = code_phase(8, complexity="high")
    history = PhaseMemory(phase_fingerprint(phase), 2, 2, 3000, 3300, 0)
    drafted = MODEL.draft(phase, history)
    assert drafted.memory == history
    assert drafted.predicted < MODEL.draft(phase).predicted
    assert drafted.memory_need == round(3300 * 1.15 + 0.5)
    stored = TokenModel(replace(ModelParameters.default(), phase_memory=(history,)))
    assert stored.draft(phase) == drafted


def test_learned_repeat_factor_scales_predictions_from_history_only() -> None:
    phase = code_phase(4)
    memory = PhaseMemory(phase_fingerprint(phase), 2, 2, 5000, 5200, 0)
    base = replace(ModelParameters.default(), phase_memory=(memory,), memory_prior_attempts=0.01)
    plain = TokenModel(base).predict(phase)
    shrunk = TokenModel(replace(base, memory_repeat_factor=0.6)).predict(phase)
    assert shrunk.predicted_output_tokens == pytest.approx(0.6 * plain.predicted_output_tokens, rel=0.01)
    other = code_phase(5)
    assert TokenModel(replace(base, memory_repeat_factor=0.6)).predict(other) == MODEL.predict(other)


def test_learned_size_elasticity_shows_as_its_own_term() -> None:
    params = replace(ModelParameters.default(), count_exponent=-0.3, count_reference=4.0)
    model = TokenModel(params)
    at_reference = code_phase(4)
    assert model.predict(at_reference) == MODEL.predict(at_reference)
    large = code_phase(16)
    scaled = model.predict(large)
    assert term(scaled, "calibration_size") < 0
    assert scaled.predicted_output_tokens == pytest.approx(
        MODEL.predict(large).predicted_output_tokens * 4**-0.3, rel=0.01
    )
    small = model.predict(code_phase(1))
    assert small.predicted_output_tokens > MODEL.predict(code_phase(1)).predicted_output_tokens
    with pytest.raises(ValueError, match="count_exponent"):
        ModelParameters.from_json('{"version": "x", "count_exponent": -3}')
    with pytest.raises(ValueError, match="buffer_shape_power"):
        ModelParameters.from_json('{"version": "x", "buffer_shape_power": 2}')


def test_parameters_round_trip_through_json() -> None:
    default = ModelParameters.default()
    assert ModelParameters.from_json(default.to_json()) == default
    custom = replace(
        default,
        version="cal-20260101-abc",
        parent_version="default-1",
        corrections=(GroupCorrection("docs", "low", 1.25, 1.8, 12, 0.81),),
        phase_memory=(PhaseMemory("0123456789abcdef", 3, 2, 4100, 5000, 8192),),
        memory_buffer_z=2.5,
        memory_repeat_factor=0.9,
        count_exponent=-0.12,
        buffer_shape_scale=0.8,
        buffer_shape_power=0.5,
        buffer_shape_reference=0.9,
    )
    restored = ModelParameters.from_json(custom.to_json())
    assert restored == custom
    assert TokenModel(restored).predict(code_phase(3)) == TokenModel(custom).predict(code_phase(3))


def test_missing_keys_take_defaults_and_bad_parameters_are_refused() -> None:
    assert ModelParameters.from_json('{"version": "old-1"}') == replace(
        ModelParameters.default(), version="old-1"
    )
    with pytest.raises(ValueError, match="JSON"):
        ModelParameters.from_json("{not json")
    with pytest.raises(ValueError, match="version"):
        ModelParameters.from_json('{"buffer_default": 1.2}')
    with pytest.raises(ValueError, match="buffer_default"):
        ModelParameters.from_json('{"version": "x", "buffer_default": 0.5}')
    with pytest.raises(ValueError, match="malformed"):
        ModelParameters.from_json('{"version": "x", "corrections": [{"category": "docs"}]}')
    with pytest.raises(ValueError, match="base_tokens"):  # would crash predictions later
        ModelParameters.from_json('{"version": "x", "base_tokens": {"implementation": {"low": 1}}}')
    with pytest.raises(ValueError, match="complexity_scale"):
        ModelParameters.from_json('{"version": "x", "complexity_scale": {"low": 1.0}}')


# -- memoised predictions --------------------------------------------------------------------------


def afresh(model: TokenModel, phase: PhaseInput) -> Prediction:
    """The prediction computed step by step, bypassing the per-shape memo of ``predict``."""
    return model.finish(model.draft(phase))


@pytest.fixture(scope="module")
def calibrated_model() -> TokenModel:
    """A model with learned corrections, buffers and phase memory (what replicas usually serve)."""
    events = synthetic_events(400, seed=11, shape="legacy")
    result = calibrate(events, ModelParameters.default(), new_version="memo-test", time_split_fraction=None)
    return TokenModel(result.candidate)


@pytest.mark.parametrize("which", ["default", "calibrated"])
def test_memoised_predictions_are_the_model_computed_afresh(which: str, calibrated_model: TokenModel) -> None:
    model = TokenModel(ModelParameters.default()) if which == "default" else calibrated_model
    phases = [event.phase for event in synthetic_events(600, seed=5, shape="legacy")]
    phases += [
        PhaseInput("Write the API reference and examples from scratch", "docs", "medium", ("docs/API.md",)),
        PhaseInput(
            "Write the API reference", "docs", "medium", ("docs/API.md",), read_only_context=("a.py",)
        ),
        PhaseInput("Update BUILD_HISTORY.md", "", "low", ("BUILD_HISTORY.md", "docs/BUILD_LOG.md")),
        PhaseInput("Refactor", "", "high", ("src/a/", "src/b.py", "Logging configuration")),
    ]
    for phase in phases * 2:  # the second pass is served from the memo
        assert model.predict(phase) == afresh(model, phase), phase


def test_phases_of_one_shape_share_a_prediction_and_doc_signals_split_shapes() -> None:
    model = TokenModel(ModelParameters.default())
    first = model.predict(PhaseInput("Add a retry helper", "", "medium", ("src/a/retry.py",)))
    second = model.predict(PhaseInput("Add a cache", "", "medium", ("src/b/cache.py",)))
    assert second is first  # same category, complexity, deliverable kinds and model
    plain = PhaseInput("Document the options", "docs", "medium", ("docs/API_REFERENCE.md",))
    examples = replace(plain, deliverables=("docs/EXAMPLES.md",))  # same kinds, another signal
    rich = replace(plain, read_only_context=tuple(f"src/m{i}.py" for i in range(8)))  # better context
    predictions = [model.predict(phase) for phase in (plain, examples, rich)]
    assert [p.category for p in predictions] == ["doc_synthesis"] * 3
    assert len({p.predicted_output_tokens for p in predictions}) == 3
    assert predictions == [afresh(model, phase) for phase in (plain, examples, rich)]


def test_remembered_phases_are_predicted_from_their_own_history(calibrated_model: TokenModel) -> None:
    remembered = calibrated_model.params.phase_memory
    assert remembered, "the calibrated fixture should remember retried phases"
    events = synthetic_events(400, seed=11, shape="legacy")
    by_fingerprint = {phase_fingerprint(e.phase): e.phase for e in events}
    phase = by_fingerprint[remembered[0].fingerprint]
    prediction = calibrated_model.predict(phase)
    assert "phase_memory" in {t.name for t in prediction.breakdown}
    assert prediction == afresh(calibrated_model, phase)


def test_an_unknown_complexity_is_refused_every_time() -> None:
    model = TokenModel(ModelParameters.default())
    phase = code_phase(2, complexity="enormous")
    for _ in range(2):
        with pytest.raises(ValueError, match="complexity"):
            model.predict(phase)
