"""The routing table: which model answers a role, per category and complexity, and what it costs.

One YAML file (``AUTOPACK_BUILDER_ROUTING``, default ``config/routing.yaml`` in this package)
holds the models (provider, output ceiling, prices per million tokens) and, per role (builder,
doctor, auditor), an escalation chain, category x complexity routes, and fail-over models.
The file is validated as a whole at start-up: a route naming an unknown model fails loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, Field, model_validator

Role = Literal["builder", "doctor", "auditor"]
ROLES: tuple[Role, ...] = ("builder", "doctor", "auditor")
ProviderName = Literal["anthropic", "openai"]
DEFAULT_ROUTING_PATH = Path(__file__).parent / "config" / "routing.yaml"


class RoutingError(ValueError):
    """The routing file is missing, not YAML, or inconsistent; the message says where."""


class Price(BaseModel):
    """USD per million tokens; an omitted price leaves that part of the cost unknown (NULL)."""

    model_config = {"extra": "forbid"}

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class ModelSpec(BaseModel):
    """A model a route may name."""

    model_config = {"extra": "forbid"}

    provider: ProviderName
    max_output_tokens: int = Field(gt=0)
    price: Price = Field(default_factory=Price)


class Route(BaseModel):
    """A chain for one category x complexity ("*" matches any)."""

    model_config = {"extra": "forbid"}

    category: str = "*"
    complexity: str = "*"
    chain: list[str] = Field(min_length=1)


class RoleRouting(BaseModel):
    """How one role picks its model."""

    model_config = {"extra": "forbid"}

    chain: list[str] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    escalate_after: int = Field(default=2, ge=1)
    failover: list[str] = Field(default_factory=list)
    min_confidence: float = Field(default=0.7, ge=0, le=1)
    max_tokens: int = Field(default=4096, gt=0)


class RoutingTable(BaseModel):
    """The whole file."""

    model_config = {"extra": "forbid"}

    models: dict[str, ModelSpec]
    roles: dict[Role, RoleRouting]

    @model_validator(mode="after")
    def _known_models(self) -> RoutingTable:
        for role, routing in self.roles.items():
            named = [*routing.chain, *routing.failover, *(m for r in routing.routes for m in r.chain)]
            unknown = sorted({m for m in named if m not in self.models})
            if unknown:
                raise ValueError(f"roles.{role} names model(s) not under models: {', '.join(unknown)}")
        missing = [role for role in ROLES if role not in self.roles]
        if missing:
            raise ValueError(f"roles: missing {', '.join(missing)}")
        return self

    def role(self, role: Role) -> RoleRouting:
        return self.roles[role]

    def chain(self, role: Role, category: str = "", complexity: str = "") -> list[str]:
        """The escalation chain of the first matching route, else the role's default chain."""
        routing = self.roles[role]
        category = (category or "").strip().lower()
        complexity = (complexity or "medium").strip().lower()
        for route in routing.routes:
            if route.category in ("*", category) and route.complexity in ("*", complexity):
                return list(route.chain)
        return list(routing.chain)

    def model_for_attempt(
        self, role: Role, attempt: int, category: str = "", complexity: str = "", requested: str = ""
    ) -> str:
        """The chain's model for a 1-based attempt: one step stronger every ``escalate_after`` failures.

        A requested model replaces the chain's first step; later attempts still escalate.
        """
        chain = self.chain(role, category, complexity)
        if requested:
            chain = [requested, *(m for m in chain[1:] if m != requested)]
        step = (max(attempt, 1) - 1) // self.roles[role].escalate_after
        return chain[min(step, len(chain) - 1)]

    def provider_of(self, model: str) -> ProviderName:
        """The provider serving ``model``; a model outside the table goes by its name (documented)."""
        spec = self.models.get(model)
        if spec is not None:
            return spec.provider
        return "anthropic" if model.startswith("claude") else "openai"

    def output_ceiling(self, model: str) -> int | None:
        spec = self.models.get(model)
        return spec.max_output_tokens if spec is not None else None

    def cost_usd(
        self,
        model: str,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read: int | None = None,
        cache_write: int | None = None,
        cache_in_input: bool = False,
    ) -> float | None:
        """Cost of one call from the price table; None when the model or a needed price/count is unknown.

        ``cache_in_input``: the provider counts cached tokens inside ``input_tokens`` (OpenAI);
        Anthropic reports them apart. Either way each token is priced once, at its own rate.
        """
        spec = self.models.get(model)
        if spec is None or input_tokens is None or output_tokens is None:
            return None
        if cache_in_input:
            input_tokens -= (cache_read or 0) + (cache_write or 0)
        price = spec.price
        parts = [(input_tokens, price.input), (output_tokens, price.output)]
        if cache_read:
            parts.append((cache_read, price.cache_read))
        if cache_write:
            parts.append((cache_write, price.cache_write))
        if any(rate is None for _count, rate in parts):
            return None
        return round(sum(count * (rate or 0.0) for count, rate in parts) / 1_000_000, 8)


def load_routing(path: Path | None = None) -> RoutingTable:
    """Read and validate the routing file (the packaged default when ``path`` is None)."""
    source = path or DEFAULT_ROUTING_PATH
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise RoutingError(f"routing file {source}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise RoutingError(f"routing file {source}: not YAML ({error})") from None
    try:
        return RoutingTable.model_validate(data)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in error.errors()[:5]
        )
        raise RoutingError(f"routing file {source}: {problems}") from None
